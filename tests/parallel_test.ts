/**
 * `parallel` generations (continuous batching) through the engine: a
 * seeded request gives the same tokens alone and while other requests of
 * other lengths, seeds and sampling settings run beside it and join or
 * leave between its tokens; greedy requests give what the one-at-a-time
 * engine gives; and they really share batches.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { Engine, type EngineOptions } from "../src/generate/engine.ts";
import type { Gpu } from "../src/gpu/device.ts";
import type { GenerateRequest } from "../src/generate/types.ts";

const PROMPTS = [
  "In the beginning was the word, and the word was",
  "The quick brown fox",
  "Call me Ishmael. Some years ago, never mind how long precisely, having little money",
  "It is a truth universally acknowledged",
  "Once upon a time",
];

/** An engine with 4 slots of 128 positions on the qwen3moe fixture (its other options in `o`). */
async function fourSlots(gpu: Gpu, o: Partial<EngineOptions> = {}): Promise<Engine> {
  const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
  return await Engine.load({
    model,
    gpu,
    nCtx: 128,
    maxBatch: 16,
    parallel: 4,
    promptCacheMiB: 0,
    ...o,
  });
}

gpuTest({
  name:
    "parallel: a seeded request gives the same text alone and under load; greedy as one at a time",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await fourSlots(gpu);
    try {
      const seeded: GenerateRequest = {
        prompt: PROMPTS[0],
        maxTokens: 24,
        sampling: { temperature: 1, seed: 1234 },
        cachePrompt: false,
      };
      const alone = await e.generate(seeded);
      assert.equal(alone.tokens.length, 24);
      const before = { ...e.batcher!.stats };
      // under load: four others with other seeds, lengths and settings, started before and after
      const others = PROMPTS.slice(1).map((prompt, i) =>
        e.generate({
          prompt,
          maxTokens: 8 + 7 * i,
          sampling: i % 2 ? { temperature: 0 } : { temperature: 0.8, topK: 20, seed: i },
          cachePrompt: false,
        })
      );
      const [loaded] = await Promise.all([
        new Promise((r) => setTimeout(r, 30)).then(() => e.generate(seeded)),
        ...others,
      ]);
      assert.deepEqual(loaded!.tokens, alone.tokens, "the same tokens alone and under load");
      assert.equal(loaded!.text, alone.text);
      const s = e.batcher!.stats;
      const rounds = s.decodeRounds - before.decodeRounds;
      const rows = s.decodeRows - before.decodeRows;
      assert.ok(rows / rounds > 1.5, `decode rounds shared: ${rows} rows in ${rounds} rounds`);
    } finally {
      e.close();
    }
    // greedy: the batched engine gives the one-at-a-time engine's tokens
    const one = await fourSlots(gpu, { parallel: 1 });
    const four = await fourSlots(gpu);
    try {
      const reqs = PROMPTS.map((prompt) => ({
        prompt,
        maxTokens: 12,
        sampling: { temperature: 0 },
      }));
      const expected: number[][] = [];
      for (const r of reqs) expected.push((await one.generate(r)).tokens);
      const got = await Promise.all(reqs.map((r) => four.generate(r)));
      got.forEach((g, i) => assert.deepEqual(g.tokens, expected[i], `greedy request ${i}`));
    } finally {
      one.close();
      four.close();
    }
  },
});

