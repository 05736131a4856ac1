/**
 * Tests of the llama.cpp reference wrapper: struct layouts, tokenisation
 * against llama.cpp's own test cases, evaluation and quantisation of a tiny
 * generated `llama` model.
 */

import assert from "node:assert/strict";
import { LAYOUTS, loadReference, referenceUnavailableReason, type RefModel } from "./llama_cpp.ts";
import { vocabPath } from "./llama_src.ts";
import { writeGgufFile } from "../../src/gguf/writer.ts";
import { readGgufModel } from "../../src/gguf/reader.ts";
import { archKey, Keys, tensorName, Tensors } from "../../src/gguf/names.ts";
import { GgmlType } from "../../src/gguf/types.ts";
import { gv } from "../../src/gguf/value.ts";

const unavailable = referenceUnavailableReason();
if (unavailable !== null) console.warn(`skipping llama.cpp reference tests: ${unavailable}`);
const refTest = (name: string, fn: () => void | Promise<void>) =>
  Deno.test({ name, ignore: unavailable !== null, fn });

Deno.test("struct layouts agree with llama.h read by hand", () => {
  // Offsets worked out from include/llama.h at the pinned commit on x86-64.
  const c = LAYOUTS.contextParams;
  assert.equal(c.size, 160);
  assert.equal(c.fields.n_threads.offset, 28);
  assert.equal(c.fields.flash_attn_type.offset, 52);
  assert.equal(c.fields.cb_eval.offset, 88);
  assert.equal(c.fields.type_k.offset, 104);
  assert.equal(c.fields.type_v.offset, 108);
  assert.equal(c.fields.embeddings.offset, 128);
  assert.equal(c.fields.kv_unified.offset, 133);
  assert.equal(c.fields.samplers.offset, 136);
  assert.equal(c.fields.ctx_other.offset, 152);
  const m = LAYOUTS.modelParams;
  assert.equal(m.size, 80);
  assert.equal(m.fields.n_gpu_layers.offset, 16);
  assert.equal(m.fields.main_gpu.offset, 32);
  assert.equal(m.fields.tensor_split.offset, 40);
  assert.equal(m.fields.vocab_only.offset, 72);
  assert.equal(m.fields.load_mtp.offset, 77);
  const q = LAYOUTS.quantizeParams;
  assert.equal(q.size, 64);
  assert.equal(q.fields.allow_requantize.offset, 16);
  assert.equal(q.fields.dry_run.offset, 21);
  assert.equal(q.fields.imatrix.offset, 24);
  assert.equal(q.fields.max_buf_size.offset, 56);
  const b = LAYOUTS.batch;
  assert.equal(b.size, 56);
  assert.equal(b.fields.token.offset, 8);
  assert.equal(b.fields.logits.offset, 48);
});

refTest("the libraries load and return the defaults llama.h documents", () => {
  // loadReference() throws if any default read through the layouts is off.
  const ref = loadReference();
  assert.match(ref.systemInfo, /CPU/);
});

/** llama.cpp's tokenizer test cases: inputs split by a marker line, outputs one line each. */
async function vocabCases(name: string): Promise<{ text: string; ids: number[] }[]> {
  const path = await vocabPath(name);
  const raw = await Deno.readTextFile(`${path}.inp`);
  const sep = "\n__ggml_vocab_test__\n";
  // As tests/test-tokenizer-0.cpp splits it: a trailing separator ends the last case.
  const inputs: string[] = [];
  for (let pos = 0; pos < raw.length;) {
    const next = raw.indexOf(sep, pos);
    inputs.push(raw.slice(pos, next < 0 ? undefined : next));
    pos = next < 0 ? raw.length : next + sep.length;
  }
  const outputs = (await Deno.readTextFile(`${path}.out`)).split("\n");
  if (outputs.at(-1) === "") outputs.pop();
  assert.equal(inputs.length, outputs.length, `${path}.inp/.out disagree on the case count`);
  return inputs.map((text, i) => ({
    text,
    ids: outputs[i]!.trim() === "" ? [] : outputs[i]!.trim().split(" ").map(Number),
  }));
}

Deno.test("vocabPath names llama.cpp's vocabularies and lists them for a wrong name", async () => {
  assert.match(await vocabPath("qwen2"), /\/models\/ggml-vocab-qwen2\.gguf$/);
  await assert.rejects(() => vocabPath("no-such-vocab"), /have: .*llama-spm.*qwen2/);
});

refTest("tokenize matches llama.cpp's qwen2 test cases and detokenize inverts it", async () => {
  const cases = await vocabCases("qwen2");
  assert.equal(cases[0]!.text, "ied 4 ½ months");
  assert.deepEqual(cases[0]!.ids, [1122, 220, 19, 220, 26062, 3951]);
  using model = loadReference().loadModel(await vocabPath("qwen2"), { vocabOnly: true });
  assert.equal(model.nVocab, 151936);
  for (const { text, ids } of cases) {
    const got = model.tokenize(text, { addSpecial: false, parseSpecial: false });
    assert.deepEqual(got, ids, `tokenize(${JSON.stringify(text)})`);
    assert.equal(model.detokenize(got), text, `detokenize(tokenize(${JSON.stringify(text)}))`);
  }
  assert.equal(cases.length > 30, true);
  assert.equal(model.tokenToPiece(26062), "½");
  assert.deepEqual(
    model.tokenize("<|im_start|>hi", { parseSpecial: true }).length,
    2,
    "<|im_start|> is one special token when parsed",
  );
  assert.throws(() => model.logits([1]), /vocabOnly/);
  assert.throws(() => model.tokenToPiece(-1), /outside the vocabulary/);
});

