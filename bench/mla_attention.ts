/**
 * Benchmark of latent attention (MLA) at Kimi-K2's shape: 64 query heads
 * against one cached row per position of kv_lora 512 + rope 64 floats, the
 * value being the row's first 512. The kernel that reads each cached row
 * once per group of heads (`attend_heads`, `headsPerWorkgroup: "auto"`) is
 * timed against the per-head kernel (`attend`, one workgroup per head, each
 * reading every row) in the same run, on the same buffers; both outputs are
 * compared with each other.
 *
 * GPU times come from timestamp queries when the device has them, else from
 * wall time over `iters` dispatches in one submit (minus an empty submit's).
 *
 * ```sh
 * deno run -A bench/mla_attention.ts [--contexts 512,2048] [--tokens 1,16] [--iters 5]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { createBuffer, readback } from "../src/gpu/buffers.ts";
import { prepareAttention } from "../src/gpu/ops/attention.ts";
import { type Op, recordOps, stepWords } from "../src/gpu/ops/op.ts";
import { GpuTimer } from "../src/gpu/timer.ts";
import { Rng } from "../src/util/rng.ts";
import { median, note, roundNumbers } from "./_util.ts";

/** Kimi-K2's attention (moonshotai/Kimi-K2-Instruct config.json). */
export const KIMI_K2_MLA = { nHead: 64, kvLoraRank: 512, ropeDim: 64 } as const;

/** Options of {@linkcode runMlaAttentionBench}. */
export interface MlaAttentionBenchOptions {
  /** Positions already in the cache (the attention's key count is this + tokens). */
  contexts: number[];
  /** Query tokens per dispatch (1 = decode). */
  tokens: number[];
  /** Timed dispatches per measurement (after one warm-up). */
  iters: number;
}

/** One measured configuration. */
export interface MlaAttentionResult {
  /** Keys attended to by the last token. */
  keys: number;
  /** Query tokens. */
  tokens: number;
  /** Heads per workgroup the grouped kernel chose on this device. */
  headsPerWorkgroup: number;
  /** Milliseconds per dispatch, per-head kernel. */
  perHeadMs: number;
  /** Milliseconds per dispatch, grouped kernel. */
  groupedMs: number;
  /** perHeadMs / groupedMs. */
  speedup: number;
  /** Cache bytes the kernels read per dispatch (every head re-reads / each group reads once). */
  perHeadCacheMB: number;
  /** The same for the grouped kernel. */
  groupedCacheMB: number;
  /** Largest |difference| between the two kernels' outputs. */
  maxAbsDiff: number;
}

async function timeOp(gpu: Gpu, op: Op, tokens: number, iters: number): Promise<number> {
  const timer = new GpuTimer(gpu, iters + 1);
  const run = async (n: number, timed: boolean) => {
    const enc = gpu.device.createCommandEncoder();
    for (let i = 0; i < n; i++) {
      const tw = timed ? timer.pass(op.label) : undefined;
      const pass = enc.beginComputePass(tw ? { timestampWrites: tw } : {});
      recordOps(pass, [op], tokens);
      pass.end();
    }
    if (timed) timer.resolve(enc);
    const t0 = performance.now();
    gpu.submit(enc);
    await gpu.device.queue.onSubmittedWorkDone();
    return performance.now() - t0;
  };
  await run(1, false); // warm-up (pipeline, caches)
  if (timer.enabled) {
    await run(iters, true);
    return median((await timer.read()).map((p) => p.ms));
  }
  const empty = await run(0, false);
  return Math.max(0, (await run(iters, false)) - empty) / iters;
}

