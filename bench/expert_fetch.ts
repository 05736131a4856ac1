/**
 * Benchmark of expert fetching: what one routed expert costs to bring onto
 * the GPU through {@link ExpertPool.ensure}, from a generated GGUF with
 * realistic expert sizes (default: Qwen3-30B-A3B's, Q8_0: 2048 × 768, three
 * matrices, ~5 MB per expert; 2 layers × 64 experts), written to a temporary
 * directory and deleted afterwards.
 *
 * Per expert, in one run:
 * - `cold`: the file's pages evicted from the OS page cache first
 *   (`dropPageCache`), the expert not in the pool: disk → mmap → writeBuffer.
 * - `warm`: pages in the page cache, expert not in the pool.
 * - `hot`: already in the pool (a hit: no upload).
 *
 * - `sha256`: the integrity check `--expert-dir` runs on an expert file
 *   the first time it is loaded (its bytes read into memory, page-cache
 *   warm, and hashed with SHA-256), with its cost relative to a warm and a
 *   cold upload.
 *
 * And the references, over the same bytes in the same run: a raw `pread`
 * of the expert's slices into a buffer (cold and warm), and a plain
 * `writeBuffer` of an in-memory buffer of the same size (+ flush). Ratios
 * are pool throughput over the reference's (1 = as fast as the reference).
 * Per-expert times are CPU times of the call; `wallGBps` adds the wait for
 * the queue to drain at the end of each pass (one sync).
 *
 * ```sh
 * deno run -A bench/expert_fetch.ts [--layers 2] [--experts 64] [--embd 2048] [--ff 768]
 *   [--type Q8_0] [--rounds 3] [--dir /tmp]
 * ```
 *
 * Prints one JSON object.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createHash } from "node:crypto";
import { type GgmlTypeName, requireGgmlType, tensorBytes } from "../src/gguf/types.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { gv } from "../src/gguf/value.ts";
import { type GgufTensorSpec, writeGgufFile } from "../src/gguf/writer.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { createBuffer, upload } from "../src/gpu/buffers.ts";
import { MappedFile } from "../ffi/mmap.ts";
import { GgufExpertSource } from "../src/experts/source.ts";
import { ExpertPool } from "../src/experts/pool.ts";
import { expertSliceRange } from "../src/experts/layout.ts";
import type { LatencySummary } from "../src/experts/stats.ts";

/** Options of {@link runExpertFetchBench}. */
export interface ExpertFetchBenchOptions {
  /** MoE layers in the generated file. */
  layers: number;
  /** Experts per layer. */
  experts: number;
  /** Model width (rows of gate/up, columns of down). */
  embd: number;
  /** Expert feed-forward width. */
  ff: number;
  /** ggml type of the expert matrices. */
  type: GgmlTypeName;
  /** Rounds of the cold/warm/reference passes; medians are reported. */
  rounds: number;
  /** Where to write the temporary model (default: the system temp dir). */
  dir?: string;
}

/** Per-expert timings of one pass. */
export interface PassResult {
  /** Experts timed. */
  experts: number;
  /** Per expert, CPU time of the call (ms). */
  latency: LatencySummary;
  /** Bytes over summed CPU time (GB/s, 1e9). */
  cpuGBps: number;
  /** Bytes over the pass's wall time including the final queue drain (GB/s). */
  wallGBps: number;
}

