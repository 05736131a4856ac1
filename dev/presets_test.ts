import nodeAssert from "node:assert/strict";

const assert = (cond: boolean, message: string) => nodeAssert.ok(cond, message);
const assertEquals = (a: unknown, b: unknown, message?: string) =>
  nodeAssert.deepStrictEqual(a, b, message);
import { countParams, presetOptions, SHAPE_PRESET_NAMES, SHAPE_PRESETS } from "./presets.ts";
import { fixtureSpec } from "./fixtures.ts";
import { Keys } from "../src/gguf/names.ts";
import { syntheticModel, syntheticModelLazy } from "../src/model/synthetic.ts";
import { serializeGguf, writeGgufFileLazy } from "../src/gguf/writer.ts";
import { loadReference, referenceUnavailableReason } from "./ref/llama_cpp.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";

// Total parameters as the model cards publish them (billions).
const PUBLISHED: Record<string, number> = {
  "qwen3-30b-a3b": 30.5,
  "qwen3-235b-a22b": 235,
  "mixtral-8x7b": 46.7,
  "qwen2-57b-a14b": 57.4,
  "deepseek-v3": 671,
  "kimi-k2": 1040,
  "gpt-oss-20b": 20.9,
  "gpt-oss-120b": 116.8,
  "olmoe-1b-7b": 6.9,
  "qwen3-next-80b-a3b": 80,
  "qwen3.5-35b-a3b": 35,
};

Deno.test("every preset at full depth has its model card's parameter count (within 1.5%)", () => {
  assertEquals(new Set(SHAPE_PRESET_NAMES), new Set(Object.keys(PUBLISHED)));
  for (const name of SHAPE_PRESET_NAMES) {
    const billions = countParams(SHAPE_PRESETS[name].options).total / 1e9;
    const want = PUBLISHED[name]!;
    assert(
      Math.abs(billions - want) / want < 0.015,
      `${name}: ${billions.toFixed(2)}B parameters, the model card says ${want}B`,
    );
  }
});

Deno.test("--layers keeps the first N blocks; deepseek2 keeps a routed block", () => {
  assertEquals(presetOptions("qwen3-30b-a3b", 4).nLayer, 4);
  const v3 = presetOptions("deepseek-v3", 4);
  assertEquals([v3.nLayer, v3.nLayerDenseLead], [4, 3]);
  const one = presetOptions("deepseek-v3", 1);
  assertEquals([one.nLayer, one.nLayerDenseLead], [1, 0]);
  let message = "";
  try {
    presetOptions("qwen3-30b-a3b", 49);
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.includes("1…48"), message);
});

Deno.test("preset vocabularies have the model's exact size and pre-tokenizer", async () => {
  const want: Record<string, [number, string | undefined]> = {
    "qwen3-30b-a3b": [151_936, "qwen2"],
    "mixtral-8x7b": [32_000, "default"],
    "deepseek-v3": [129_280, "deepseek-v3"],
    "kimi-k2": [163_840, "kimi-k2"],
    "gpt-oss-20b": [201_088, "gpt-4o"],
    "olmoe-1b-7b": [50_304, "olmo"],
  };
  for (const [name, [size, pre]] of Object.entries(want)) {
    const spec = await fixtureSpec(presetOptions(name));
    const entries = new Map(spec.vocab!.entries);
    const tokens = entries.get(Keys.tokenizerTokens)!;
    const types = entries.get(Keys.tokenizerTokenType)!;
    assertEquals(spec.vocab!.nTokens, size, name);
    assertEquals((tokens.value as string[]).length, size, `${name} tokens`);
    assertEquals((types.value as ArrayLike<number>).length, size, `${name} token types`);
    assertEquals(entries.get(Keys.tokenizerPre)?.value, pre, `${name} pre-tokenizer`);
  }
});

Deno.test("the lazy writer writes the same bytes as the in-memory one", async () => {
  const spec = await fixtureSpec({ arch: "gpt-oss", shape: "a", type: "F16" });
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeGgufFileLazy(path, syntheticModelLazy(spec));
    assertEquals(await Deno.readFile(path), serializeGguf(syntheticModel(spec)));
  } finally {
    await Deno.remove(path);
  }
});

Deno.test({
  name: "llama.cpp loads each made preset vocabulary and tokenises text as od-moe does",
  ignore: referenceUnavailableReason() !== null,
  sanitizeResources: false,
  async fn() {
    const text = "Hello world! Real MoE shapes: 128 experts, top-8 <|pad_3|> ünïcödé 12345.";
    // the vocabularies made here (padded, cut or relabelled); llama.cpp's own
    // bundled ones are compared in tests/tokenizer_parity_test.ts
    for (const name of ["deepseek-v3", "kimi-k2", "gpt-oss-20b", "olmoe-1b-7b"] as const) {
      // the preset's vocabulary and hyperparameters, at a tiny width and depth
      const opts = presetOptions(name, name.startsWith("gpt-oss") ? 2 : 1);
      const mla = opts.arch === "deepseek2";
      const spec = await fixtureSpec({
        ...opts,
        nEmbd: 64,
        nHead: 2,
        nHeadKv: opts.arch === "olmoe" ? 2 : 1,
        headDim: 32,
        nFfExp: 32,
        nExpert: 8,
        nExpertUsed: 2,
        ...(opts.arch === "qwen2moe" ? { nFfShexp: 32 } : {}),
        ...(mla
          ? {
            nFf: 32,
            qLoraRank: 32,
            kvLoraRank: 32,
            qkNopeDim: 16,
            qkRopeDim: 16,
            vHeadDim: 16,
            nExpertGroups: opts.nExpertGroups === 1 ? 1 : 4,
            nExpertGroupsUsed: opts.nExpertGroups === 1 ? 1 : 2,
          }
          : {}),
      });
      const path = await Deno.makeTempFile({ suffix: ".gguf" });
      try {
        await writeGgufFileLazy(path, syntheticModelLazy(spec));
        const ref = loadReference().loadModel(path, { vocabOnly: true });
        try {
          assertEquals(
            ref.nVocab,
            SHAPE_PRESETS[name].options.vocabSize,
            `${name}: llama.cpp's vocabulary size`,
          );
          const ours = loadTokenizer(path).encode(text, { addSpecial: true, parseSpecial: true });
          assertEquals(
            ours,
            ref.tokenize(text, { addSpecial: true, parseSpecial: true }),
            `${name}: tokens of ${JSON.stringify(text)}`,
          );
        } finally {
          ref.close();
        }
      } finally {
        await Deno.remove(path);
      }
    }
  },
});
