/**
 * Attention of a prefill batch against a long cache: the block kernel
 * (`attend_tiled` over whole blocks of query tokens plus `attend` for the
 * rest, what models record on GPUs) against the per-token kernel (`attend`,
 * one workgroup per (head, token), each reading every visible key) and the
 * software profile's `attend_vec` (vec4 loads, a kv head's query heads per
 * workgroup, each lane its own keys) in the same run, on the same buffers;
 * the outputs are compared with each other. This is
 * the op that made a late turn of a chat slow with prefix reuse: its ~155 new
 * tokens attend over the whole conversation (bench/chat_turns.ts).
 *
 * GPU times from timestamp queries (each dispatch in its own pass, summed);
 * a device without them reports nothing.
 *
 * ```sh
 * deno run -A bench/prefill_attention.ts [--contexts 0,512,1378] [--tokens 1,27,64]
 *   [--heads 4] [--kv-heads 2] [--head-dim 48] [--reps 3]
 * ```
 *
 * Defaults: the trained demo model's attention (data/kjv-moe-Q8_0.gguf).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu } from "../src/gpu/device.ts";
import { createBuffer, readback } from "../src/gpu/buffers.ts";
import { prepareAttentionOps } from "../src/gpu/ops/attention.ts";
import { type Op, stepWords } from "../src/gpu/ops/op.ts";
import { dispatch } from "../src/gpu/dispatch.ts";
import { GpuTimer } from "../src/gpu/timer.ts";
import { Rng } from "../src/util/rng.ts";
import { intFlag, median, note, roundNumbers } from "./_util.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    contexts: { type: "string" },
    tokens: { type: "string" },
    heads: { type: "string" },
    "kv-heads": { type: "string" },
    "head-dim": { type: "string" },
    reps: { type: "string" },
  },
  strict: true,
});
const list = (s: string | undefined, def: number[]) => s ? s.split(",").map(Number) : def;
const contexts = list(v.contexts, [0, 512, 1378]);
const tokenCounts = list(v.tokens, [1, 27, 64]);
const nHead = intFlag("heads", v.heads, 4);
const nHeadKv = intFlag("kv-heads", v["kv-heads"], 2);
const d = intFlag("head-dim", v["head-dim"], 48);
const reps = intFlag("reps", v.reps, 3);

const gpu = await acquireGpu();
const timer = new GpuTimer(gpu, 8);
if (!timer.enabled) {
  note("prefill_attention: the device has no timestamp queries; nothing measured");
  Deno.exit(0);
}
const rng = new Rng(1);
const rand = (n: number) => Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
const results: Record<string, unknown>[] = [];
for (const ctx of contexts) {
  for (const T of tokenCounts) {
    const nCtx = ctx + T;
    const k = createBuffer(gpu, { label: "k", data: rand(nCtx * nHeadKv * d) });
    const vc = createBuffer(gpu, { label: "v", data: rand(nCtx * nHeadKv * d) });
    const q = createBuffer(gpu, { label: "q", data: rand(T * nHead * d) });
    const step = createBuffer(gpu, { label: "step", data: stepWords(ctx, T) });
    const run = async (queries: 1 | "auto", vec4 = false) => {
      const out = createBuffer(gpu, { label: "out", size: T * nHead * d * 4 });
      const ops = await prepareAttentionOps(gpu, {
        q: { buffer: q, offset: 0, stride: nHead * d },
        kCache: k,
        vCache: vc,
        out: { buffer: out, offset: 0, stride: nHead * d },
        nHead,
        nHeadKv,
        headDimK: d,
        headDimV: d,
        scale: 1 / Math.sqrt(d),
        nCtx,
        step,
        label: `attention/${queries}`,
        queriesPerWorkgroup: queries,
        vec4,
      });
      const times: number[] = [];
      for (let r = 0; r <= reps; r++) {
        const enc = gpu.device.createCommandEncoder();
        for (const op of ops) record(enc, op, T);
        timer.resolve(enc);
        gpu.submit(enc);
        const ms = (await timer.read()).reduce((a, t) => a + t.ms, 0);
        if (r > 0) times.push(ms); // the first is a warm-up
      }
      const [bytes] = await readback(gpu, [out]);
      return { ms: median(times), out: new Float32Array(bytes!) };
    };
    const perToken = await run(1);
    const blocks = await run("auto");
    const vec = await run(1, true);
    let maxDiff = 0;
    for (const other of [blocks, vec]) {
      perToken.out.forEach((x, i) => maxDiff = Math.max(maxDiff, Math.abs(x - other.out[i]!)));
    }
    const r = {
      context: ctx,
      tokens: T,
      perTokenMs: perToken.ms,
      blocksMs: blocks.ms,
      vec4Ms: vec.ms,
    };
    results.push({
      ...r,
      speedup: perToken.ms / blocks.ms,
      vec4Speedup: perToken.ms / vec.ms,
      maxDiff,
    });
    note(
      `prefill_attention: ${T} tokens after ${ctx}: per-token ${perToken.ms.toFixed(1)} ms, ` +
        `blocks ${blocks.ms.toFixed(1)} ms, vec4 ${vec.ms.toFixed(1)} ms (max |diff| ${
          maxDiff.toExponential(1)
        })`,
    );
  }
}

/** Records `op` for `T` tokens in a timed pass of its own (nothing when it has no workgroups). */
function record(enc: GPUCommandEncoder, op: Op, T: number): void {
  const wg = typeof op.workgroups === "function" ? op.workgroups(T) : op.workgroups;
  const n = typeof wg === "number" ? wg : wg[0] * (wg[1] ?? 1) * (wg[2] ?? 1);
  if (n === 0) return;
  dispatch(enc, op.kernel, op.bindings, wg, {
    label: op.label,
    timestampWrites: timer.pass(op.label),
  });
}

console.log(JSON.stringify(
  roundNumbers({ bench: "prefill_attention", nHead, nHeadKv, headDim: d, results }),
  null,
  2,
));
