/**
 * The trained demo model, data/kjv-moe-Q8_0.gguf (tools/train_demo/): what
 * `deno task serve` and `deno task run` run without a model flag.
 *
 * - llama.cpp's greedy tokens after English prompts, on its own all-F32
 *   dequantisation of the file (PARITY.md's exact reference), with every
 *   step's logits within 1% of the range; the native Q8_0 run is reported.
 * - Held-out perplexity: od-moe's equals llama.cpp's on the same file and
 *   tokens, and the model card's (data/kjv-moe-Q8_0.json).
 * - Served the default way (a third of its expert bytes), experts stream
 *   and the continuation of a prompt is made of English words.
 */

import assert from "node:assert/strict";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { trainedDemoModel } from "../src/server/demo.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { gpuTest } from "../dev/gpu.ts";
import { argmax, device, parityUnavailableReason, range } from "./_parity.ts";
import { FIXTURE_DIR } from "../dev/fixtures.ts";
import {
  chunks,
  DEMO_MODEL_PATH,
  enginePerplexity,
  HELDOUT_PATH,
  heldoutStream,
  readDemoCard,
  referencePerplexity,
} from "../bench/perplexity.ts";

const skip = parityUnavailableReason();
if (skip) console.log(`skipping the demo model's llama.cpp tests: ${skip}`);

const PROMPTS = ["And God said unto Moses,", "Blessed are the poor in spirit"];
const GENERATE = 24;

/** llama.cpp's all-F32 copy of the demo model, cached under .cache/models by content hash. */
async function dequantized(): Promise<string> {
  const bytes = await Deno.readFile(DEMO_MODEL_PATH);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const hex = Array.from(digest.slice(0, 6), (b) => b.toString(16).padStart(2, "0")).join("");
  const path = `${FIXTURE_DIR}/kjv-moe-${hex}-dequant.gguf`;
  try {
    await Deno.stat(path);
    return path;
  } catch {
    await Deno.mkdir(FIXTURE_DIR, { recursive: true });
    const tmp = `${path}.tmp-${Deno.pid}`;
    try {
      loadReference().quantize(DEMO_MODEL_PATH, tmp, "ALL_F32", { allowRequantize: true });
      await Deno.rename(tmp, path);
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
    return path;
  }
}

Deno.test({
  name: "demo model: greedy tokens after English prompts = llama.cpp's",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const exact = loadReference().loadModel(await dequantized());
    const native = loadReference().loadModel(DEMO_MODEL_PATH);
    const model = await loadModel({ model: DEMO_MODEL_PATH, gpu: await device(), nCtx: 64 });
    const tok = loadTokenizer(DEMO_MODEL_PATH);
    try {
      for (const text of PROMPTS) {
        const prompt = tok.encode(text);
        assert.deepEqual(prompt, exact.tokenize(text, { addSpecial: true }), "tokenizers agree");
        const want = exact.greedy(prompt, GENERATE);
        const ours: number[] = [];
        let maxRel = 0;
        model.reset();
        let logits = await model.forward(prompt);
        for (let step = 0; step < GENERATE; step++) {
          const ref = want.logits[step]!;
          const r = range(ref).range;
          for (let i = 0; i < ref.length; i++) {
            maxRel = Math.max(maxRel, Math.abs(logits[i]! - ref[i]!) / r);
          }
          ours.push(argmax(logits));
          if (step + 1 < GENERATE) logits = await model.forward([ours[step]!]);
        }
        assert.ok(maxRel <= 0.01, `"${text}": max |logit diff| ${maxRel} of the range > 1%`);
        assert.deepEqual(ours, want.tokens, `"${text}": greedy tokens differ from llama.cpp's`);
        model.reset();
        const gen = await generate(model, prompt, { maxTokens: GENERATE });
        assert.deepEqual(gen.tokens, want.tokens, `"${text}": generate() differs from llama.cpp`);
        const nat: number[] = native.greedy(prompt, GENERATE).tokens;
        const same = nat.findIndex((t, i) => t !== want.tokens[i]);
        console.log(
          `"${text}" → "${tok.decode(ours)}": ${GENERATE} tokens = llama.cpp (exact reference), ` +
            `max logit diff ${(maxRel * 100).toFixed(4)}% of range; native Q8_0 run ${
              same < 0 ? "identical" : `first differs at token ${same}`
            }`,
        );
      }
    } finally {
      model.close();
      exact.close();
      native.close();
    }
  },
});