// ---------------------------------------------------------------------------
// A tiny generated `llama` model (F32, no tokenizer: `tokenizer.ggml.model` = "none")
// ---------------------------------------------------------------------------

const H = { nVocab: 80, nEmbd: 64, nFf: 96, nHead: 4, nHeadKv: 2, nLayer: 2, eps: 1e-5 };

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface TinyModel {
  tokenEmbd: Float32Array; // [nVocab, nEmbd]
  outputNorm: Float32Array; // [nEmbd]
  output: Float32Array; // [nVocab, nEmbd]
}

/**
 * Writes a tiny llama model. With `silentLayers` every block's attention
 * output and FFN down projection are zero, so the residual stream is the
 * token embedding and the logits have a closed form.
 */
async function writeTinyLlama(path: string, silentLayers: boolean): Promise<TinyModel> {
  const rand = rng(silentLayers ? 1 : 2);
  const mat = (rows: number, cols: number, zero = false) =>
    Float32Array.from({ length: rows * cols }, () => zero ? 0 : (rand() * 2 - 1) / Math.sqrt(cols));
  const norm = (n: number) => Float32Array.from({ length: n }, () => 0.5 + rand());
  const headDim = H.nEmbd / H.nHead;
  const kvDim = headDim * H.nHeadKv;
  const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
  const add = (name: string, data: Float32Array, shape: number[]) =>
    tensors.push({ name, shape, data });
  const model: TinyModel = {
    tokenEmbd: mat(H.nVocab, H.nEmbd),
    outputNorm: norm(H.nEmbd),
    output: mat(H.nVocab, H.nEmbd),
  };
  add(tensorName(Tensors.tokenEmbd), model.tokenEmbd, [H.nEmbd, H.nVocab]);
  add(tensorName(Tensors.outputNorm), model.outputNorm, [H.nEmbd]);
  add(tensorName(Tensors.output), model.output, [H.nEmbd, H.nVocab]);
  for (let i = 0; i < H.nLayer; i++) {
    add(tensorName(Tensors.attnNorm, i), norm(H.nEmbd), [H.nEmbd]);
    add(tensorName(Tensors.attnQ, i), mat(H.nEmbd, H.nEmbd), [H.nEmbd, H.nEmbd]);
    add(tensorName(Tensors.attnK, i), mat(kvDim, H.nEmbd), [H.nEmbd, kvDim]);
    add(tensorName(Tensors.attnV, i), mat(kvDim, H.nEmbd), [H.nEmbd, kvDim]);
    add(tensorName(Tensors.attnOut, i), mat(H.nEmbd, H.nEmbd, silentLayers), [H.nEmbd, H.nEmbd]);
    add(tensorName(Tensors.ffnNorm, i), norm(H.nEmbd), [H.nEmbd]);
    add(tensorName(Tensors.ffnGate, i), mat(H.nFf, H.nEmbd), [H.nEmbd, H.nFf]);
    add(tensorName(Tensors.ffnUp, i), mat(H.nFf, H.nEmbd), [H.nEmbd, H.nFf]);
    add(tensorName(Tensors.ffnDown, i), mat(H.nEmbd, H.nFf, silentLayers), [H.nFf, H.nEmbd]);
  }
  const k = (key: string) => archKey(key, "llama");
  await writeGgufFile(path, {
    metadata: [
      [Keys.architecture, gv.str("llama")],
      [k(Keys.vocabSize), gv.u32(H.nVocab)],
      [k(Keys.contextLength), gv.u32(256)],
      [k(Keys.embeddingLength), gv.u32(H.nEmbd)],
      [k(Keys.blockCount), gv.u32(H.nLayer)],
      [k(Keys.feedForwardLength), gv.u32(H.nFf)],
      [k(Keys.headCount), gv.u32(H.nHead)],
      [k(Keys.headCountKv), gv.u32(H.nHeadKv)],
      [k(Keys.layerNormRmsEps), gv.f32(H.eps)],
      [k(Keys.ropeFreqBase), gv.f32(10000)],
      [Keys.tokenizerModel, gv.str("none")],
    ],
    tensors: tensors.map((t) => ({
      name: t.name,
      type: GgmlType.F32,
      shape: t.shape,
      data: new Uint8Array(t.data.buffer),
    })),
  });
  return model;
}

