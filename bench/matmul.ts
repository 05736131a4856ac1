/**
 * Benchmark of the quantised matrix kernels: achieved weight bandwidth of a
 * decode-sized matvec and throughput of a prefill-sized matmul per type,
 * against a reference measured in the same run on the same device: a plain
 * f32 copy kernel and `copyBufferToBuffer` over the same number of bytes.
 *
 * Prints one JSON object. GPU times come from timestamp queries when the
 * device has them, else from wall time over many submits with one final sync
 * (minus the time of an empty sync).
 *
 * ```sh
 * deno run -A bench/matmul.ts [--rows 4096] [--cols 4096] [--tokens 128]
 *   [--prefill-rows 2048] [--prefill-cols 2048] [--iters 10] [--types F16,Q8_0,…|all]
 *   [--kinds decode,prefill] [--variants default,tree/8/4,rows/8/4/x4,…] [--rounds 1]
 *   [--baseline DIR]
 * ```
 *
 * `--variants` compares matvec variants (decode) in the same run: `default`
 * is the adapter's profile (src/gpu/ops/matmul.ts MATMUL_PROFILES), else
 * `KERNEL/WG/ROWS[/x4|/f32]`. `--baseline DIR` adds the default matvec of
 * another checkout of od-moe (e.g. `git worktree add /tmp/before COMMIT`)
 * as variant `baseline`, on the same weights, device and rounds: the A/B of
 * a kernel change in one process. `--rounds N` measures every variant and the
 * copy reference N times in turn and keeps the fastest of each, which is
 * what to use on a machine other work is loading. The issue-16 widths:
 *
 * ```sh
 * deno run -A bench/matmul.ts --rows 16384 --cols 2048 --kinds decode --rounds 3 \
 *   --types Q4_K,Q6_K,Q8_0,MXFP4,F16 --variants default,tree/8/4/f32
 * ```
 *
 * The default types are the common ones and every I-quant and ternary type
 * (IQ4_XS … IQ1_S, TQ2_0, TQ1_0); `all` is every type the GPU kernels read.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { GgmlType, type GgmlTypeName, requireGgmlType } from "../src/gguf/types.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { createBuffer, readback } from "../src/gpu/buffers.ts";
import { dispatch, type Workgroups } from "../src/gpu/dispatch.ts";
import { getPipeline } from "../src/gpu/pipeline.ts";
import { defineShaderText } from "../src/gpu/shaders.ts";
import { GpuTimer } from "../src/gpu/timer.ts";
import {
  defaultMatmulTuning,
  type MatmulTuning,
  type MatvecKernel,
  prepareMatmul,
} from "../src/gpu/ops/matmul.ts";
import { type Op, STEP } from "../src/gpu/ops/op.ts";
import { randomWeightBytes, uploadWeight } from "../src/gpu/ops/weights.ts";
import { GPU_WEIGHT_TYPES } from "../src/gpu/ops/quant_wgsl.ts";
import { Rng } from "../src/util/rng.ts";

/** The types measured by default: the common ones, then the I-quants and ternary types. */
export const DEFAULT_TYPES: readonly GgmlTypeName[] = [
  "F16",
  "Q8_0",
  "Q4_0",
  "Q4_K",
  "Q6_K",
  "IQ4_XS",
  "IQ3_S",
  "IQ3_XXS",
  "IQ2_S",
  "IQ2_XS",
  "IQ2_XXS",
  "IQ1_M",
  "IQ1_S",
  "TQ2_0",
  "TQ1_0",
];

/** Options of {@linkcode runMatmulBench}. */
export interface MatmulBenchOptions {
  /** Rows of the decode matvec. */
  rows: number;
  /** Columns of the decode matvec. */
  cols: number;
  /** Rows of the prefill matmul. */
  prefillRows: number;
  /** Columns of the prefill matmul. */
  prefillCols: number;
  /** Tokens of the prefill matmul. */
  tokens: number;
  /** Timed repetitions per measurement (after one warm-up). */
  iters: number;
  /** ggml type names to measure. */
  types: GgmlTypeName[];
  /** Rounds over the variants and the copy reference; the fastest of each is kept. Default 1. */
  rounds?: number;
  /** Which products to measure; default both. */
  kinds?: readonly ("decode" | "prefill")[];
  /**
   * Matvec variants to compare in the same run (decode only), each a
   * tuning override with a name; default one, the adapter's own tuning.
   */
  variants?: readonly MatvecVariant[];
  /** Another checkout's matvec, measured as variant `baseline` (decode only). */
  baseline?: BaselineKernels;
}