/** Runs the benchmark on `gpu`; returns the JSON report. */
export async function runMlaAttentionBench(
  gpu: Gpu,
  o: MlaAttentionBenchOptions,
): Promise<Record<string, unknown>> {
  const { nHead: H, kvLoraRank, ropeDim } = KIMI_K2_MLA;
  const row = kvLoraRank + ropeDim;
  const rng = new Rng(18);
  const results: MlaAttentionResult[] = [];
  for (const ctx of o.contexts) {
    for (const T of o.tokens) {
      const nKv = ctx + T;
      const cache = new Float32Array(nKv * row);
      for (let i = 0; i < cache.length; i++) cache[i] = rng.normal();
      const q = new Float32Array(T * H * row);
      for (let i = 0; i < q.length; i++) q[i] = rng.normal();
      const kBuf = createBuffer(gpu, { label: "mla.cache", data: cache });
      const qBuf = createBuffer(gpu, { label: "mla.q", data: q });
      const step = createBuffer(gpu, { label: "mla.step", data: stepWords(ctx, T) });
      const outs: GPUBuffer[] = [];
      const ops: Op[] = [];
      const chosen: number[] = [];
      for (const heads of [1, "auto"] as const) {
        const out = createBuffer(gpu, { label: "mla.out", size: T * H * kvLoraRank * 4 });
        outs.push(out);
        const op = await prepareAttention(gpu, {
          q: { buffer: qBuf, offset: 0, stride: H * row },
          kCache: kBuf,
          vCache: kBuf,
          kRowStride: row,
          vRowStride: row,
          out: { buffer: out, offset: 0, stride: H * kvLoraRank },
          nHead: H,
          nHeadKv: 1,
          headDimK: row,
          headDimV: kvLoraRank,
          scale: 1 / Math.sqrt(192),
          nCtx: nKv,
          step,
          label: heads === 1 ? "mla.per_head" : "mla.grouped",
          headsPerWorkgroup: heads,
          vec4: false, // the two kernels GPUs take (the software profile's attend_vec aside)
        });
        ops.push(op);
        const wg = typeof op.workgroups === "function" ? op.workgroups(T) : op.workgroups;
        chosen.push(H / (wg as readonly number[])[0]!);
      }
      const perHeadMs = await timeOp(gpu, ops[0]!, T, o.iters);
      const groupedMs = await timeOp(gpu, ops[1]!, T, o.iters);
      const [a, b] = (await readback(gpu, outs)).map((x) => new Float32Array(x));
      let maxAbsDiff = 0;
      for (let i = 0; i < a!.length; i++) {
        maxAbsDiff = Math.max(maxAbsDiff, Math.abs(a![i]! - b![i]!));
      }
      const g = chosen[1]!;
      // average keys per token over the batch, each row [latent | k_pe] of 4-byte floats
      const rowsRead = T * (ctx + (T + 1) / 2);
      const r: MlaAttentionResult = {
        keys: nKv,
        tokens: T,
        headsPerWorkgroup: g,
        perHeadMs,
        groupedMs,
        speedup: perHeadMs / groupedMs,
        perHeadCacheMB: (H * rowsRead * (row + kvLoraRank) * 4) / 1e6,
        groupedCacheMB: ((H / g) * rowsRead * (row + kvLoraRank) * 4) / 1e6,
        maxAbsDiff,
      };
      note(
        `mla_attention: ${nKv} keys × ${T} tokens: per-head ${perHeadMs.toFixed(3)} ms, ` +
          `${g} heads/workgroup ${groupedMs.toFixed(3)} ms (${r.speedup.toFixed(2)}×), ` +
          `max |diff| ${maxAbsDiff.toExponential(2)}`,
      );
      if (!(maxAbsDiff < 1e-3)) {
        throw new Error(`mla_attention: the two kernels disagree by ${maxAbsDiff} at ${nKv} keys`);
      }
      results.push(r);
      for (const buf of [kBuf, qBuf, step, ...outs]) buf.destroy();
    }
  }
  return roundNumbers({
    bench: "mla_attention",
    adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
    timing: new GpuTimer(gpu, 1).enabled ? "timestamp-query" : "wall",
    shape: { ...KIMI_K2_MLA, headDimK: row, headDimV: kvLoraRank },
    results,
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      contexts: { type: "string", default: "512,2048" },
      tokens: { type: "string", default: "1,16" },
      iters: { type: "string", default: "5" },
    },
  });
  const list = (s: string) => s.split(",").map(Number);
  const gpu = await acquireGpu();
  try {
    const report = await runMlaAttentionBench(gpu, {
      contexts: list(values.contexts!),
      tokens: list(values.tokens!),
      iters: Number(values.iters),
    });
    console.log(JSON.stringify(report));
  } finally {
    gpu.destroy();
  }
}
