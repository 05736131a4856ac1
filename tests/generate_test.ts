/**
 * Text in, text out: the generation layers on a real (generated) model —
 * greedy text equals llama.cpp's, seeded sampling is reproducible, streamed
 * pieces reassemble to the whole text, stop strings and cancellation end a
 * generation, and the CLI streams to the terminal.
 */

import assert from "node:assert/strict";
import { gpuTest, requireGpu } from "../dev/gpu.ts";
import { Engine } from "../src/generate/engine.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";

let engine: Engine | undefined;
const PROMPT = "The quick brown fox jumps over the lazy dog. Über café 東京 🦊";

async function getEngine(): Promise<Engine> {
  if (!engine) {
    const gpu = requireGpu();
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    engine = await Engine.load({ model, gpu, nCtx: 256, maxBatch: 32 });
  }
  return engine;
}

gpuTest({
  name: "generate: greedy text equals the detokenised llama.cpp greedy tokens",
  ignore: referenceUnavailableReason() !== null,
  sanitizeResources: false,
  async fn() {
    const e = await getEngine();
    const path = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const ref = loadReference().loadModel(path);
    try {
      const ids = ref.tokenize(PROMPT, { addSpecial: true, parseSpecial: true });
      assert.deepEqual(
        e.promptTokens({ prompt: PROMPT }),
        ids,
        "prompt tokenised as llama.cpp does",
      );
      const run = ref.greedy(ids, 24);
      const r = await e.generate({ prompt: PROMPT, maxTokens: 24, sampling: { temperature: 0 } });
      assert.deepEqual(r.tokens, run.tokens);
      const eog = run.tokens.findIndex((t) => e.tokenizer.isEog(t));
      const shown = eog >= 0 ? run.tokens.slice(0, eog) : run.tokens;
      assert.equal(r.text, ref.detokenize(shown, { removeSpecial: false, unparseSpecial: false }));
    } finally {
      ref.close();
    }
  },
});

gpuTest({
  name: "generate: the same seed gives the same text; another seed another",
  sanitizeResources: false,
  async fn() {
    const e = await getEngine();
    const run = (seed: number) =>
      e.generate({
        prompt: PROMPT,
        maxTokens: 20,
        sampling: { temperature: 1.2, topK: 0, topP: 1, minP: 0, seed },
      });
    const a = await run(7);
    const b = await run(7);
    const c = await run(8);
    assert.deepEqual(a.tokens, b.tokens);
    assert.equal(a.text, b.text);
    assert.notDeepEqual(a.tokens, c.tokens, "seeds 7 and 8 gave the same 20 tokens");
  },
});

gpuTest({
  name: "generate: streamed pieces reassemble to the text and never split a character",
  sanitizeResources: false,
  async fn() {
    const e = await getEngine();
    const pieces: string[] = [];
    const r = await e.generate(
      { prompt: PROMPT, maxTokens: 40, sampling: { temperature: 1, seed: 3 } },
      (c) => pieces.push(c.text),
    );
    assert.equal(pieces.join(""), r.text);
    const whole = e.tokenizer.decode(r.tokens.filter((t) => !e.tokenizer.isEog(t)), {
      skipSpecial: true,
    });
    assert.equal(r.text, whole, "streamed text = decoding all tokens at once");
    for (const p of pieces) {
      // a lone surrogate would mean a character was split between pieces
      assert.ok(
        !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(p),
        JSON.stringify(p),
      );
    }
    // a multi-byte string fed through the stream decoder a token at a time
    const ids = e.tokenizer.encode("日本語のテキスト 🦊🦊 ünïcödé", { addSpecial: false });
    const dec = e.tokenizer.createStreamDecoder();
    let text = "";
    for (const id of ids) text += dec.push(id);
    text += dec.flush();
    assert.equal(text, e.tokenizer.decode(ids));
  },
});

gpuTest({
  name: "generate: a stop string ends the text before it; cancellation ends it early",
  sanitizeResources: false,
  async fn() {
    const e = await getEngine();
    const free = await e.generate({ prompt: PROMPT, maxTokens: 30, sampling: { temperature: 0 } });
    assert.equal(free.stats.finishReason, "length");
    assert.ok(free.text.length > 6);
    const stop = free.text.slice(4, 6);
    const cut = await e.generate({
      prompt: PROMPT,
      maxTokens: 30,
      sampling: { temperature: 0 },
      stop: [stop],
    });
    assert.equal(cut.stats.finishReason, "stop");
    assert.equal(cut.text, free.text.slice(0, free.text.indexOf(stop)));
    const controller = new AbortController();
    let n = 0;
    const r = await e.generate(
      { prompt: PROMPT, maxTokens: 200, sampling: { temperature: 0 }, signal: controller.signal },
      () => {
        if (++n === 1) controller.abort();
      },
    );
    assert.equal(r.stats.finishReason, "cancelled");
    assert.ok(r.tokens.length < 200);
    // the engine serves the next request normally
    const again = await e.generate({ prompt: PROMPT, maxTokens: 30, sampling: { temperature: 0 } });
    assert.equal(again.text, free.text);
  },
});

