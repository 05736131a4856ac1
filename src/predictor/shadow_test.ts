// Shadow predictor weights: the safetensors round trip, shape checks, GPU inference
// against src/predictor/cpu_ref.ts, and the model size at the largest supported shape.

import assert from "node:assert/strict";
import { createBuffer, readback } from "../gpu/buffers.ts";
import { Rng } from "../util/rng.ts";
import {
  checkShadowFits,
  initShadow,
  loadShadow,
  saveShadow,
  shadowBytes,
  ShadowPredictor,
  type ShadowShape,
} from "./shadow.ts";
import { shadowForwardCpu } from "./cpu_ref.ts";
import { gpuTest } from "../../dev/gpu.ts";

function normals(n: number, rng: Rng, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

const SHAPE: ShadowShape = {
  nEmbd: 12,
  nLayer: 3,
  nExpert: 6,
  nExpertUsed: 2,
  depth: 2,
  hidden: 10,
  residual: true,
};

gpuTest({
  name: "shadow weights: safetensors round trip, shape checks, GPU inference matches the CPU",
  sanitizeResources: false,
  async fn(g) {
    const shape = { ...SHAPE, residual: false };
    const w = initShadow(shape, 9);
    const rng = new Rng(4);
    for (let i = 0; i < w.params.length; i++) w.params[i] = rng.normal() * 0.5;
    const dir = await Deno.makeTempDir();
    try {
      const path = `${dir}/shadow.safetensors`;
      await saveShadow(path, { ...w, info: { model: "test" } });
      const back = loadShadow(path);
      assert.deepEqual(back.shape, shape);
      assert.deepEqual(back.params, w.params);
      assert.equal(back.info?.["model"], "test");
      assert.equal((await Deno.stat(path)).size > shadowBytes(shape), true);
      assert.throws(
        () => checkShadowFits(back, { nEmbd: 12, nLayer: 4, nExpert: 6, nExpertUsed: 2 }),
        /nLayer = 3, the model has 4/,
      );
      // inference: the top-k of the CPU logits, from normalised hidden states
      const T = 2;
      const { nLayer: L, nEmbd: E, depth: D, nExpert: N } = shape;
      const hidden = normals(T * L * E, rng, 3);
      const x = createBuffer(g, { label: "hidden", data: hidden });
      const step = createBuffer(g, {
        label: "step",
        data: new Uint32Array([0, T, T, 0]),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      const p = await ShadowPredictor.create(g, back, {
        hidden: (l) => ({ buffer: x, offset: l * E, stride: L * E }),
        step,
        maxTokens: T,
      }, { topK: 3 });
      const enc = g.device.createCommandEncoder();
      p.record(enc, T);
      g.submit(enc);
      const out = new Uint32Array((await readback(g, [p.output]))[0]!);
      const rows = new Float32Array(hidden);
      for (let r = 0; r < T * L; r++) {
        let ss = 0;
        for (let i = 0; i < E; i++) ss += rows[r * E + i]! ** 2;
        for (let i = 0; i < E; i++) rows[r * E + i]! /= Math.sqrt(ss / E + 1e-6);
      }
      const { logits } = shadowForwardCpu(
        shape,
        back.params,
        rows,
        Array.from({ length: T * L }, (_, r) => r % L),
      );
      for (let t = 0; t < T; t++) {
        for (let l = 0; l < L; l++) {
          for (const pr of p.predict(l, out, t)) {
            const base = ((t * L + l) * D + pr.distance - 1) * N;
            const want = [...Array(N).keys()].sort((a, b) =>
              logits[base + b]! - logits[base + a]! || a - b
            ).slice(0, 3);
            assert.deepEqual(pr.experts, want, `token ${t} layer ${l} distance ${pr.distance}`);
            assert.equal(pr.nextToken, l + pr.distance >= L);
          }
        }
      }
      p.destroy();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("shadow model size: under 500 MB for the largest supported shape (Kimi-K2 / DeepSeek-V3)", () => {
  // 61 layers, 7168 wide, 384 experts (top-8); the trainer's defaults (hidden 256, depth 2)
  // and a generous one (hidden 1024, depth 3)
  const kimi = { nEmbd: 7168, nLayer: 61, nExpert: 384, nExpertUsed: 8, residual: true };
  assert.equal(shadowBytes({ ...kimi, hidden: 256, depth: 2 }), 55_562_240);
  assert.ok(shadowBytes({ ...kimi, hidden: 1024, depth: 3 }) < 500e6);
});
