/**
 * DeepSeek-V2/V3 and Kimi-K2 (`deepseek2`) against llama.cpp (PARITY.md): on
 * generated models of both shapes — V2-Lite's (no q compression, softmax
 * router, 2 shared experts) and V3's (q LoRA, sigmoid router with the
 * selection bias, expert groups, renormalised and scaled weights) — each
 * with a dense leading block, latent attention and YaRN, in F32, F16, Q8_0
 * and Q4_K_M, the 32 greedy tokens after a 16-token prompt are llama.cpp's
 * and every step's logits are within 1% of its range (the exact reference:
 * llama.cpp on its own all-F32 copy of a quantised file). Also: the two
 * other corners of {groups, selection bias}, a prompt long enough for the
 * batched kernels, the same tokens at expert budgets 0, 25% and 100%, a
 * broken engine caught, the compressed cache's size, and what `inspect` and
 * the converter's plan say about the file.
 */

import assert from "node:assert/strict";
import { loadModel } from "../src/model/model.ts";
import { GgufMetadata, readGgufModel } from "../src/gguf/reader.ts";
import { archSpec } from "../src/model/registry.ts";
import { kvCacheBytesPerToken, type ModelConfig } from "../src/model/config.ts";
import { planConversion } from "../src/convert/plan.ts";
import { inspectReport } from "../scripts/inspect.ts";
import { Rng } from "../src/util/rng.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import {
  DEEPSEEK2_PRESETS,
  fixtureModel,
  type FixtureOptions,
  type FixtureShape,
  type FixtureType,
} from "../dev/fixtures.ts";
import {
  checkBudgets,
  device,
  type ParityResult,
  parityRun,
  type ParityRunOptions,
  parityUnavailableReason,
} from "./_parity.ts";
import { gpuTest } from "../dev/gpu.ts";

const TYPES: FixtureType[] = ["F32", "F16", "Q8_0", "Q4_K_M"];
const SHAPES: FixtureShape[] = ["a", "b"];

const skip = parityUnavailableReason();
if (skip) console.log(`skipping deepseek2 parity tests: ${skip}`);

const results: (ParityResult & { label: string })[] = [];

async function parity(opts: FixtureOptions, label: string, seed: number, o: ParityRunOptions = {}) {
  results.push({ ...(await parityRun(opts, label, seed, o)), label });
}

for (const shape of SHAPES) {
  Deno.test({
    name: `deepseek2 parity: shape ${shape} (${
      shape === "a" ? "V2-Lite" : "V3"
    }), F32/F16/Q8_0/Q4_K_M, 32 greedy tokens = llama.cpp`,
    ignore: skip !== null,
    sanitizeResources: false,
    async fn() {
      for (const [i, type] of TYPES.entries()) {
        await parity({ arch: "deepseek2", shape, type }, `deepseek2/${shape}/${type}`, i + 1);
      }
    },
  });
}

Deno.test({
  name:
    "deepseek2 parity: sigmoid + selection bias without groups (Kimi-K2), groups without the bias",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    await parity(
      { arch: "deepseek2", shape: "b", type: "F16", nExpertGroups: 1, nExpertGroupsUsed: 1 },
      "deepseek2/b-no-groups/F16",
      5,
    );
    await parity(
      { arch: "deepseek2", shape: "b", type: "Q8_0", expProbsBias: false },
      "deepseek2/b-no-bias/Q8_0",
      6,
    );
  },
});

Deno.test({
  name: "deepseek2 parity: a 40-token prompt in one batch (the tiled matmul_id path) = llama.cpp",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    for (const shape of SHAPES) {
      await parity(
        { arch: "deepseek2", shape, type: "Q4_K_M" },
        `deepseek2/${shape}/Q4_K_M prompt 40`,
        7,
        { maxBatch: 64, promptLength: 40, generate: 8 },
      );
    }
  },
});

gpuTest({
  name: "deepseek2: the same tokens at expert budgets 0, 25% and 100%",
  sanitizeResources: false,
  async fn() {
    for (const opts of [{ shape: "b", type: "Q4_K_M" }, { shape: "a", type: "F16" }] as const) {
      const path = await fixtureModel({ arch: "deepseek2", ...opts });
      const rng = new Rng(11);
      const prompt = Array.from({ length: 8 }, () => rng.int(3000));
      await checkBudgets(path, [0, 0.25, 1], {
        prompt,
        maxTokens: 12,
        label: `deepseek2/${opts.shape}/${opts.type}`,
      });
    }
  },
});

Deno.test({
  name: "deepseek2 parity: a deliberately broken engine is caught",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const broken: [string, Partial<ModelConfig>][] = [
      ["no expert groups", { nExpertGroups: 1 }],
      ["no routed scaling", { expertWeightsScale: 1 }],
      ["softmax router", { gating: "softmax" }],
      ["no YaRN mscale² in the scores", { attnScale: 1 / Math.sqrt(96) }],
    ];
    for (const [what, override] of broken) {
      await assert.rejects(
        () => parity({ arch: "deepseek2", shape: "b", type: "F32" }, what, 1, { override }),
        /logit diff|tokens differ/,
        what,
      );
    }
  },
});