/** The matvec of another checkout of od-moe ({@linkcode loadBaseline}). */
export interface BaselineKernels {
  /** Its `prepareMatmul`. */
  prepareMatmul: typeof prepareMatmul;
  /** Its `dispatch` (params buffers are checked by the module that made them). */
  dispatch: typeof dispatch;
}

/**
 * Loads `src/gpu/ops/matmul.ts` and `src/gpu/dispatch.ts` of the od-moe
 * checkout at `root` (its kernels are compiled from its own `shaders/`).
 */
export async function loadBaseline(root: string): Promise<BaselineKernels> {
  const url = (path: string) => new URL(path, `file://${Deno.realPathSync(root)}/`).href;
  const [mm, d] = await Promise.all([
    import(url("src/gpu/ops/matmul.ts")),
    import(url("src/gpu/dispatch.ts")),
  ]);
  return { prepareMatmul: mm.prepareMatmul, dispatch: d.dispatch };
}

/** A named matvec tuning override, parsed from `kernel/wg/rows[/x4|/f32]` (e.g. `rows/8/2`). */
export interface MatvecVariant {
  /** As given on the command line; `default` is the adapter's tuning. */
  name: string;
  /** The override. */
  tuning: Partial<MatmulTuning>;
}

/**
 * Parses `default` or `KERNEL/WG/ROWS[/x4|/f32]` (`tree/128/4`, `rows/8/2/f32`):
 * the matvec kernel, invocations a workgroup, rows a workgroup (`tree`) or an
 * invocation (`rows`: every rows kernel, the generated ones up to 32, the
 * template's at most 8), and x read as vec4s or f32s (default: the adapter's).
 */
export function parseVariant(spec: string): MatvecVariant {
  if (spec === "default") return { name: spec, tuning: {} };
  const m = /^(tree|rows)\/(\d+)\/(\d+)(?:\/(x4|f32))?$/.exec(spec);
  if (!m) {
    throw new Error(
      `--variants: "${spec}" is not default or KERNEL/WG/ROWS[/x4|/f32] (tree/128/4)`,
    );
  }
  const rows = Number(m[3]);
  return {
    name: spec,
    tuning: {
      matvecKernel: m[1] as MatvecKernel,
      wgMatvec: Number(m[2]),
      rowsMatvec: Math.min(rows, 8),
      ...(m[1] === "rows" ? { rowsMatvec1: rows, rowsMatvecT: rows } : {}),
      ...(m[4] ? { vectorX: m[4] === "x4" } : {}),
    },
  };
}

/** One measured kernel. */
export interface BenchResult {
  /** ggml type name. */
  type: string;
  /** The matvec variant (decode), `default` for the adapter's tuning. */
  variant: string;
  /** `"decode"` (T = 1) or `"prefill"`. */
  kind: "decode" | "prefill";
  /** Weight rows × columns and tokens. */
  rows: number;
  /** Weight columns. */
  cols: number;
  /** Tokens in the batch. */
  tokens: number;
  /** Bytes of the weight. */
  weightBytes: number;
  /** Mean GPU milliseconds per product. */
  ms: number;
  /** Weight bytes per second / 1e9. */
  weightGBps: number;
  /** GB/s of the f32 copy kernel over the same bytes, measured right after. */
  copyKernelGBps: number;
  /** GB/s of `copyBufferToBuffer` over the same bytes (wall time). */
  copyBufferGBps: number;
  /** `weightGBps` over the copy kernel's GB/s. */
  ratioToCopy: number;
  /** Multiply-adds × 2 per second / 1e9. */
  gflops: number;
}

const COPY_WGSL = `
@group(0) @binding(0) var<storage, read> src: array<vec4u>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4u>;
override WG: u32 = 256;
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid;
  if (i < arrayLength(&src)) { dst[i] = src[i]; }
}`;

