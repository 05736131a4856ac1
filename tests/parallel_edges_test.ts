/**
 * `parallel` generations (continuous batching) at their edges: a request
 * whose context fills up beside a longer one ends with "length" (the other
 * unharmed); a request whose grammar cannot start gives its slot back; a
 * seeded request with repetition penalties gives the same tokens alone and
 * under load (GPU-sampled windows, readback rounds beside a request with
 * log probabilities); a slot's conversation reused after a cancel
 * mid-window gives the tokens of no reuse; a request cancelled while it
 * waits for a slot leaves at once; KV caches over a storage binding are
 * refused at load; weights turning infinite mid-generation fail the
 * running requests and the engine recovers; prompts take turns chunk by
 * chunk and a request cancelled during its prompt drops the rest; an
 * `onChunk` that throws gives its slot back; a cache_prompt false request
 * leaves the conversations' slots alone.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { Engine } from "../src/generate/engine.ts";
import { jsonSchema } from "../src/generate/json_schema.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { NonFiniteError } from "../src/model/model.ts";
import { expertLayout, expertSliceRange } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
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
      const ok = await Promise.all(
        [0, 1].map(() =>
          e.generate({ prompt: "Hello", maxTokens: 3, sampling: { temperature: 0 } })
        ),
      );
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

gpuTest({
  name:
    "parallel: a slot's conversation reused after a stop, a cancel mid-window and beside others: the same tokens",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const greedy = { temperature: 0 };
      const fresh = (prompt: number[], maxTokens: number) =>
        e.generate({ prompt, maxTokens, sampling: greedy, cachePrompt: false });
      const base = e.tokenizer.encode("The story of a small town by the sea");
      // a long request keeps windows running in the other slot throughout
      const long = e.generate({
        prompt: "Once upon a time",
        maxTokens: 40,
        sampling: { temperature: 0.8, seed: 9 },
      });
      // cancelled after its first chunk: its slot's decoder leaves while a window may run
      const ac = new AbortController();
      const cut = await e.generate(
        { prompt: base, maxTokens: 30, sampling: greedy, signal: ac.signal },
        (c) => {
          if (c.tokens.length) ac.abort();
        },
      );
      assert.equal(cut.stats.finishReason, "cancelled");
      // the next turn starts with what the cancelled one showed, then new text
      const turn = [...base, ...cut.tokens, ...e.tokenizer.encode(" and then")];
      const reused = await e.generate({ prompt: turn, maxTokens: 10, sampling: greedy });
      assert.ok(reused.stats.cachedTokens >= base.length, `cached ${reused.stats.cachedTokens}`);
      await long;
      const expected = await fresh(turn, 10);
      assert.deepEqual(reused.tokens, expected.tokens, "a reused prefix gives the tokens of none");
      // a stop (length) and a turn after it, with another request in the other slot
      const turn2 = [...turn, ...reused.tokens, ...e.tokenizer.encode(" again")];
      const [again] = await Promise.all([
        e.generate({ prompt: turn2, maxTokens: 8, sampling: greedy }),
        e.generate({ prompt: "Call me Ishmael", maxTokens: 20, sampling: { seed: 3 } }),
      ]);
      assert.ok(again.stats.cachedTokens > turn.length, `cached ${again.stats.cachedTokens}`);
      assert.deepEqual(again.tokens, (await fresh(turn2, 8)).tokens);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name:
    "parallel: a request cancelled while it waits for a slot leaves at once; the others keep order",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const order: string[] = [];
      const run = (name: string, maxTokens: number, signal?: AbortSignal) =>
        e.generate(
          { prompt: `Request ${name}`, maxTokens, signal, sampling: { temperature: 0 } },
          () => {
            if (!order.includes(name)) order.push(name);
          },
        ).then((o) => (order.push(`${name} done`), o));
      const gone = new AbortController();
      gone.abort();
      const before = await run("0", 5, gone.signal);
      assert.equal(before.stats.finishReason, "cancelled");
      assert.equal(before.tokens.length, 0);
      const ac = new AbortController();
      const all = [run("a", 24), run("b", 24), run("c", 24, ac.signal), run("d", 4)];
      assert.equal(e.pending, 4);
      ac.abort();
      const c = await all[2]!;
      assert.equal(c.stats.finishReason, "cancelled");
      assert.equal(c.tokens.length, 0, "it never ran");
      assert.equal(e.pending, 3);
      assert.ok(!order.includes("a done") && !order.includes("b done"), order.join());
      const [a, b, , d] = await Promise.all(all);
      assert.deepEqual([a!.tokens.length, b!.tokens.length, d!.tokens.length], [24, 24, 4]);
      assert.ok(
        order.indexOf("d") > order.indexOf("a done") ||
          order.indexOf("d") > order.indexOf("b done"),
      );
      assert.equal(e.pending, 0);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name:
    "parallel: KV caches over a storage binding are refused at load, naming --parallel and --ctx-size",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    // qwen3moe a: 2 kv heads × 48 f32 = 384 bytes a position; 8 sequences
    const nCtx = Math.floor(gpu.limits.maxStorageBufferBindingSize / (384 * 8)) + 1;
    await assert.rejects(
      Engine.load({ model, gpu, nCtx, maxBatch: 16, parallel: 8, promptCacheMiB: 0 }),
      (e: Error) =>
        e instanceof RangeError &&
        /8 sequence\(s\) of \d+ positions.*lower --parallel \(at most 7 at this context\) or --ctx-size/
          .test(e.message),
    );
  },
});

/** Writes +Infinity into every routed expert's down weights; returns the undo. */
async function poison(path: string): Promise<() => Promise<void>> {
  const layouts = expertLayout(readGgufModel(path));
  const saved: [number, Uint8Array][] = [];
  using file = await Deno.open(path, { read: true, write: true });
  for (const layout of layouts) {
    const down = layout.tensors.find((t) => t.role === "down" && t.kind === "weight")!;
    for (let e = 0; e < layout.nExpert; e++) {
      const { offset } = expertSliceRange(down, e);
      const old = new Uint8Array(4);
      await file.seek(offset, Deno.SeekMode.Start);
      await file.read(old);
      saved.push([offset, old]);
      await file.seek(offset, Deno.SeekMode.Start);
      await file.write(new Uint8Array(new Float32Array([Infinity]).buffer));
    }
  }
  return async () => {
    using f = await Deno.open(path, { write: true });
    for (const [offset, bytes] of saved) {
      await f.seek(offset, Deno.SeekMode.Start);
      await f.write(bytes);
    }
  };
}