Deno.test({
  name:
    "mistral4 (Mistral-Small-4) parity: the deepseek2 graph under its own name = llama.cpp; same tokens at budgets 0/25/100%",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const opts = { arch: "deepseek2", shape: "b", type: "Q8_0", archName: "mistral4" } as const;
    await parity(opts, "mistral4/b/Q8_0", 8, {
      check: (m) => {
        assert.equal(m.config.arch, "mistral4");
        assert.equal(m.config.mla?.qLoraRank, 256);
      },
    });
    const rng = new Rng(14);
    await checkBudgets(await fixtureModel(opts), [0, 0.25, 1], {
      prompt: Array.from({ length: 8 }, () => rng.int(3000)),
      maxTokens: 12,
      label: "mistral4/b/Q8_0",
    });
  },
});

Deno.test({
  name:
    "deepseek2 with a multi-token-prediction block (GLM-4.7-Flash): skipped as llama.cpp does, tokens = llama.cpp",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const opts = { arch: "deepseek2", shape: "a", type: "F16", nNextn: 1 } as const;
    const file = readGgufModel(await fixtureModel(opts));
    assert.equal(file.metadata.number("deepseek2.block_count"), 4);
    assert.ok(file.tensorMap.has("blk.3.nextn.eh_proj.weight"));
    assert.ok(file.tensorMap.has("blk.3.ffn_up_exps.weight"));
    await parity(opts, "deepseek2/a-mtp/F16", 9, {
      check: (m) => {
        assert.equal(m.config.nLayer, 3, "the trunk has block_count − nextn_predict_layers blocks");
        assert.ok(
          !archSpec("deepseek2").tensorPlan(m.config).some((e) => e.name.startsWith("blk.3.")),
          "nothing of the MTP block is planned",
        );
        assert.deepEqual(m.pool.source.layers.map((l) => l.layer), [1, 2], "MTP experts left out");
      },
    });
    const rng = new Rng(12);
    await checkBudgets(await fixtureModel(opts), [0, 0.25, 1], {
      prompt: Array.from({ length: 8 }, () => rng.int(3000)),
      maxTokens: 12,
      label: "deepseek2/a-mtp/F16",
    });
    // more MTP blocks than the file has blocks: a clear error
    const entries = new Map(file.metadata.entries);
    entries.set("deepseek2.nextn_predict_layers", entries.get("deepseek2.block_count")!);
    assert.throws(
      () => archSpec("deepseek2").readConfig(new GgufMetadata(entries, "x.gguf")),
      /nextn_predict_layers 4 must be an integer in 0…block_count − 1 \(block_count 4\)/,
    );
  },
});

Deno.test({
  name:
    "kimi-k2-shaped file (64 heads, q/KV LoRA, 384 experts top-8, one shared, first block dense, " +
    "kimi-k2 tokenizer) = llama.cpp; the same tokens at expert budgets 0, 25% and 100%",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const opts = { ...DEEPSEEK2_PRESETS["kimi-k2-narrow"], type: "F16" } as const;
    const path = await fixtureModel(opts);
    const tok = loadTokenizer(path);
    assert.equal(tok.pre, "kimi-k2");
    {
      using ref = loadReference().loadModel(path, { vocabOnly: true });
      for (const text of ["Kimi 你好世界 HelloWorld 12345", "e\u0301cole ÉCOLE 2024年 🚀"]) {
        assert.deepEqual(tok.encode(text), ref.tokenize(text), text);
      }
    }
    await parity(opts, "kimi-k2-narrow/F16", 10, {
      check: (m) => {
        const c = m.config;
        assert.deepEqual(
          [c.nHead, c.nExpert, c.nExpertUsed, c.nLayerDenseLead, c.gating, c.nFfShexp],
          [64, 384, 8, 1, "sigmoid", 32],
        );
        assert.deepEqual(c.mla, {
          qLoraRank: 96,
          kvLoraRank: 64,
          nopeDim: 16,
          ropeDim: 8,
          vHeadDim: 16,
        });
      },
    });
    const rng = new Rng(13);
    await checkBudgets(path, [0, 0.25, 1], {
      prompt: Array.from({ length: 8 }, () => rng.int(3000)),
      maxTokens: 12,
      label: "kimi-k2-narrow/F16",
    });
  },
});

/** Kimi-K2 (moonshotai/Kimi-K2-Instruct config.json): the attention shapes that size its cache. */
const KIMI_K2 = {
  nLayer: 61,
  nHead: 64,
  nHeadKv: 1,
  headDimK: 128 + 64, // qk_nope_head_dim + qk_rope_head_dim
  headDimV: 128, // v_head_dim
  mla: { qLoraRank: 1536, kvLoraRank: 512, nopeDim: 128, ropeDim: 64, vHeadDim: 128 },
} as const;