/** Times `record(encoder)` over `iters` passes: GPU timestamps if available, else wall time. */
async function timePasses(
  gpu: Gpu,
  iters: number,
  record: (encoder: GPUCommandEncoder, timestampWrites?: GPUComputePassTimestampWrites) => void,
  sink: GPUBuffer,
): Promise<{ ms: number; method: "timestamp" | "wall" }> {
  // Warm-up (pipelines, bind groups, first-touch of memory).
  let encoder = gpu.device.createCommandEncoder();
  record(encoder);
  gpu.submit(encoder);
  await readback(gpu, [{ buffer: sink, offset: 0, size: 4 }]);
  const timer = new GpuTimer(gpu, iters);
  if (timer.enabled) {
    encoder = gpu.device.createCommandEncoder();
    for (let i = 0; i < iters; i++) record(encoder, timer.pass(`iter ${i}`));
    timer.resolve(encoder);
    gpu.submit(encoder);
    const times = (await timer.read()).map((t) => t.ms).sort((a, b) => a - b);
    timer.destroy();
    return { ms: times[times.length >> 1]!, method: "timestamp" };
  }
  const t0 = performance.now();
  await readback(gpu, [{ buffer: sink, offset: 0, size: 4 }]);
  const syncMs = performance.now() - t0;
  const t1 = performance.now();
  for (let i = 0; i < iters; i++) {
    encoder = gpu.device.createCommandEncoder();
    record(encoder);
    gpu.submit(encoder);
  }
  await readback(gpu, [{ buffer: sink, offset: 0, size: 4 }]);
  return { ms: Math.max(0, performance.now() - t1 - syncMs) / iters, method: "wall" };
}

function count(wg: Workgroups): number {
  return typeof wg === "number" ? wg : wg[0] * (wg[1] ?? 1) * (wg[2] ?? 1);
}

/** Records the ops that dispatch work for `nTokens`, with the pass's timestamps. */
function recordTimed(
  encoder: GPUCommandEncoder,
  ops: readonly Op[],
  nTokens: number,
  timestampWrites?: GPUComputePassTimestampWrites,
  dispatchWith: typeof dispatch = dispatch,
): void {
  for (const op of ops) {
    const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
    if (count(wg) === 0) continue;
    dispatchWith(encoder, op.kernel, op.bindings, wg, { label: op.label, timestampWrites });
  }
}

function stepBuffer(gpu: Gpu, nTokens: number): GPUBuffer {
  const words = new Uint32Array(STEP.length);
  words[STEP.nTokens] = nTokens;
  return createBuffer(gpu, { label: "bench.step", data: words });
}

