import assert from "node:assert/strict";
import type { Gpu } from "../device.ts";
import { createBuffer, readback } from "../buffers.ts";
import { makeRng, randomArray } from "./cpu_ref.ts";
import { prepareKvStore } from "./kv.ts";
import { recordOps, stepWords } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";

function stepBuffer(g: Gpu, pos0: number, nTokens: number): GPUBuffer {
  return createBuffer(g, { label: "step", data: stepWords(pos0, nTokens) });
}

gpuTest({
  name: "kv: K and V rows land at pos0 + t, nothing else is touched; K-only (MLA) rows",
  async fn(g) {
    const rng = makeRng(4);
    const nCtx = 16, T = 3, pos0 = 5;
    const kRow = 2 * 12, vRow = 2 * 10;
    // A fused [T, q | k | v] projection output with a padded row.
    const qkvStride = 40 + kRow + vRow + 3;
    const qkv = randomArray(T * qkvStride, rng);
    const qkvBuf = createBuffer(g, { label: "qkv", data: qkv });
    const kcOff = 7;
    const sentinel = (n: number) => new Float32Array(n).fill(-7);
    const kCache = createBuffer(g, { label: "kc", data: sentinel(kcOff + nCtx * kRow) });
    const vCache = createBuffer(g, { label: "vc", data: sentinel(nCtx * vRow) });
    const mlaRow = 18, mlaStride = 20;
    const latent = randomArray(T * mlaRow, rng);
    const mlaCache = createBuffer(g, { label: "mla", data: sentinel(nCtx * mlaStride) });
    const step = stepBuffer(g, pos0, T);
    const ops = [
      await prepareKvStore(g, {
        k: { buffer: qkvBuf, offset: 40, stride: qkvStride },
        v: { buffer: qkvBuf, offset: 40 + kRow, stride: qkvStride },
        kCache: { buffer: kCache, offset: kcOff },
        vCache,
        kRow,
        vRow,
        nCtx,
        step,
        label: "kv",
      }),
      await prepareKvStore(g, {
        k: {
          buffer: createBuffer(g, { label: "latent", data: latent }),
          offset: 0,
          stride: mlaRow,
        },
        kCache: mlaCache,
        kRow: mlaRow,
        kCacheStride: mlaStride,
        // nCtx omitted: as many positions as the buffer holds.
        step,
        label: "mla",
      }),
    ];
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const [kc, vc, mc] = (await readback(g, [kCache, vCache, mlaCache])).map((b) =>
      new Float32Array(b)
    );
    const wantK = sentinel(kcOff + nCtx * kRow);
    const wantV = sentinel(nCtx * vRow);
    const wantM = sentinel(nCtx * mlaStride);
    for (let t = 0; t < T; t++) {
      wantK.set(
        qkv.subarray(t * qkvStride + 40, t * qkvStride + 40 + kRow),
        kcOff + (pos0 + t) * kRow,
      );
      wantV.set(
        qkv.subarray(t * qkvStride + 40 + kRow, t * qkvStride + 40 + kRow + vRow),
        (pos0 + t) * vRow,
      );
      wantM.set(latent.subarray(t * mlaRow, (t + 1) * mlaRow), (pos0 + t) * mlaStride);
    }
    assert.deepEqual(kc, wantK);
    assert.deepEqual(vc, wantV);
    assert.deepEqual(mc, wantM);
  },
});

gpuTest({
  name: "kv: a cache too small for nCtx is refused at prepare time",
  async fn(g) {
    const k = createBuffer(g, { label: "k", size: 64 });
    await assert.rejects(
      () =>
        prepareKvStore(g, {
          k: { buffer: k, offset: 0, stride: 8 },
          kCache: createBuffer(g, { label: "small", size: 8 * 4 * 3 }),
          kRow: 8,
          nCtx: 4,
          step: k,
          label: "small",
        }),
      /small/,
    );
  },
});