gpuTest({
  name: "deepseek2: the KV cache holds the latent and the rope part, not per-head K/V",
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "deepseek2", shape: "b", type: "F16" });
    const nCtx = 64;
    const model = await loadModel({ model: path, gpu: await device(), nCtx, maxBatch: 4 });
    try {
      const c = model.config;
      const m = c.mla!;
      const s = model.transformer.state;
      for (let l = 0; l < c.nLayer; l++) {
        assert.equal(s.kCache[l]!.size, nCtx * (m.kvLoraRank + m.ropeDim) * 4, `layer ${l}`);
        assert.equal(s.vCache[l], s.kCache[l], "the value is a prefix of the cached row");
      }
      assert.equal(s.k, undefined);
      const perToken = s.kCache.reduce((a, b) => a + b.size, 0) / nCtx;
      assert.equal(perToken, kvCacheBytesPerToken(c));
    } finally {
      model.close();
    }
    const mla = kvCacheBytesPerToken(KIMI_K2);
    const naive = kvCacheBytesPerToken(KIMI_K2, { naive: true });
    assert.equal(mla, 61 * (512 + 64) * 4);
    assert.equal(naive, 61 * 64 * (192 + 128) * 4);
    const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    console.log(
      `Kimi-K2 (61 layers, 64 heads, kv_lora 512, rope 64, nope 128, v 128): KV cache per token ` +
        `of context ${kib(mla)} (f32; ${kib(mla / 2)} in f16) vs ${kib(naive)} for full per-head ` +
        `K/V (${kib(naive / 2)} in f16): ${(naive / mla).toFixed(1)}× smaller; at 128k tokens ` +
        `${(mla * 131072 / 2 ** 30).toFixed(1)} GiB vs ${
          (naive * 131072 / 2 ** 30).toFixed(0)
        } GiB`,
    );
  },
});

Deno.test("deepseek2: inspect and the converter's plan keep shared experts and dense blocks in the base", async () => {
  const path = await fixtureModel({ arch: "deepseek2", shape: "b", type: "Q4_K_M" });
  const file = readGgufModel(path);
  const report = inspectReport(file);
  // block 0 is dense: routed experts live in blocks 1 and 2 only
  assert.deepEqual(report.expert_layout.map((l) => [l.layer, l.experts]), [[1, 8], [2, 8]]);
  for (const l of report.expert_layout) {
    assert.deepEqual(
      l.slices.map((s) => s.tensor.split(".")[2]),
      ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"],
    );
  }
  const plan = planConversion(file);
  assert.equal(plan.supported, true);
  const base = new Set(plan.base.tensors.map((t) => t.name));
  for (
    const name of [
      "blk.0.ffn_gate.weight",
      "blk.0.ffn_down.weight",
      "blk.1.ffn_gate_shexp.weight",
      "blk.2.ffn_down_shexp.weight",
      "blk.1.exp_probs_b.bias",
      "blk.1.attn_k_b.weight",
      "blk.2.attn_kv_a_mqa.weight",
    ]
  ) assert.ok(base.has(name), `${name} is a base tensor`);
  assert.ok(![...base].some((n) => n.includes("_exps.")), "no routed expert in the base");
  assert.deepEqual(plan.experts.layers.map((l) => [l.layer, l.nExpert]), [[1, 8], [2, 8]]);
  assert.equal(plan.experts.fileCount, 16);
  // every tensor of the file is in the plan's base or its expert files
  const planned = base.size + plan.experts.layers.reduce((s, l) => s + l.tensors.length, 0);
  assert.equal(planned, file.tensors.length);
  assert.ok(plan.tensorPlan!.every((e) => file.tensorMap.has(e.name) || e.optional));
});

Deno.test("deepseek2: an old conversion with an unsplit attn_kv_b is refused, saying what to do", async () => {
  const path = await fixtureModel({ arch: "deepseek2", shape: "a", type: "F16" });
  const entries = new Map(readGgufModel(path).metadata.entries);
  entries.delete("deepseek2.attention.key_length_mla");
  entries.delete("deepseek2.attention.value_length_mla");
  assert.throws(
    () => archSpec("deepseek2").readConfig(new GgufMetadata(entries, path)),
    /unsplit attn_kv_b.*reconvert/,
  );
});

Deno.test({
  name: "deepseek2 parity: summary",
  ignore: skip !== null,
  fn() {
    console.log(
      "\n" +
        results.map((r) =>
          `${r.label.padEnd(34)} ${r.tokens} tokens match, max |Δlogit| ${
            (r.maxRel * 100).toFixed(5)
          }% of range, smallest top-2 gap ${(r.worst * 100).toFixed(2)}%`
        ).join("\n"),
    );
  },
});
