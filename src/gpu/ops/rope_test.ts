import assert from "node:assert/strict";
import type { Gpu } from "../device.ts";
import { createBuffer, readback } from "../buffers.ts";
import { compareArrays, makeRng, randomArray, rope, type RopeParams } from "./cpu_ref.ts";
import { type Op, recordOps, stepWords } from "./op.ts";
import { prepareRope } from "./rope.ts";
import { gpuTest } from "../../../dev/gpu.ts";

function stepBuffer(g: Gpu, pos0: number, nTokens: number): GPUBuffer {
  return createBuffer(g, { label: "step", data: stepWords(pos0, nTokens) });
}

type Case = RopeParams & { name: string; offset: number; tokenStride: number };

const CASES: Case[] = [
  {
    name: "normal, full head, pos0 0",
    nTokens: 2,
    nHeads: 3,
    headDim: 16,
    nRot: 16,
    pos0: 0,
    mode: "normal",
    freqBase: 10000,
    offset: 0,
    tokenStride: 48,
  },
  {
    name: "neox, nRot < headDim, base 1e6, strided",
    nTokens: 5,
    nHeads: 4,
    headDim: 24,
    headStride: 26,
    nRot: 16,
    pos0: 37,
    mode: "neox",
    freqBase: 1e6,
    offset: 5,
    tokenStride: 4 * 26 + 3,
  },
  {
    name: "neox, YaRN (scale 1/4, ext 1, n_ctx_orig 4096), large positions",
    nTokens: 3,
    nHeads: 2,
    headDim: 64,
    nRot: 64,
    pos0: 4000,
    mode: "neox",
    freqBase: 10000,
    freqScale: 0.25,
    extFactor: 1,
    attnFactor: 1,
    betaFast: 32,
    betaSlow: 1,
    nCtxOrig: 4096,
    offset: 0,
    tokenStride: 128,
  },
  {
    name: "normal, YaRN with attn factor, rope part of split heads, freq factors",
    nTokens: 2,
    nHeads: 3,
    headDim: 24,
    nRot: 8,
    dimOffset: 16,
    pos0: 11,
    mode: "normal",
    freqBase: 50000,
    freqScale: 0.1,
    extFactor: 0.5,
    attnFactor: 0.9,
    betaFast: 32,
    betaSlow: 1,
    nCtxOrig: 256,
    freqFactors: [1, 1.5, 2, 8],
    offset: 0,
    tokenStride: 72,
  },
  {
    name: "normal, position 60000",
    nTokens: 2,
    nHeads: 1,
    headDim: 32,
    nRot: 32,
    pos0: 60000,
    mode: "normal",
    freqBase: 10000,
    offset: 0,
    tokenStride: 32,
  },
];

gpuTest({
  name: "rope: matches ggml's rope_ext (normal/neox, partial, YaRN, freq factors, pos0 > 0)",
  async fn(g) {
    const rng = makeRng(3);
    const ops: Op[] = [];
    const bufs: GPUBuffer[] = [];
    const inputs: Float32Array[] = [];
    for (const c of CASES) {
      const data = randomArray(c.offset + c.nTokens * c.tokenStride + 4, rng, 2);
      inputs.push(data);
      const x = createBuffer(g, { label: c.name, data });
      bufs.push(x);
      const ff = c.freqFactors
        ? createBuffer(g, { label: "ff", data: Float32Array.from(c.freqFactors) })
        : undefined;
      ops.push(
        await prepareRope(g, {
          ...c,
          x: { buffer: x, offset: c.offset, stride: c.tokenStride },
          freqFactors: ff,
          step: stepBuffer(g, c.pos0, c.nTokens),
          label: c.name,
        }),
      );
    }
    const enc = g.device.createCommandEncoder();
    CASES.forEach((c, i) => recordOps(enc, [ops[i]!], c.nTokens));
    g.submit(enc);
    const outs = await readback(g, bufs);
    CASES.forEach((c, i) => {
      const got = new Float32Array(outs[i]!);
      const input = inputs[i]!;
      const want = input.slice();
      want.set(rope(input.subarray(c.offset), { ...c, tokenStride: c.tokenStride }), c.offset);
      const r = compareArrays(got, want, 2e-6, 2e-6);
      assert.ok(r.ok, `${c.name}: ${r.message}`);
      if (c.mode === "normal") {
        const wrong = input.slice();
        wrong.set(rope(input.subarray(c.offset), { ...c, mode: "neox" }), c.offset);
        assert.ok(!compareArrays(got, wrong, 2e-6, 2e-6).ok, `${c.name}: neox gives the same`);
      }
      if (c.extFactor) {
        const wrong = input.slice();
        wrong.set(rope(input.subarray(c.offset), { ...c, extFactor: 0 }), c.offset);
        assert.ok(!compareArrays(got, wrong, 2e-6, 2e-6).ok, `${c.name}: YaRN had no effect`);
      }
    });
  },
});
