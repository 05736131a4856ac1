/**
 * Prefix reuse: a prompt that starts with the previous generation's tokens
 * keeps their KV cache and processes only the rest, and gives the same
 * tokens (greedy and seeded) and logits as processing it all again — for
 * every architecture family the fixtures have (sliding windows on gpt-oss,
 * MLA on deepseek2), and with experts streaming (stall and repair). The
 * prompt cache keeps earlier sequences: two conversations taking turns each
 * get their own prefix back, with the same tokens as computing it again.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { Engine } from "../src/generate/engine.ts";
import type { GenerateRequest, SamplingParams } from "../src/generate/types.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import type { SyntheticArch } from "../src/model/synthetic.ts";

const TURN1 = "The quick brown fox jumps over the lazy dog.";
const TURN2 = " Then it ran into the forest, far away.";
const GREEDY: SamplingParams = { temperature: 0 };
const SEEDED: SamplingParams = { temperature: 1.1, topK: 0, topP: 1, minP: 0, seed: 11 };

/** `[cachedTokens, tokens]` of one generation. */
async function gen(e: Engine, req: GenerateRequest): Promise<[number, number[]]> {
  const r = await e.generate(req);
  return [r.stats.cachedTokens, r.tokens];
}

/** Turn 1, then turn 2 (turn 1's prompt and reply, then more) with and without reuse. */
async function twoTurns(e: Engine, sampling: SamplingParams, label: string): Promise<void> {
  const a = e.tokenizer.encode(TURN1);
  const [cached1, reply] = await gen(e, {
    prompt: a,
    maxTokens: 10,
    sampling,
    cachePrompt: false,
  });
  assert.equal(cached1, 0, `${label}: turn 1 with cache_prompt false reused nothing`);
  const b = [...a, ...reply, ...e.tokenizer.encode(TURN2, { addSpecial: false })];
  const [cached, reused] = await gen(e, { prompt: b, maxTokens: 12, sampling });
  // the last reply token was never fed back, so it has no KV yet
  assert.equal(cached, a.length + reply.length - 1, `${label}: turn 2 reused turn 1's context`);
  const [none, fresh] = await gen(e, { prompt: b, maxTokens: 12, sampling, cachePrompt: false });
  assert.equal(none, 0);
  assert.deepEqual(reused, fresh, `${label}: turn 2's tokens with reuse = without`);
}

for (const arch of ["qwen3moe", "qwen2moe", "llama", "olmoe", "gpt-oss", "deepseek2"] as const) {
  gpuTest({
    name: `prefix reuse: ${arch}: the same tokens and logits with and without reuse`,
    sanitizeResources: false,
    async fn(gpu) {
      const model = await fixtureModel({ arch: arch as SyntheticArch, type: "F32", shape: "a" });
      // batches of 8: the reused prefix and the suffix both cross batch boundaries; the live
      // context only (the prompt cache of earlier sequences has its own test below)
      const e = await Engine.load({ model, gpu, nCtx: 128, maxBatch: 8, promptCacheMiB: 0 });
      try {
        await twoTurns(e, GREEDY, "greedy");
        await twoTurns(e, SEEDED, "seeded");

        // a prompt that leaves the cached one part way keeps only the shared part
        const a = e.tokenizer.encode(TURN1);
        await gen(e, { prompt: a, maxTokens: 4, sampling: GREEDY });
        const c = [...a.slice(0, 5), ...e.tokenizer.encode(TURN2, { addSpecial: false })];
        const [cached, reused] = await gen(e, { prompt: c, maxTokens: 8, sampling: GREEDY });
        assert.equal(cached, 5);
        const [, fresh] = await gen(e, {
          prompt: c,
          maxTokens: 8,
          sampling: GREEDY,
          cachePrompt: false,
        });
        assert.deepEqual(reused, fresh);

        // logits: positions written beyond the kept prefix (longer than what follows, and
        // past gpt-oss's sliding window of 8) must not reach attention
        const m = e.model;
        const p = a.slice(0, 9);
        const junk = e.tokenizer.encode(TURN2 + TURN2, { addSpecial: false });
        const s = e.tokenizer.encode(" over", { addSpecial: false });
        m.reset();
        await m.forward([...p, ...junk]);
        m.truncate(p.length);
        const kept = await m.forward(s);
        m.reset();
        const whole = await m.forward([...p, ...s]);
        let range = 0;
        let diff = 0;
        for (let i = 0; i < whole.length; i++) {
          range = Math.max(range, Math.abs(whole[i]!));
          diff = Math.max(diff, Math.abs(whole[i]! - kept[i]!));
        }
        assert.ok(diff <= 1e-4 * range, `logits differ by ${diff} (|max| ${range})`);
        // the engine notices the model was driven directly and reuses nothing
        const [after] = await gen(e, {
          prompt: [...p, ...s, ...s],
          maxTokens: 2,
          sampling: GREEDY,
        });
        assert.equal(after, 0);
      } finally {
        e.close();
      }
    },
  });
}