gpuTest({
  name: "generate: deno task run --prompt streams text and prints the stats line",
  sanitizeResources: false,
  async fn() {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../scripts/run.ts", import.meta.url).pathname,
        "--model",
        model,
        "--prompt",
        PROMPT,
        "--max-tokens",
        "12",
        "--greedy",
      ],
      stdout: "piped",
      stderr: "piped",
      env: { XDG_RUNTIME_DIR: "/tmp" },
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const e = await getEngine();
    const want = await e.generate({ prompt: PROMPT, maxTokens: 12, sampling: { temperature: 0 } });
    assert.equal(stdout, want.text + "\n");
    assert.match(stderr, /\d+ prompt tokens at [\d.]+ t\/s, 12 generated at [\d.]+ t\/s/);
    const bad = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../scripts/run.ts", import.meta.url).pathname,
        "--model",
        "/nope.gguf",
        "--prompt",
        "x",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(bad.code, 2);
    assert.match(new TextDecoder().decode(bad.stderr), /--model: no such file: \/nope\.gguf/);
  },
});

gpuTest({
  name:
    "generate: penalties and seeded sampling give the same tokens whether experts stream or not",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({
      arch: "qwen3moe",
      type: "Q8_0",
      shape: "a",
      nExpert: 32,
      nExpertUsed: 2,
    });
    const settings = [
      { temperature: 0, repeatPenalty: 3 },
      { temperature: 0, presencePenalty: 5, frequencyPenalty: 5 },
      { temperature: 1.5, repeatPenalty: 3, seed: 7 },
    ];
    const runs: number[][][] = [];
    for (const [cacheSizeGB, maxBatch] of [[4, 64], [0, 1], [0, 64]] as const) {
      const e = await Engine.load({ model, gpu, nCtx: 128, maxBatch, cacheSizeGB });
      try {
        const out: number[][] = [];
        for (const sampling of settings) {
          out.push((await e.generate({ prompt: PROMPT, maxTokens: 24, sampling })).tokens);
        }
        if (cacheSizeGB === 0) assert.ok(e.model.stalls > 0, "experts did not stream");
        runs.push(out);
      } finally {
        e.close();
      }
    }
    assert.deepEqual(runs[1], runs[0], "budget 0, batch 1");
    assert.deepEqual(runs[2], runs[0], "budget 0, batch 64");
  },
});

gpuTest({
  name:
    "generate: a stop string's tokens and counts do not depend on the readback window; EOG stays in the tokens",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const outs = [];
    for (const window of [1, 16]) {
      const e = await Engine.load({ model, gpu, nCtx: 256, window });
      try {
        const free = await e.generate({
          prompt: PROMPT,
          maxTokens: 30,
          sampling: { temperature: 0 },
        });
        const stop = free.text.slice(6, 9);
        const cut = await e.generate({
          prompt: PROMPT,
          maxTokens: 30,
          sampling: { temperature: 0 },
          stop: [stop],
        });
        assert.equal(cut.stats.completionTokens, cut.tokens.length, `window ${window}`);
        outs.push(cut);
      } finally {
        e.close();
      }
    }
    assert.equal(outs[0]!.text, outs[1]!.text);
    assert.deepEqual(outs[0]!.tokens, outs[1]!.tokens);
    // an end-of-generation token (no text) is still reported among the tokens, however the
    // GPU's readback windows group the ids
    const e = await getEngine();
    const eog = [...e.tokenizer.eogIds][0]!;
    const word = e.tokenizer.encode("fox", { addSpecial: false })[0]!;
    for (const groups of [[[word], [eog]], [[word, eog]]]) {
      const steps = e.generateStep;
      e.generateStep = async function* () {
        for (const g of groups) yield g;
        return { promptTokens: 1, cachedTokens: 0, finishReason: "stop" as const };
      };
      try {
        const r = await e.generate({ prompt: "x", maxTokens: 4 });
        assert.deepEqual(r.tokens, [word, eog], JSON.stringify(groups));
        assert.equal(r.stats.completionTokens, 2);
        assert.equal(r.text, e.tokenizer.decode([word]));
      } finally {
        e.generateStep = steps;
      }
    }
  },
});

gpuTest({
  name:
    "generate: a prompt filling the context still generates one token; max_tokens is clamped to the room",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const e = await Engine.load({ model, gpu, nCtx: 32 });
    try {
      const ids = Array.from({ length: 32 }, (_, i) => 100 + i);
      const full = await e.generate({ prompt: ids, maxTokens: 10, sampling: { temperature: 0 } });
      assert.equal(full.tokens.length, 1);
      const r = await e.generate({
        prompt: ids.slice(0, 20),
        maxTokens: 100,
        sampling: { temperature: 0 },
      });
      assert.equal(r.tokens.length, 13, "20 prompt + 13 generated − 1 fed = 32 positions");
      await assert.rejects(
        () => e.generate({ prompt: [...ids, 1], maxTokens: 1 }),
        /33 tokens; the context holds 32/,
      );
    } finally {
      e.close();
    }
  },
});