/** Runs the benchmark on `gpu` and returns the JSON-ready report. */
export async function runMatmulBench(
  gpu: Gpu,
  opts: MatmulBenchOptions,
): Promise<Record<string, unknown>> {
  const rng = new Rng(42);
  defineShaderText("bench_copy", COPY_WGSL);
  const copyKernel = await getPipeline(gpu, "bench_copy", { constants: { WG: 256 } });

  let method = "wall";
  // Measured right after each kernel, on the same bytes: a shared machine's load moves both.
  const copyReference = async (bytes: number) => {
    const size = Math.ceil(bytes / 16) * 16;
    const src = createBuffer(gpu, { label: "bench.copy.src", size });
    const dst = createBuffer(gpu, { label: "bench.copy.dst", size });
    const k = await timePasses(gpu, opts.iters, (enc, tw) => {
      dispatch(enc, copyKernel, [src, dst], Math.ceil(size / 16 / 256), { timestampWrites: tw });
    }, dst);
    // copyBufferToBuffer has no pass to time: wall time, many copies, one sync.
    const c0 = performance.now();
    const enc = gpu.device.createCommandEncoder();
    for (let i = 0; i < opts.iters; i++) enc.copyBufferToBuffer(src, 0, dst, 0, size);
    gpu.submit(enc);
    await readback(gpu, [{ buffer: dst, offset: 0, size: 4 }]);
    const copyMs = (performance.now() - c0) / opts.iters;
    src.destroy();
    dst.destroy();
    method = k.method;
    return { kernelGBps: bytes / k.ms / 1e6, bufferCopyGBps: bytes / copyMs / 1e6, ms: k.ms };
  };

  const results: BenchResult[] = [];
  for (const name of opts.types) {
    const type = requireGgmlType(GgmlType[name]);
    for (const kind of opts.kinds ?? ["decode", "prefill"] as const) {
      const variants: (MatvecVariant & { base?: BaselineKernels })[] =
        kind === "decode" && opts.variants?.length
          ? [...opts.variants]
          : [{ name: "default", tuning: {} }];
      if (kind === "decode" && opts.baseline) {
        variants.push({ name: "baseline", tuning: {}, base: opts.baseline });
      }
      const rows = kind === "decode" ? opts.rows : opts.prefillRows;
      const cols = kind === "decode" ? opts.cols : opts.prefillCols;
      const tokens = kind === "decode" ? 1 : opts.tokens;
      const bytes = randomWeightBytes(type, rows * cols, () => rng.next());
      const w = uploadWeight(gpu, `bench.${name}`, type, [cols, rows], bytes);
      const x = createBuffer(gpu, {
        label: "bench.x",
        data: Float32Array.from({ length: tokens * cols }, () => rng.normal()),
      });
      const y = createBuffer(gpu, { label: "bench.y", size: 4 * tokens * rows });
      const step = stepBuffer(gpu, tokens);
      const prepared: { variant: (typeof variants)[number]; ops: Op[]; ms: number }[] = [];
      for (const variant of variants) {
        const ops = await (variant.base?.prepareMatmul ?? prepareMatmul)(gpu, {
          w,
          x: { buffer: x, offset: 0, stride: cols },
          y: { buffer: y, offset: 0, stride: rows },
          step,
          label: `bench.${name}.${kind}`,
          tuning: variant.tuning,
        });
        const active = ops.filter((op) =>
          count(typeof op.workgroups === "function" ? op.workgroups(tokens) : op.workgroups) > 0
        );
        if (active.length !== 1) {
          throw new Error("bench expects one dispatching op (one weight chunk)");
        }
        prepared.push({ variant, ops, ms: Infinity });
      }
      // Rounds over every variant and the copy reference, the fastest of each
      // kept: other work on a shared machine only ever slows a kernel down.
      let ref = { kernelGBps: 0, bufferCopyGBps: 0, ms: Infinity };
      for (let round = 0; round < (opts.rounds ?? 1); round++) {
        for (const p of prepared) {
          const t = await timePasses(
            gpu,
            opts.iters,
            (enc, tw) => recordTimed(enc, p.ops, tokens, tw, p.variant.base?.dispatch),
            y,
          );
          p.ms = Math.min(p.ms, t.ms);
        }
        const r = await copyReference(bytes.byteLength);
        if (r.ms < ref.ms) {
          ref = { ...r, bufferCopyGBps: Math.max(r.bufferCopyGBps, ref.bufferCopyGBps) };
        }
      }
      for (const { variant, ms } of prepared) {
        const weightGBps = bytes.byteLength / ms / 1e6;
        results.push({
          type: name,
          variant: variant.name,
          kind,
          rows,
          cols,
          tokens,
          weightBytes: bytes.byteLength,
          ms,
          weightGBps,
          copyKernelGBps: ref.kernelGBps,
          copyBufferGBps: ref.bufferCopyGBps,
          ratioToCopy: weightGBps / ref.kernelGBps,
          gflops: (2 * rows * cols * tokens) / ms / 1e6,
        });
      }
      for (const c of w.chunks) c.buffer.destroy();
      x.destroy();
      y.destroy();
    }
  }
  return {
    bench: "matmul",
    device: gpu.describe(),
    tuning: defaultMatmulTuning(gpu),
    timing: method,
    iters: opts.iters,
    rounds: opts.rounds ?? 1,
    note: "weightGBps = weight bytes / kernel time; reference = f32 copy kernel of the same " +
      "bytes (read + write) in the same run; ratioToCopy = weightGBps / copy kernel GB/s; " +
      "each the fastest of `rounds` rounds",
    results,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rows: { type: "string", default: "4096" },
      cols: { type: "string", default: "4096" },
      "prefill-rows": { type: "string", default: "2048" },
      "prefill-cols": { type: "string", default: "2048" },
      tokens: { type: "string", default: "128" },
      iters: { type: "string", default: "10" },
      types: { type: "string", default: DEFAULT_TYPES.join(",") },
      kinds: { type: "string", default: "decode,prefill" },
      variants: { type: "string", default: "default" },
      rounds: { type: "string", default: "1" },
      baseline: { type: "string" },
    },
  });
  const types = values.types === "all"
    ? GPU_WEIGHT_TYPES.map((id) => requireGgmlType(id).name as GgmlTypeName)
    : values.types.split(",").map((s) => s.trim().toUpperCase()) as GgmlTypeName[];
  for (const t of types) {
    if (!(t in GgmlType)) throw new Error(`--types: unknown ggml type ${t}`);
  }
  const gpu = await acquireGpu();
  const report = await runMatmulBench(gpu, {
    rows: Number(values.rows),
    cols: Number(values.cols),
    prefillRows: Number(values["prefill-rows"]),
    prefillCols: Number(values["prefill-cols"]),
    tokens: Number(values.tokens),
    iters: Number(values.iters),
    types,
    kinds: values.kinds.split(",").map((k) => {
      if (k !== "decode" && k !== "prefill") {
        throw new Error(`--kinds: ${k} is not decode or prefill`);
      }
      return k;
    }),
    variants: values.variants.split(",").map(parseVariant),
    rounds: Number(values.rounds),
    baseline: values.baseline ? await loadBaseline(values.baseline) : undefined,
  });
  console.log(JSON.stringify(report, null, 2));
  gpu.destroy();
}