gpuTest({
  name:
    "parallel: experts streaming, weights turned infinite mid-generation: both running requests fail with NonFiniteError; restored, the engine gives the same tokens",
  sanitizeResources: false,
  async fn(gpu) {
    const dir = await Deno.makeTempDir({ prefix: "od-moe-pfaults-" });
    const copy = `${dir}/model.gguf`;
    await Deno.copyFile(await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" }), copy);
    const e = await Engine.load({
      model: copy,
      gpu,
      nCtx: 128,
      maxBatch: 16,
      parallel: 2,
      promptCacheMiB: 0,
      cacheSizeGB: 0,
      onWarning: () => {},
    });
    try {
      const req = (p: string) => ({ prompt: p, maxTokens: 12, sampling: { temperature: 0 } });
      const want = await Promise.all([e.generate(req("One two")), e.generate(req("Three four"))]);
      let restore: Promise<() => Promise<void>> | undefined;
      const got = await Promise.allSettled([
        e.generate({ ...req("One two"), maxTokens: 60 }, (c) => {
          if (c.tokens.length && !restore) restore = poison(copy);
        }),
        e.generate({ ...req("Three four"), maxTokens: 60 }),
      ]);
      await (await restore!)();
      const again = await Promise.all([e.generate(req("One two")), e.generate(req("Three four"))]);
      assert.deepEqual(again.map((o) => o.tokens), want.map((o) => o.tokens));
      for (const g of got) assert.ok(g.status === "rejected" && g.reason instanceof NonFiniteError);
    } finally {
      e.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

gpuTest({
  name: "parallel: a short prompt waiting beside a long one gets its first token first",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const greedy = { temperature: 0 };
      const long = Array.from({ length: 60 }, (_, i) => 200 + i); // 4 chunks of 16
      const firsts: string[] = [];
      const run = (name: string, prompt: number[]) =>
        e.generate({ prompt, maxTokens: 3, sampling: greedy, cachePrompt: false }, () => {
          if (!firsts.includes(name)) firsts.push(name);
        });
      const alone = await run("alone", [300, 301]);
      const longAlone = await run("long alone", long);
      const [l, short] = await Promise.all([run("long", long), run("short", [300, 301])]);
      assert.deepEqual(firsts.slice(2), ["short", "long"], "prompt chunks take turns");
      assert.deepEqual(short!.tokens, alone.tokens);
      assert.deepEqual(l!.tokens, longAlone.tokens);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name: "parallel: a request cancelled during its prompt drops the chunks not yet run",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const long = Array.from({ length: 60 }, (_, i) => 200 + i); // 4 chunks of 16
      const ac = new AbortController();
      const before = e.batcher!.stats.prefillRounds;
      const cancelled = e.generate({ prompt: long, maxTokens: 3, signal: ac.signal });
      setTimeout(() => ac.abort(), 0);
      const out = await cancelled;
      assert.equal(out.stats.finishReason, "cancelled");
      assert.equal(out.tokens.length, 0);
      assert.ok(e.batcher!.stats.prefillRounds - before < 4, "not every chunk ran");
      // its slot holds the chunks that ran: the same prompt again reuses them, same tokens
      const again = await e.generate({ prompt: long, maxTokens: 3, sampling: { temperature: 0 } });
      const fresh = await e.generate({
        prompt: long,
        maxTokens: 3,
        sampling: { temperature: 0 },
        cachePrompt: false,
      });
      assert.deepEqual(again.tokens, fresh.tokens);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name: "parallel: an onChunk callback that throws ends its generation and gives the slot back",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const greedy = { temperature: 0 };
      await assert.rejects(
        e.generate({ prompt: "Hello", maxTokens: 40, sampling: greedy }, () => {
          throw new Error("the socket is gone");
        }),
        /the socket is gone/,
      );
      const both = await Promise.all(
        ["One", "Two"].map((prompt) => e.generate({ prompt, maxTokens: 3, sampling: greedy })),
      );
      assert.deepEqual(both.map((o) => o.tokens.length), [3, 3]);
    } finally {
      e.close();
    }
  },
});

gpuTest({
  name:
    "parallel: a cache_prompt false request takes the least recently used slot, not a conversation's",
  sanitizeResources: false,
  async fn(gpu) {
    const e = await load(gpu, 2);
    try {
      const greedy = { temperature: 0 };
      const a = [500, 501, 502, 503, 504, 505];
      const b = [600, 601, 602, 603, 604, 605, 606, 607];
      await e.generate({ prompt: a, maxTokens: 4, sampling: greedy });
      const b1 = await e.generate({ prompt: b, maxTokens: 4, sampling: greedy });
      // shares b's first tokens, but keeps nothing
      await e.generate({
        prompt: [600, 601, 700, 701],
        maxTokens: 4,
        sampling: greedy,
        cachePrompt: false,
      });
      const b2 = await e.generate({
        prompt: [...b, ...b1.tokens, 800, 801],
        maxTokens: 4,
        sampling: greedy,
      });
      assert.ok(b2.stats.cachedTokens >= b.length, `cached ${b2.stats.cachedTokens}`);
    } finally {
      e.close();
    }
  },
});
