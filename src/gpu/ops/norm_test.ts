import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import { compareArrays, makeRng, randomArray, rmsNorm } from "./cpu_ref.ts";
import { prepareRmsNorm } from "./norm.ts";
import { type Op, recordOps } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";

/** Gathers [T, rows, n] from a strided layout into a dense array. */
function gather(
  a: Float32Array,
  off: number,
  stride: number,
  rowStride: number,
  T: number,
  rows: number,
  n: number,
): Float32Array {
  const out = new Float32Array(T * rows * n);
  for (let t = 0; t < T; t++) {
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < n; i++) {
        out[(t * rows + r) * n + i] = a[off + t * stride + r * rowStride + i]!;
      }
    }
  }
  return out;
}

gpuTest({
  name: "norm: RMSNorm matches the CPU reference (rows per token, strides, in place, no weight)",
  async fn(g) {
    const rng = makeRng(1);
    interface Case {
      name: string;
      T: number;
      rows: number;
      n: number;
      rowStride: number;
      stride: number;
      off: number;
      eps: number;
      weighted: boolean;
      inPlace: boolean;
      fixed?: number;
    }
    const cases: Case[] = [
      {
        name: "row",
        T: 3,
        rows: 1,
        n: 96,
        rowStride: 96,
        stride: 96,
        off: 0,
        eps: 1e-5,
        weighted: true,
        inPlace: false,
      },
      {
        name: "per-head",
        T: 2,
        rows: 5,
        n: 24,
        rowStride: 26,
        stride: 140,
        off: 7,
        eps: 1e-6,
        weighted: true,
        inPlace: true,
      },
      {
        name: "long odd row",
        T: 1,
        rows: 1,
        n: 1000,
        rowStride: 1000,
        stride: 1003,
        off: 3,
        eps: 1e-6,
        weighted: true,
        inPlace: false,
      },
      {
        name: "no weight",
        T: 4,
        rows: 2,
        n: 33,
        rowStride: 33,
        stride: 66,
        off: 0,
        eps: 1e-5,
        weighted: false,
        inPlace: true,
      },
      {
        name: "fixed 1 token",
        T: 1,
        rows: 1,
        n: 64,
        rowStride: 64,
        stride: 64,
        off: 0,
        eps: 1e-5,
        weighted: true,
        inPlace: true,
        fixed: 1,
      },
    ];
    const nTokens = 4;
    const ops: Op[] = [];
    const checks: { c: Case; out: GPUBuffer; want: Float32Array; xData: Float32Array }[] = [];
    for (const c of cases) {
      const size = c.off + nTokens * c.stride + 8;
      const xData = randomArray(size, rng, 3, 0.5);
      const w = randomArray(c.n, rng, 1, 1);
      const x = createBuffer(g, { label: `${c.name}.x`, data: xData });
      const y = c.inPlace ? x : createBuffer(g, { label: `${c.name}.y`, size: size * 4 });
      const weight = c.weighted ? createBuffer(g, { label: `${c.name}.w`, data: w }) : undefined;
      ops.push(
        await prepareRmsNorm(g, {
          x: { buffer: x, offset: c.off, stride: c.stride },
          y: { buffer: y, offset: c.off, stride: c.stride },
          n: c.n,
          rowsPerToken: c.rows,
          rowStride: c.rowStride,
          weight,
          eps: c.eps,
          label: c.name,
          fixedTokens: c.fixed,
        }),
      );
      const dense = gather(xData, c.off, c.stride, c.rowStride, c.T, c.rows, c.n);
      checks.push({
        c,
        out: y,
        want: rmsNorm(dense, c.n, c.eps, c.weighted ? w : undefined),
        xData,
      });
    }
    // Each case runs with its own batch size; the fixed one with a batch of 4.
    const enc = g.device.createCommandEncoder();
    cases.forEach((c, i) => recordOps(enc, [ops[i]!], c.fixed ? nTokens : c.T));
    g.submit(enc);
    const outs = await readback(g, checks.map((k) => k.out));
    checks.forEach(({ c, want, xData }, i) => {
      const all = new Float32Array(outs[i]!);
      const got = gather(all, c.off, c.stride, c.rowStride, c.T, c.rows, c.n);
      const r = compareArrays(got, want, 1e-6, 2e-6);
      assert.ok(r.ok, `${c.name}: ${r.message}`);
      if (c.fixed) {
        const rest = c.off + c.fixed * c.stride;
        assert.deepEqual(all.subarray(rest), xData.subarray(rest), "rows past fixedTokens");
      }
    });
  },
});

gpuTest({
  name: "norm: a wrong eps or missing weight is caught by the reference comparison",
  async fn(g) {
    const rng = makeRng(2);
    const n = 32;
    // Small values make eps matter.
    const xData = randomArray(n, rng, 1e-3);
    const w = randomArray(n, rng, 1, 1);
    const x = createBuffer(g, { label: "x", data: xData });
    const y = createBuffer(g, { label: "y", size: n * 4 });
    const op = await prepareRmsNorm(g, {
      x: { buffer: x, offset: 0, stride: n },
      y: { buffer: y, offset: 0, stride: n },
      n,
      weight: createBuffer(g, { label: "w", data: w }),
      eps: 1e-5,
      label: "eps",
    });
    const enc = g.device.createCommandEncoder();
    recordOps(enc, [op], 1);
    g.submit(enc);
    const got = new Float32Array((await readback(g, [y]))[0]!);
    assert.ok(compareArrays(got, rmsNorm(xData, n, 1e-5, w), 1e-6, 2e-6).ok);
    assert.ok(!compareArrays(got, rmsNorm(xData, n, 1e-6, w), 1e-6, 2e-6).ok, "eps ignored?");
    assert.ok(!compareArrays(got, rmsNorm(xData, n, 1e-5), 1e-6, 2e-6).ok, "weight ignored?");
  },
});
