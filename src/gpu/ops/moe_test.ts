import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import { type CombineParams, compareArrays, makeRng, moeCombine, randomArray } from "./cpu_ref.ts";
import { prepareMoeCombine } from "./moe.ts";
import { type Op, recordOps } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";

interface Case {
  name: string;
  T: number;
  k: number;
  n: number;
  shared?: boolean;
  gate?: boolean;
  /** "accumulate": out is the residual; "separate": its own buffer. */
  residual?: "accumulate" | "separate";
  /** Padding between the k expert rows of a token. */
  pad?: number;
}

const CASES: Case[] = [
  { name: "k 2, out += (Mixtral)", T: 3, k: 2, n: 70, residual: "accumulate" },
  {
    name: "k 3, gated shared expert, separate residual (Qwen2-MoE)",
    T: 2,
    k: 3,
    n: 40,
    shared: true,
    gate: true,
    residual: "separate",
    pad: 5,
  },
  { name: "k 1, ungated shared expert, no residual (DeepSeek)", T: 4, k: 1, n: 33, shared: true },
];

gpuTest({
  name: "moe: combine matches the CPU (k 1/2/3, shared expert gated or not, residual in place)",
  async fn(g) {
    const rng = makeRng(12);
    const ops: Op[] = [];
    const outs: GPUBuffer[] = [];
    const refs: { y: Float32Array; w: Float32Array; p: CombineParams }[] = [];
    for (const c of CASES) {
      const { T, k, n } = c;
      const rowStride = n + (c.pad ?? 0);
      const yDense = randomArray(T * k * n, rng);
      const yData = new Float32Array(T * k * rowStride);
      for (let r = 0; r < T * k; r++) yData.set(yDense.subarray(r * n, (r + 1) * n), r * rowStride);
      const w = randomArray(T * k, rng, 0.5, 0.5);
      const p: CombineParams = { k, n };
      const view = (data: Float32Array, stride: number) => ({
        buffer: createBuffer(g, { label: c.name, data }),
        offset: 0,
        stride,
      });
      if (c.shared) p.shared = randomArray(T * n, rng);
      if (c.gate) p.sharedGate = randomArray(T, rng, 3);
      if (c.residual) p.residual = randomArray(T * n, rng, 10);
      const out = c.residual === "accumulate"
        ? view(p.residual!, n)
        : { buffer: createBuffer(g, { label: "out", size: T * n * 4 }), offset: 0, stride: n };
      outs.push(out.buffer);
      ops.push(
        await prepareMoeCombine(g, {
          y: view(yData, k * rowStride),
          yExpertStride: rowStride,
          weights: view(w, k),
          shared: p.shared ? view(p.shared, n) : undefined,
          sharedGate: p.sharedGate ? view(p.sharedGate, 1) : undefined,
          residual: c.residual === "separate" ? view(p.residual!, n) : undefined,
          accumulate: c.residual === "accumulate",
          out,
          k,
          n,
          label: c.name,
        }),
      );
      refs.push({ y: yDense, w, p });
    }
    const enc = g.device.createCommandEncoder();
    CASES.forEach((c, i) => recordOps(enc, [ops[i]!], c.T));
    g.submit(enc);
    const got = (await readback(g, outs)).map((b) => new Float32Array(b));
    CASES.forEach((c, i) => {
      const { y, w, p } = refs[i]!;
      const r = compareArrays(got[i]!, moeCombine(y, w, p), 1e-6, 1e-6);
      assert.ok(r.ok, `${c.name}: ${r.message}`);
      const differs = (change: Partial<CombineParams>) =>
        !compareArrays(got[i]!, moeCombine(y, w, { ...p, ...change }), 1e-6, 1e-6).ok;
      if (p.shared) assert.ok(differs({ shared: undefined }), `${c.name}: shared ignored?`);
      if (p.sharedGate) assert.ok(differs({ sharedGate: undefined }), `${c.name}: gate ignored?`);
      if (p.residual) assert.ok(differs({ residual: undefined }), `${c.name}: residual ignored?`);
    });
  },
});
