/**
 * `parallel` generations at their edges: a request whose context fills up
 * beside a longer one ends with "length" (and the other is unharmed), a
 * request whose grammar cannot start gives its slot back, and a seeded
 * request with repetition penalties gives the same tokens alone and under
 * load (decode windows sampled on the GPU, readback rounds beside a
 * request with log probabilities).
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { Engine } from "../src/generate/engine.ts";
import { jsonSchema } from "../src/generate/json_schema.ts";
import type { Gpu } from "../src/gpu/device.ts";
import type { GenerateRequest } from "../src/generate/types.ts";

const load = async (gpu: Gpu, parallel: number) =>
  await Engine.load({
    model: await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" }),
    gpu,
    nCtx: 64,
    maxBatch: 16,
    parallel,
    promptCacheMiB: 0,
  });

gpuTest({
  name: "parallel: a context that fills up beside a longer request ends with length",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const long: GenerateRequest = {
        prompt: "Once upon a time",
        maxTokens: 40,
        sampling: { temperature: 0.8, seed: 5 },
        cachePrompt: false,
      };
      const alone = await e.generate(long);
      // 61 prompt tokens: room for 3 more tokens fed, 4 generated
      const full: GenerateRequest = {
        prompt: Array.from({ length: 61 }, (_, i) => 100 + i),
        maxTokens: 30,
        sampling: { temperature: 0 },
        cachePrompt: false,
      };
      const [a, b] = await Promise.all([e.generate(long), e.generate(full)]);
      assert.equal(b.stats.finishReason, "length");
      assert.equal(b.tokens.length, 4);
      assert.deepEqual(a.tokens, alone.tokens, "the other request is unharmed");
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name: "parallel: a request whose grammar cannot start gives its slot back",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      for (let i = 0; i < 3; i++) {
        await assert.rejects(
          e.generate({ prompt: "Hello", maxTokens: 4, grammar: jsonSchema({ $ref: "#" }) }),
          /grammar nests too deep/,
        );
      }
      const ok = await Promise.all([0, 1].map(() => e.generate({ prompt: "Hello", maxTokens: 3 })));
      assert.deepEqual(ok.map((o) => o.tokens.length), [3, 3]);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name: "parallel: a seeded request with penalties gives the same tokens alone and under load",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 3);
    try {
      const seeded: GenerateRequest = {
        prompt: "The the the quick quick brown",
        maxTokens: 24,
        sampling: {
          temperature: 0.9,
          seed: 42,
          repeatPenalty: 1.5,
          presencePenalty: 0.5,
          frequencyPenalty: 0.3,
          penaltyLastN: 16,
        },
        cachePrompt: false,
      };
      const alone = await e.generate(seeded);
      const withLogprobs = e.generate({
        prompt: "It is a truth",
        maxTokens: 10,
        logprobs: 1,
        cachePrompt: false,
      });
      const other = e.generate({
        prompt: "Call me Ishmael",
        maxTokens: 30,
        sampling: { temperature: 0.7, seed: 1, repeatPenalty: 1.2 },
        cachePrompt: false,
      });
      const [loaded] = await Promise.all([
        new Promise((r) => setTimeout(r, 20)).then(() => e.generate(seeded)),
        withLogprobs,
        other,
      ]);
      assert.deepEqual(loaded.tokens, alone.tokens);
    } finally {
      e.close();
    }
  },
});
