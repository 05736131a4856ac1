// The shadow predictor's GPU kernels (batched GEMM with epilogues, top-k) against CPU references.

import assert from "node:assert/strict";
import { createBuffer, readback } from "../gpu/buffers.ts";
import { recordOps } from "../gpu/ops/op.ts";
import { Rng } from "../util/rng.ts";
import { NONE, prepareGemm, prepareTopk } from "./kernels.ts";
import { gpuTest } from "../../dev/gpu.ts";

function normals(n: number, rng: Rng, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

gpuTest({
  name: "predictor gemm: strided, batched products with bias and epilogues match the CPU",
  sanitizeResources: false,
  async fn(g) {
    const rng = new Rng(1);
    const Z = 3, M = 7, N = 9, K = 5;
    // A stored transposed per z ([z][k][m]), B as W [z][n][k], C with a row stride of 11
    const a = normals(Z * K * M, rng);
    const b = normals(Z * N * K, rng);
    const bias = normals(Z * N, rng);
    const mask = normals(Z * M * 11, rng);
    const ab = createBuffer(g, { label: "a", data: a });
    const bb = createBuffer(g, { label: "b", data: b });
    const biasB = createBuffer(g, { label: "bias", data: bias });
    const maskB = createBuffer(g, { label: "mask", data: mask });
    const c0 = normals(Z * M * 11, rng);
    for (const epi of ["none", "relu", "mask", "accumulate"] as const) {
      for (const shape of [[8, 8], [1, 64]] as const) {
        const cb = createBuffer(g, { label: "c", data: c0 });
        const op = await prepareGemm(g, {
          a: { buffer: ab, z: K * M, i: 1, j: M },
          b: { buffer: bb, z: N * K, i: 1, j: K },
          c: { buffer: cb, z: M * 11, i: 11, j: 1 },
          bias: epi === "accumulate" ? undefined : { buffer: biasB, z: N },
          epilogue: epi === "relu" ? "relu" : epi === "mask" ? { mask: maskB } : undefined,
          accumulate: epi === "accumulate",
          m: M,
          n: N,
          k: K,
          z: Z,
          shape,
          label: `gemm.${epi}`,
        });
        const enc = g.device.createCommandEncoder();
        recordOps(enc, [op], 1);
        g.submit(enc);
        const got = new Float32Array((await readback(g, [cb]))[0]!);
        for (let z = 0; z < Z; z++) {
          for (let m = 0; m < M; m++) {
            for (let n = 0; n < N; n++) {
              let v = 0;
              for (let k = 0; k < K; k++) {
                v += a[z * K * M + k * M + m]! * b[z * N * K + n * K + k]!;
              }
              const ci = z * M * 11 + m * 11 + n;
              if (epi !== "accumulate") v += bias[z * N + n]!;
              else v += c0[ci]!;
              if (epi === "relu") v = Math.max(0, v);
              if (epi === "mask" && !(mask[ci]! > 0)) v = 0;
              assert.ok(
                Math.abs(got[ci]! - v) < 1e-4,
                `${epi} ${shape}: C[${z},${m},${n}] = ${got[ci]}, expected ${v}`,
              );
            }
            // columns past N are not written
            assert.equal(got[z * M * 11 + m * 11 + 10], c0[z * M * 11 + m * 11 + 10]);
          }
        }
        cb.destroy();
      }
    }
  },
});

gpuTest({
  name: "predictor top-k: best first, ties to the lower id, NONE past the last layer",
  sanitizeResources: false,
  async fn(g) {
    const L = 3, D = 2, N = 6, k = 3, T = 2;
    const rng = new Rng(2);
    const scores = Float32Array.from({ length: T * L * D * N }, () => Math.round(rng.normal() * 2));
    const sb = createBuffer(g, { label: "scores", data: scores });
    const step = createBuffer(g, { label: "step", data: new Uint32Array([0, T, T, 0]) });
    for (const crossToken of [false, true]) {
      const ids = createBuffer(g, { label: "ids", size: 4 * T * L * D * k });
      const op = await prepareTopk(g, {
        scores: sb,
        ids,
        nExpert: N,
        k,
        depth: D,
        nLayer: L,
        groups: { perToken: L * D, step },
        crossToken,
        label: "topk",
      });
      const enc = g.device.createCommandEncoder();
      recordOps(enc, [op], T);
      g.submit(enc);
      const got = new Uint32Array((await readback(g, [ids]))[0]!);
      for (let gi = 0; gi < T * L * D; gi++) {
        const l = Math.floor(gi / D) % L;
        const d = gi % D;
        const want = !crossToken && l + 1 + d >= L
          ? [NONE, NONE, NONE]
          : [...Array(N).keys()].sort((x, y) => scores[gi * N + y]! - scores[gi * N + x]! || x - y)
            .slice(0, k);
        assert.deepEqual([...got.subarray(gi * k, gi * k + k)], want, `group ${gi}`);
      }
      ids.destroy();
    }
  },
});