/** The benchmark's JSON output. */
export interface ExpertFetchBenchResult {
  /** The adapter. */
  device: string;
  /** File bytes of one expert. */
  bytesPerExpert: number;
  /** Experts in the file. */
  totalExperts: number;
  /** Bytes of the generated file. */
  fileBytes: number;
  /** Whether dropping the page cache worked (cold reads were really cold). */
  coldVerified: boolean;
  /** Pool passes (the median round's). */
  pool: { cold: PassResult; warm: PassResult; hot: PassResult };
  /**
   * The first-load integrity check of `--expert-dir` (SHA-256 of each
   * expert's bytes, warm), and its time over a warm and a cold upload's.
   */
  verify: { sha256: PassResult; overVsWarm: number; overVsCold: number };
  /** References in the same run (the median round's). */
  reference: { preadCold: PassResult; preadWarm: PassResult; writeBufferFromMemory: PassResult };
  /** Rounds run. */
  rounds: number;
  /** CPU GB/s of every pass in every round. */
  roundsCpuGBps: Record<string, number[]>;
  /**
   * Pool throughput ÷ reference throughput, the median over rounds of the
   * ratio within each round (CPU GB/s; wall GB/s for the last).
   */
  ratios: {
    coldVsPreadCold: number;
    warmVsPreadWarm: number;
    warmVsWriteBufferFromMemory: number;
    warmWallVsWriteBufferFromMemoryWall: number;
  };
  /** The pool's own statistics after the passes (its cold/warm split from mincore). */
  poolStats: {
    uploadLatencyCold: LatencySummary;
    uploadLatencyWarm: LatencySummary;
    misses: number;
    hits: number;
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

// The round whose throughput is the median, for one pass.
function medianRound(rounds: Record<string, PassResult>[], key: string): PassResult {
  const sorted = rounds.map((r) => r[key]!).sort((a, b) => a.cpuGBps - b.cpuGBps);
  return sorted[(sorted.length - 1) >> 1]!;
}

function summary(ms: number[]): LatencySummary {
  if (ms.length === 0) return { count: 0, p50Ms: 0, p95Ms: 0, meanMs: 0, maxMs: 0 };
  const s = [...ms].sort((a, b) => a - b);
  const rank = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return {
    count: s.length,
    p50Ms: rank(0.5),
    p95Ms: rank(0.95),
    meanMs: s.reduce((a, b) => a + b, 0) / s.length,
    maxMs: s[s.length - 1]!,
  };
}

async function pass(
  gpu: Gpu,
  n: number,
  bytesPerItem: number,
  fn: (i: number) => void,
): Promise<PassResult> {
  const times: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const a = performance.now();
    fn(i);
    times.push(performance.now() - a);
  }
  await gpu.device.queue.onSubmittedWorkDone();
  const wall = performance.now() - t0;
  const cpu = times.reduce((a, b) => a + b, 0);
  const bytes = n * bytesPerItem;
  return {
    experts: n,
    latency: summary(times),
    cpuGBps: bytes / cpu / 1e6,
    wallGBps: bytes / wall / 1e6,
  };
}

// Fast pseudo-random fill: the content does not matter, only that pages are real.
function fill(bytes: Uint8Array, seed: number): void {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

function shuffle<T>(items: T[]): T[] {
  let x = 12345;
  for (let i = items.length - 1; i > 0; i--) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const j = x % (i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

async function writeModel(path: string, o: ExpertFetchBenchOptions): Promise<void> {
  const type = requireGgmlType(GgmlType[o.type]);
  const tensors: GgufTensorSpec[] = [];
  for (let l = 0; l < o.layers; l++) {
    for (
      const [name, shape] of [["gate", [o.embd, o.ff]], ["up", [o.embd, o.ff]], [
        "down",
        [o.ff, o.embd],
      ]] as const
    ) {
      const full = [...shape, o.experts];
      const data = new Uint8Array(tensorBytes(type, full));
      fill(data, l * 3 + tensors.length + 1);
      tensors.push({ name: `blk.${l}.ffn_${name}_exps.weight`, type: type.id, shape: full, data });
    }
  }
  await writeGgufFile(path, {
    metadata: [["general.architecture", gv.str("qwen3moe")]],
    tensors,
  });
  // Dirty pages cannot be dropped from the page cache: write them out.
  using f = await Deno.open(path, { read: true, write: true });
  f.syncSync();
}

/** Runs the benchmark and returns its result (also printed by the CLI). */
export async function runExpertFetchBench(
  o: ExpertFetchBenchOptions,
): Promise<ExpertFetchBenchResult> {
  const dir = await Deno.makeTempDir({ dir: o.dir, prefix: "od-moe-expert-fetch-" });
  const gpu = await acquireGpu();
  try {
    const path = `${dir}/experts.gguf`;
    await writeModel(path, o);
    const fileBytes = (await Deno.stat(path)).size;
    using source = new GgufExpertSource(readGgufModel(path));
    using raw = MappedFile.open(path);
    const layers = source.layers;
    const bytesPerExpert = layers[0]!.bytesPerExpert;
    // A fixed random order: routing is not sequential, and sequential reads
    // would let the kernel's readahead warm the next experts.
    const all = shuffle(
      layers.flatMap((l) => Array.from({ length: l.nExpert }, (_, e) => [l.layer, e] as const)),
    );
    // Minimum mode: one slot, so every cold/warm ensure is a miss.
    const minPool = new ExpertPool(gpu, source, { budgetBytes: 0 });
    const scratch = new Uint8Array(Math.max(...layers[0]!.tensors.map((t) => t.sliceBytes)));
    const preadExpert = (i: number) => {
      const [l, e] = all[i]!;
      for (const t of source.layer(l).tensors) {
        const r = expertSliceRange(t, e);
        raw.pread(r.offset, scratch.subarray(0, r.length));
      }
    };
    // The same bytes, read into memory first, written at the same offsets.
    const inMemory = await Deno.readFile(path);
    const dst = layers[0]!.tensors.map((t, i) =>
      createBuffer(gpu, { label: `ref.${i}`, size: t.sliceBytes })
    );
    const writeFromMemory = (i: number) => {
      const [l, e] = all[i]!;
      source.layer(l).tensors.forEach((t, p) => {
        const r = expertSliceRange(t, e);
        upload(gpu, dst[p]!, inMemory.subarray(r.offset, r.offset + r.length));
      });
      gpu.flush();
    };
    const dropAll = () => {
      source.dropPageCache();
      raw.dropPageCache();
    };

    // Rounds interleave the passes so that the machine's noise hits all alike.
    source.expertParts(0, 0); // opens the mapping
    let coldVerified = true;
    const rounds: Record<string, PassResult>[] = [];
    for (let round = 0; round < o.rounds; round++) {
      dropAll();
      coldVerified &&= (source.residentBytes(all[0]![0], all[0]![1]) ?? 0) < bytesPerExpert;
      const cold = await pass(gpu, all.length, bytesPerExpert, (i) => {
        const [l, e] = all[i]!;
        minPool.ensure(l, [e]);
      });
      // Pages are cached now; the pool holds only the last expert.
      const warm = await pass(gpu, all.length - 1, bytesPerExpert, (i) => {
        const [l, e] = all[i]!;
        minPool.ensure(l, [e]);
      });
      minPool.ensure(all[all.length - 1]![0], [all[all.length - 1]![1]]);
      dropAll();
      const preadCold = await pass(gpu, all.length, bytesPerExpert, preadExpert);
      const preadWarm = await pass(gpu, all.length, bytesPerExpert, preadExpert);
      const fromMemory = await pass(gpu, all.length, bytesPerExpert, writeFromMemory);
      // as ExpertDirSource does it: read(2) into memory (never the mapping), then hash
      const sha256 = await pass(gpu, all.length, bytesPerExpert, (i) => {
        const [l, e] = all[i]!;
        const h = createHash("sha256");
        for (const t of source.layer(l).tensors) {
          const r = expertSliceRange(t, e);
          h.update(raw.pread(r.offset, scratch.subarray(0, r.length)));
        }
        h.digest("hex");
      });
      rounds.push({ cold, warm, preadCold, preadWarm, fromMemory, sha256 });
    }
    const poolStats = minPool.stats.snapshot();
    minPool.destroy();
    for (const b of dst) b.destroy();

    // Hot: a pool holding a few experts, asked again for them.
    const nHot = Math.min(16, all.length);
    const hotPool = new ExpertPool(gpu, source, {
      // slots round each part up to 4 bytes: one expert's worth covers that
      budgetBytes: (nHot + 1) * bytesPerExpert,
    });
    for (let i = 0; i < nHot; i++) hotPool.ensure(all[i]![0], [all[i]![1]]);
    await gpu.device.queue.onSubmittedWorkDone();
    const hot = await pass(gpu, nHot * 8, bytesPerExpert, (i) => {
      const [l, e] = all[i % nHot]!;
      hotPool.ensure(l, [e]);
    });
    const hotStats = hotPool.stats.snapshot();
    hotPool.destroy();

    const med = (k: string) => medianRound(rounds, k);
    const ratio = (a: string, b: string, wall = false) =>
      median(
        rounds.map((r) => wall ? r[a]!.wallGBps / r[b]!.wallGBps : r[a]!.cpuGBps / r[b]!.cpuGBps),
      );
    const cold = med("cold");
    const warm = med("warm");
    const preadCold = med("preadCold");
    const preadWarm = med("preadWarm");
    const fromMemory = med("fromMemory");
    return {
      device: gpu.describe(),
      bytesPerExpert,
      totalExperts: all.length,
      fileBytes,
      coldVerified,
      pool: { cold, warm, hot },
      verify: {
        sha256: med("sha256"),
        overVsWarm: ratio("warm", "sha256"),
        overVsCold: ratio("cold", "sha256"),
      },
      reference: { preadCold, preadWarm, writeBufferFromMemory: fromMemory },
      rounds: o.rounds,
      roundsCpuGBps: Object.fromEntries(
        Object.keys(rounds[0]!).map((k) => [k, rounds.map((r) => round2(r[k]!.cpuGBps))]),
      ),
      ratios: {
        coldVsPreadCold: ratio("cold", "preadCold"),
        warmVsPreadWarm: ratio("warm", "preadWarm"),
        warmVsWriteBufferFromMemory: ratio("warm", "fromMemory"),
        warmWallVsWriteBufferFromMemoryWall: ratio("warm", "fromMemory", true),
      },
      poolStats: {
        uploadLatencyCold: poolStats.uploadLatency.cold,
        uploadLatencyWarm: poolStats.uploadLatency.warm,
        misses: poolStats.misses,
        hits: hotStats.hits,
      },
    };
  } finally {
    gpu.destroy();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      layers: { type: "string", default: "2" },
      experts: { type: "string", default: "64" },
      embd: { type: "string", default: "2048" },
      ff: { type: "string", default: "768" },
      type: { type: "string", default: "Q8_0" },
      rounds: { type: "string", default: "3" },
      dir: { type: "string" },
    },
  });
  if (!(values.type in GgmlType)) throw new Error(`unknown ggml type ${values.type}`);
  const result = await runExpertFetchBench({
    layers: Number(values.layers),
    experts: Number(values.experts),
    embd: Number(values.embd),
    ff: Number(values.ff),
    type: values.type as GgmlTypeName,
    rounds: Number(values.rounds),
    dir: values.dir,
  });
  console.log(JSON.stringify(result, null, 2));
}