/** Logits of a model whose blocks add nothing: output · (rmsnorm(embedding) ⊙ g). */
function closedFormLogits(m: TinyModel, token: number): Float64Array {
  const x = m.tokenEmbd.subarray(token * H.nEmbd, (token + 1) * H.nEmbd);
  const ms = x.reduce((s, v) => s + v * v, 0) / H.nEmbd;
  const scale = 1 / Math.sqrt(ms + H.eps);
  const y = Float64Array.from(x, (v, i) => v * scale * m.outputNorm[i]!);
  return Float64Array.from({ length: H.nVocab }, (_, v) => {
    let s = 0;
    for (let i = 0; i < H.nEmbd; i++) s += m.output[v * H.nEmbd + i]! * y[i]!;
    return s;
  });
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

function argmax(v: Float32Array): number {
  return v.indexOf(Math.max(...v));
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "odmoe-llama-ref-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

refTest(
  "logits of a model with silent layers equal the closed form at every position",
  async () => {
    await withTempDir(async (dir) => {
      const path = `${dir}/silent.gguf`;
      const weights = await writeTinyLlama(path, true);
      using model = loadReference().loadModel(path);
      assert.equal(model.nVocab, H.nVocab);
      assert.equal(model.nEmbd, H.nEmbd);
      assert.equal(model.nLayer, H.nLayer);
      const tokens = [3, 17, 42, 5, 79, 0];
      const logits = model.logits(tokens);
      assert.equal(logits.length, tokens.length);
      tokens.forEach((t, i) => {
        const want = closedFormLogits(weights, t);
        assert.ok(
          maxAbsDiff(logits[i]!, want) < 1e-4,
          `position ${i}: ${maxAbsDiff(logits[i]!, want)}`,
        );
      });
    });
  },
);

refTest("logits and greedy agree with each other on a random model", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/random.gguf`;
    await writeTinyLlama(path, false);
    using model = loadReference().loadModel(path);
    const prompt = [1, 9, 33, 60, 2];
    const full = model.logits(prompt);
    // A fresh context per call: the same call gives the same bits.
    assert.deepEqual(model.logits(prompt), full);
    // Causal: a prefix's logits are the full sequence's at the same positions.
    const prefix = model.logits(prompt.slice(0, 3));
    for (let i = 0; i < 3; i++) assert.ok(maxAbsDiff(prefix[i]!, full[i]!) < 1e-4);
    // The layers matter: not the closed form of the silent model.
    assert.ok(maxAbsDiff(full[0]!, full[1]!) > 1e-3);

    const nGen = 6;
    const g = model.greedy(prompt, nGen);
    assert.equal(g.tokens.length, nGen);
    assert.equal(g.logits.length, nGen);
    assert.ok(maxAbsDiff(g.logits[0]!, full[prompt.length - 1]!) < 1e-4);
    g.tokens.forEach((t, i) => assert.equal(t, argmax(g.logits[i]!), `step ${i}`));
    // One token at a time equals one batch over prompt + generated tokens.
    const batch = model.logits([...prompt, ...g.tokens.slice(0, -1)]);
    for (let i = 0; i < nGen; i++) {
      assert.ok(maxAbsDiff(g.logits[i]!, batch[prompt.length - 1 + i]!) < 1e-4, `step ${i}`);
    }
    assert.throws(() => model.logits([H.nVocab]), /outside the vocabulary/);
    assert.throws(() => model.greedy([], 1), /at least one token/);
  });
});

refTest("quantize writes Q8_0 and an all-F32 dequantised copy that load and run", async () => {
  await withTempDir(async (dir) => {
    const ref = loadReference();
    const f32 = `${dir}/m-f32.gguf`;
    const q8 = `${dir}/m-q8_0.gguf`;
    const back = `${dir}/m-q8_0-f32.gguf`;
    await writeTinyLlama(f32, false);
    ref.quantize(f32, q8, "MOSTLY_Q8_0");
    assert.throws(() => ref.quantize(q8, back, "ALL_F32"), /failed with code/);
    ref.quantize(q8, back, "ALL_F32", { allowRequantize: true });
    const types = (p: string) =>
      new Map(readGgufModel(p).tensors.map((t) => [t.name, t.type.name]));
    assert.equal(types(q8).get("blk.0.attn_q.weight"), "Q8_0");
    assert.equal(types(q8).get("blk.0.attn_norm.weight"), "F32");
    assert.ok([...types(back).values()].every((t) => t === "F32"));

    const prompt = [4, 8, 15, 16, 23, 42];
    const run = (p: string) => {
      using m: RefModel = ref.loadModel(p);
      return m.logits(prompt);
    };
    const [a, b, c] = [run(f32), run(q8), run(back)];
    for (let i = 0; i < prompt.length; i++) {
      // Q8_0 weights move the logits a little, not a lot.
      assert.ok(maxAbsDiff(a[i]!, c[i]!) < 0.05, `F32 vs dequantised, position ${i}`);
      assert.ok(maxAbsDiff(b[i]!, c[i]!) < 0.05, `Q8_0 vs dequantised, position ${i}`);
    }
    assert.ok(maxAbsDiff(a[0]!, c[0]!) > 0, "quantisation changed something");
    assert.throws(
      () => ref.quantize(`${dir}/missing.gguf`, `${dir}/x.gguf`, "MOSTLY_Q8_0"),
      /failed with code 1.*missing\.gguf/s,
    );
  });
});
