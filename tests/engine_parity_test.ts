/**
 * Parity with llama.cpp (PARITY.md): on every generated test model — three
 * architectures × F32/F16/Q8_0/Q4_0/Q4_K_M/Q5_K_M/Q6_K × two shape sets — the
 * 32 greedy tokens after a 16-token prompt are llama.cpp's, and every step's
 * logits are within 1% of that step's logit range. llama.cpp's side is
 * computed live: on the file itself for F32, on llama.cpp's own all-F32
 * dequantised copy for the other types (the exact reference).
 */

import assert from "node:assert/strict";
import { loadModel } from "../src/model/model.ts";
import { Rng } from "../src/util/rng.ts";
import {
  fixtureDequantized,
  fixtureModel,
  type FixtureShape,
  type FixtureType,
} from "../dev/fixtures.ts";
import type { SyntheticArch } from "../src/model/synthetic.ts";
import { argmax, compare, device, parityUnavailableReason, PROMPT, range } from "./_parity.ts";

const ARCHS: SyntheticArch[] = ["llama", "qwen2moe", "qwen3moe"];
const TYPES: FixtureType[] = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"];
const SHAPES: FixtureShape[] = ["a", "b"];

const skip = parityUnavailableReason();
if (skip) console.log(`skipping engine parity tests: ${skip}`);

for (const arch of ARCHS) {
  for (const shape of SHAPES) {
    Deno.test({
      name: `parity: ${arch} shape ${shape}, every type, 32 greedy tokens = llama.cpp`,
      ignore: skip !== null,
      sanitizeResources: false,
      async fn() {
        for (const [i, type] of TYPES.entries()) {
          const path = await fixtureModel({ arch, type, shape });
          const refPath = type === "F32" ? path : await fixtureDequantized({ arch, type, shape });
          const model = await loadModel({
            model: path,
            gpu: await device(),
            nCtx: 64,
            maxBatch: 16,
          });
          try {
            await compare(model, refPath, `${arch}/${shape}/${type}`, i + 1);
          } finally {
            model.close();
          }
        }
      },
    });
  }
}

Deno.test({
  name: "parity: a prompt as one batch and fed token by token give the same logits",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    for (const arch of ARCHS) {
      const path = await fixtureModel({ arch, type: "Q4_K_M", shape: "b" });
      for (const maxBatch of [16, 5]) {
        const model = await loadModel({ model: path, gpu: await device(), nCtx: 64, maxBatch });
        try {
          const rng = new Rng(7);
          const prompt = Array.from({ length: PROMPT }, () => rng.int(model.config.nVocab));
          const batched = await model.forward(prompt);
          model.reset();
          let single: Float32Array = new Float32Array();
          for (const t of prompt) single = await model.forward([t]);
          const { range: r } = range(batched);
          let maxDiff = 0;
          for (let i = 0; i < batched.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(batched[i]! - single[i]!));
          }
          assert.ok(maxDiff <= 0.01 * r, `${arch} batch ${maxBatch}: ${maxDiff} > 1% of ${r}`);
          assert.equal(argmax(batched), argmax(single));
        } finally {
          model.close();
        }
      }
    }
  },
});

Deno.test({
  name: "parity: a deliberately broken engine (rope off) is caught",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const model = await loadModel({ model: path, gpu: await device(), nCtx: 64, maxBatch: 16 });
    try {
      // Rebuild with RoPE's frequency base wrong: logits must leave the tolerance.
      const broken = await loadModel({
        model: path,
        gpu: await device(),
        nCtx: 64,
        maxBatch: 16,
        configOverride: { ropeFreqBase: 1e9 },
      });
      try {
        await assert.rejects(() => compare(broken, path, "broken", 1), /logit diff|tokens differ/);
      } finally {
        broken.close();
      }
      await compare(model, path, "unbroken", 1);
    } finally {
      model.close();
    }
  },
});
