/**
 * The I-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS)
 * and ternary types (TQ1_0, TQ2_0) against llama.cpp (PARITY.md's exact
 * reference: llama.cpp on its own all-F32 copy of the file), on generated
 * qwen3moe and deepseek2 models of shape `b` (every row a multiple of 256)
 * quantised by llama.cpp with a synthetic importance matrix; and the two
 * dynamic mixes of dev/quant_recipes.ts (~1.6-bit IQ1_S/IQ1_M experts,
 * ~2.5-bit IQ2_XXS/IQ3_XXS experts, attention and shared experts at
 * Q4_K–Q8_0), whose experts have different types for gate/up and down, also
 * streamed at expert budgets 0, 25% and 100% with the same tokens.
 */

import assert from "node:assert/strict";
import { readGgufModel } from "../src/gguf/reader.ts";
import { Rng } from "../src/util/rng.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { fixtureModel, type FixtureType } from "../dev/fixtures.ts";
import { checkBudgets, device, parityRun, parityUnavailableReason } from "./_parity.ts";
import { loadModel, type LoadModelOptions } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { convertGguf } from "../src/convert/convert.ts";
import { inspectReport } from "../scripts/inspect.ts";
import { gpuTest } from "../dev/gpu.ts";

const skip = parityUnavailableReason();
if (skip) console.log(`skipping I-quant parity tests: ${skip}`);

const ARCHS = ["qwen3moe", "deepseek2"] as const;
const TYPES: FixtureType[] = [
  "IQ1_S",
  "IQ1_M",
  "IQ2_XXS",
  "IQ2_XS",
  "IQ2_S",
  "IQ3_XXS",
  "IQ3_S",
  "IQ4_XS",
  "TQ1_0",
  "TQ2_0",
];

for (const arch of ARCHS) {
  for (const [i, type] of TYPES.entries()) {
    Deno.test({
      name: `${arch} parity: ${type}, greedy tokens = llama.cpp`,
      ignore: skip !== null,
      sanitizeResources: false,
      async fn() {
        const opts = { arch, shape: "b", type } as const;
        // The file really holds the type (llama.cpp may keep some tensors at others).
        const types = new Set(
          readGgufModel(await fixtureModel(opts)).tensors.map((t) => t.type.name),
        );
        assert.ok(types.has(type), `${arch}/${type}: the file holds ${[...types].join(", ")}`);
        await parityRun(opts, `${arch}/b/${type}`, 20 + i, { generate: 16 });
      },
    });
  }

  Deno.test({
    name: `${arch} parity: the ~1.6-bit and ~2.5-bit dynamic mixes = llama.cpp, ` +
      `and the same tokens at expert budgets 0, 25% and 100%`,
    ignore: skip !== null,
    sanitizeResources: false,
    async fn() {
      for (const [i, type] of (["IQ1_MIX", "IQ2_MIX"] as const).entries()) {
        const opts = { arch, shape: "b", type } as const;
        const path = await fixtureModel(opts);
        const byName = new Map(readGgufModel(path).tensors.map((t) => [t.name, t.type.name]));
        const layer = arch === "deepseek2" ? 1 : 0; // deepseek2's block 0 is dense
        const [gate, down] = type === "IQ1_MIX" ? ["IQ1_S", "IQ1_M"] : ["IQ2_XXS", "IQ3_XXS"];
        assert.equal(byName.get(`blk.${layer}.ffn_gate_exps.weight`), gate, `${arch}/${type}`);
        assert.equal(byName.get(`blk.${layer}.ffn_down_exps.weight`), down, `${arch}/${type}`);
        await parityRun(opts, `${arch}/b/${type}`, 40 + i);
        const rng = new Rng(13 + i);
        await checkBudgets(path, [0, 0.25, 1], {
          prompt: Array.from({ length: 8 }, () => rng.int(3000)),
          maxTokens: 12,
          label: `${arch}/b/${type}`,
        });
      }
    },
  });
}

gpuTest({
  name: "IQ mixes: inspect shows each expert slice's type; the converter's keep mode carries " +
    "them and serves the GGUF's tokens and logits bit for bit",
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "qwen3moe", shape: "b", type: "IQ1_MIX" });
    const report = inspectReport(readGgufModel(path));
    const slices = report.expert_layout[0]!.slices.map((s) => `${s.tensor}:${s.type}`);
    assert.deepEqual(slices.sort(), [
      "blk.0.ffn_down_exps.weight:IQ1_M",
      "blk.0.ffn_gate_exps.weight:IQ1_S",
      "blk.0.ffn_up_exps.weight:IQ1_S",
    ]);
    const dir = await Deno.makeTempDir();
    try {
      await convertGguf({ input: path, output: `${dir}/keep`, outputDtype: "keep", sync: false });
      const rng = new Rng(5);
      const prompt = Array.from({ length: 8 }, () => rng.int(3000));
      const greedy = async (o: LoadModelOptions) => {
        const model = await loadModel({ ...o, gpu: await device(), nCtx: 64, maxBatch: 8 });
        try {
          const logits = await model.forward(prompt);
          model.reset();
          return { tokens: (await generate(model, prompt, { maxTokens: 8 })).tokens, logits };
        } finally {
          model.close();
        }
      };
      const original = await greedy({ model: path });
      const converted = await greedy({
        baseWeights: `${dir}/keep/base_model`,
        expertDir: `${dir}/keep/experts`,
        cacheSizeGB: 0,
      });
      assert.deepEqual(converted.tokens, original.tokens, "keep + expert dir: tokens");
      assert.deepEqual(converted.logits, original.logits, "keep + expert dir: logits bit for bit");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a file with a type the GPU cannot read is refused naming the tensor, its type and " +
    "the supported types",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const f32 = await fixtureModel({ arch: "qwen3moe", shape: "b", type: "F32" });
    const dir = await Deno.makeTempDir();
    try {
      const path = `${dir}/q1_0-down.gguf`;
      // ggml's Q1_0 (1-bit, blocks of 128) has a CPU dequantiser but no GPU kernel.
      loadReference().quantize(f32, path, "MOSTLY_Q8_0", {
        tensorTypes: [["ffn_down_exps", GgmlType.Q1_0]],
      });
      assert.equal(
        readGgufModel(path).tensors.find((t) => t.name === "blk.0.ffn_down_exps.weight")?.type
          .name,
        "Q1_0",
      );
      await assert.rejects(
        loadModel({ model: path, gpu: await device(), nCtx: 64, maxBatch: 8 }),
        (e: unknown) =>
          e instanceof Error && /blk\.\d+\.ffn_down_exps\.weight/.test(e.message) &&
          /Q1_0/.test(e.message) && /supported: .*IQ2_XXS.*IQ1_S.*IQ1_M.*TQ1_0/.test(e.message),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