gpuTest({
  name:
    "parallel: experts streaming, log probabilities beside it, a request cancelled: the same seeded text",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    for (const cacheSizeGB of [4, 0]) {
      const e = await Engine.load({
        model,
        gpu,
        nCtx: 128,
        maxBatch: 16,
        parallel: 3,
        promptCacheMiB: 0,
        cacheSizeGB,
        onWarning: () => {},
      });
      const label = cacheSizeGB ? "resident" : "streaming";
      try {
        const seeded: GenerateRequest = {
          prompt: PROMPTS[2],
          maxTokens: 20,
          sampling: { temperature: 0.9, seed: 77 },
          cachePrompt: false,
        };
        const alone = await e.generate(seeded);
        const ac = new AbortController();
        const cancelled = e.generate({
          prompt: PROMPTS[1],
          maxTokens: 60,
          signal: ac.signal,
          cachePrompt: false,
        }, (c) => {
          if (c.tokens.length) ac.abort();
        });
        const withLogprobs = e.generate({
          prompt: PROMPTS[3],
          maxTokens: 12,
          logprobs: 2,
          sampling: { temperature: 0 },
          cachePrompt: false,
        });
        const [loaded, c, lp] = await Promise.all([e.generate(seeded), cancelled, withLogprobs]);
        assert.deepEqual(
          loaded.tokens,
          alone.tokens,
          `${label}: the same tokens alone and under load`,
        );
        assert.equal(c.stats.finishReason, "cancelled", `${label}: the cancelled request ended`);
        assert.ok(c.tokens.length < 60);
        assert.equal(
          lp.logprobs?.length,
          lp.tokens.length,
          `${label}: a log probability per token`,
        );
        // the slots are free again: a fourth request runs
        const after = await e.generate({ prompt: PROMPTS[4], maxTokens: 4 });
        assert.equal(after.tokens.length, 4);
        if (!cacheSizeGB) assert.ok(e.model.stalls > 0, "experts streamed: batches were repaired");
      } finally {
        e.close();
      }
    }
  },
});

gpuTest({
  name:
    "parallel: more generating slots than rows computed exactly (the GPU profile's 8) take turns; seeded texts as alone",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const before = Deno.env.get("ODMOE_MATMUL_PROFILE");
    Deno.env.set("ODMOE_MATMUL_PROFILE", "gpu"); // the kernels real GPUs get: tiled past 8 tokens
    try {
      const e = await Engine.load({
        model,
        gpu,
        nCtx: 64,
        maxBatch: 16,
        parallel: 10,
        promptCacheMiB: 0,
      });
      try {
        assert.equal(e.model.exactBatchRows, 8);
        const reqs = Array.from({ length: 10 }, (_, i): GenerateRequest => ({
          prompt: PROMPTS[i % PROMPTS.length]!.slice(i),
          maxTokens: 10,
          sampling: { temperature: 1, seed: 500 + i },
          cachePrompt: false,
        }));
        const alone: number[][] = [];
        for (const r of reqs) alone.push((await e.generate(r)).tokens);
        const together = await Promise.all(reqs.map((r) => e.generate(r)));
        together.forEach((t, i) => assert.deepEqual(t.tokens, alone[i], `request ${i}`));
        assert.equal(
          e.batcher!.stats.maxRows,
          8,
          "never more than 8 rows a round, 8 at the busiest",
        );
      } finally {
        e.close();
      }
    } finally {
      if (before === undefined) Deno.env.delete("ODMOE_MATMUL_PROFILE");
      else Deno.env.set("ODMOE_MATMUL_PROFILE", before);
    }
  },
});

gpuTest({
  name:
    "parallel: short prompts join the decode windows (no prefill round); seeded texts alone = joining others mid-generation",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await fourSlots(gpu);
    try {
      const b = e.batcher!;
      assert.equal(b.mergeMax, 12, "16-token rounds less 4 one-token rows");
      const short = (i: number): GenerateRequest => ({
        prompt: ["Once upon", "The fox", "It is", "A tale"][i],
        maxTokens: 12,
        sampling: { temperature: 1, seed: 40 + i },
        cachePrompt: false,
      });
      const alone: number[][] = [];
      for (let i = 0; i < 4; i++) alone.push((await e.generate(short(i))).tokens);
      const s0 = { ...b.stats };
      // one long generation running; the short ones arrive one by one while it decodes
      const long = e.generate({ prompt: PROMPTS[2], maxTokens: 40, sampling: { temperature: 0 } });
      const got = [];
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 40));
        got.push(e.generate(short(i)));
      }
      const outs = await Promise.all(got);
      await long;
      outs.forEach((o, i) => assert.deepEqual(o.tokens, alone[i], `short request ${i}`));
      assert.equal(b.stats.merged - s0.merged, 3, "the three short prompts joined windows");
      const longChunks = Math.ceil(e.tokenizer.encode(PROMPTS[2]!).length / 16);
      const rounds = b.stats.prefillRounds - s0.prefillRounds;
      assert.ok(rounds <= longChunks, `only the long prompt had prefill rounds: ${rounds}`);
    } finally {
      e.close();
    }
  },
});