gpuTest({
  name: "prefix reuse: with experts streaming (stalls repaired) the tokens are the same",
  sanitizeResources: false,
  async fn(gpu) {
    for (const arch of ["qwen3moe", "deepseek2"] as const) {
      const model = await fixtureModel({ arch, type: "F32", shape: "a" });
      // the smallest budget: almost every batch misses an expert and is repaired
      const e = await Engine.load({ model, gpu, nCtx: 128, maxBatch: 8, cacheSizeGB: 0 });
      try {
        assert.ok(!e.model.pool.allResident);
        const stalls = e.model.stalls;
        await twoTurns(e, GREEDY, `${arch} greedy`);
        await twoTurns(e, SEEDED, `${arch} seeded`);
        assert.ok(e.model.stalls > stalls, "no batch stalled: the repair path was not exercised");
      } finally {
        e.close();
      }
    }
  },
});

const OTHER = "A different story about a river, a mill and children playing by the water.";

for (const arch of ["qwen3moe", "deepseek2", "gpt-oss"] as const) {
  gpuTest({
    name:
      `prompt cache: ${arch}: two conversations taking turns each reuse their own prefix, same tokens; --cache-ram 0 keeps none`,
    sanitizeResources: false,
    async fn(gpu) {
      const model = await fixtureModel({ arch: arch as SyntheticArch, type: "F32", shape: "a" });
      const e = await Engine.load({ model, gpu, nCtx: 128, maxBatch: 8 });
      const off = await Engine.load({ model, gpu, nCtx: 128, maxBatch: 8, promptCacheMiB: 0 });
      try {
        const more = e.tokenizer.encode(TURN2, { addSpecial: false });
        const a = e.tokenizer.encode(TURN1 + TURN1);
        const b = e.tokenizer.encode(OTHER + OTHER);
        const shared = (x: number[], y: number[]) => {
          let i = 0;
          while (i < x.length && x[i] === y[i]) i++;
          return i;
        };
        const conversation = async (eng: Engine) => {
          const [, ra] = await gen(eng, { prompt: a, maxTokens: 6, sampling: GREEDY });
          const [, rb] = await gen(eng, { prompt: b, maxTokens: 6, sampling: GREEDY });
          const a2 = [...a, ...ra, ...more];
          const b2 = [...b, ...rb, ...more];
          // a comes back after b took the KV cache, then b after a
          const [ca, ta] = await gen(eng, { prompt: a2, maxTokens: 8, sampling: SEEDED });
          const [cb, tb] = await gen(eng, { prompt: b2, maxTokens: 8, sampling: SEEDED });
          return { a2, b2, ca, cb, ta, tb, ra, rb };
        };
        const on = await conversation(e);
        // the last reply token was never fed back, so it has no KV yet
        assert.equal(on.ca, a.length + on.ra.length - 1, "a's context came back from the cache");
        assert.equal(on.cb, b.length + on.rb.length - 1, "b's context came back from the cache");
        const [, freshA] = await gen(e, {
          prompt: on.a2,
          maxTokens: 8,
          sampling: SEEDED,
          cachePrompt: false,
        });
        const [, freshB] = await gen(e, {
          prompt: on.b2,
          maxTokens: 8,
          sampling: SEEDED,
          cachePrompt: false,
        });
        assert.deepEqual(on.ta, freshA, "a's tokens with its restored prefix = computed again");
        assert.deepEqual(on.tb, freshB, "b's tokens with its restored prefix = computed again");

        const none = await conversation(off);
        assert.equal(
          none.ca,
          shared(none.a2, none.b2),
          "without a prompt cache only b's live prefix",
        );
        assert.equal(none.cb, shared(none.a2, none.b2));
        assert.deepEqual([none.ta, none.tb], [on.ta, on.tb]);
      } finally {
        e.close();
        off.close();
      }
    },
  });
}