Deno.test({
  name: "demo model: held-out perplexity = llama.cpp's and the model card's",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const card = readDemoCard();
    const tok = loadTokenizer(DEMO_MODEL_PATH);
    const stream = heldoutStream(tok, await Deno.readTextFile(HELDOUT_PATH));
    const cs = chunks(stream, card.chunk, card.subset.chunks);
    assert.equal(cs.length, card.subset.chunks);
    const ref = loadReference().loadModel(DEMO_MODEL_PATH, { nCtx: card.chunk });
    let llama;
    try {
      llama = referencePerplexity((t) => ref.logits(t), cs);
    } finally {
      ref.close();
    }
    const model = await loadModel({
      model: DEMO_MODEL_PATH,
      gpu: await device(),
      nCtx: card.chunk,
    });
    let ours;
    try {
      ours = await enginePerplexity(model, cs);
    } finally {
      model.close();
    }
    console.log(
      `perplexity over ${ours.scored} held-out tokens: od-moe ${ours.ppl.toFixed(4)}, ` +
        `llama.cpp ${llama.ppl.toFixed(4)}, model card ${card.subset.engine}`,
    );
    assert.equal(ours.scored, card.subset.scored);
    assert.ok(Math.abs(ours.ppl / llama.ppl - 1) < 0.01, "within 1% of llama.cpp's");
    assert.ok(Math.abs(ours.ppl / card.subset.engine - 1) < 0.005, "within 0.5% of the card's");
    assert.ok(Math.abs(llama.ppl / card.subset.llamaCpp - 1) < 1e-3, "llama.cpp's = the card's");
    // a trained model: far below a uniform guess over the vocabulary
    assert.ok(ours.ppl < tok.vocabSize / 20, `perplexity ${ours.ppl} is not a trained model's`);
  },
});

gpuTest({
  name: "demo model: the default budget streams experts and the text is English words",
  sanitizeResources: false,
  async fn() {
    const demo = trainedDemoModel();
    assert.ok(demo, "data/kjv-moe-Q8_0.gguf is present and complete");
    assert.equal(demo.path, DEMO_MODEL_PATH);
    assert.ok(demo.cacheSizeGB * 2 ** 30 < demo.expertBytes, "the budget is below the experts");
    const model = await loadModel({
      model: demo.path,
      gpu: await device(),
      nCtx: 64,
      cacheSizeGB: demo.cacheSizeGB,
      enablePrefetch: true,
    });
    const tok = loadTokenizer(demo.path);
    try {
      const r = await generate(model, tok.encode("And the LORD spake unto Moses, saying,"), {
        maxTokens: 32,
      });
      const s = model.expertStats.snapshot();
      assert.ok(s.misses > 0 && s.hits > 0, `experts stream: ${s.misses} misses, ${s.hits} hits`);
      assert.ok(s.peakBytes <= model.pool.limitBytes, "within the budget");
      const text = tok.decode(r.tokens);
      const known = new Set(
        (await Deno.readTextFile(HELDOUT_PATH)).toLowerCase().match(/[a-z]+/g) ?? [],
      );
      const words = text.toLowerCase().match(/[a-z]+/g) ?? [];
      const english = words.filter((w) => known.has(w)).length;
      console.log(`"${text}": ${english}/${words.length} words known; ${s.misses} misses`);
      assert.ok(words.length >= 10, `"${text}" has fewer than 10 words`);
      assert.ok(english >= 0.8 * words.length, `"${text}" is not mostly English words`);
    } finally {
      model.close();
    }
  },
});
