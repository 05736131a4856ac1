/**
 * GPT-OSS (`gpt-oss`) and OLMoE (`olmoe`) against llama.cpp (PARITY.md): the
 * 32 greedy tokens after a 16-token prompt are llama.cpp's and every step's
 * logits are within 1% of its range, on generated models of both shapes —
 * GPT-OSS with MXFP4 experts (llama.cpp's `MXFP4_MOE`: Q8_0 elsewhere; and
 * the same experts with F16 elsewhere) and in F32; OLMoE in F32, F16, Q8_0
 * and Q4_K_M. Quantised files are compared with llama.cpp on its own all-F32
 * copy (the exact reference). GPT-OSS's prompts are longer than its sliding
 * window (8 and 12), and a 40-token prompt runs as one batch. Also: the same
 * tokens at expert budgets 0, 25% and 100% (GPT-OSS's expert biases stream
 * with their expert), and a broken engine caught.
 */

import assert from "node:assert/strict";
import type { Model } from "../src/model/model.ts";
import type { ModelConfig } from "../src/model/config.ts";
import { Rng } from "../src/util/rng.ts";
import {
  fixtureModel,
  type FixtureOptions,
  type FixtureShape,
  type FixtureType,
} from "../dev/fixtures.ts";
import {
  checkBudgets,
  type ParityResult,
  parityRun,
  type ParityRunOptions,
  parityUnavailableReason,
} from "./_parity.ts";
import { gpuTest } from "../dev/gpu.ts";

const SHAPES: FixtureShape[] = ["a", "b"];
const TYPES: Record<"gpt-oss" | "olmoe", FixtureType[]> = {
  "gpt-oss": ["F32", "MXFP4_MOE", "MXFP4_F16"],
  olmoe: ["F32", "F16", "Q8_0", "Q4_K_M"],
};

const skip = parityUnavailableReason();
if (skip) console.log(`skipping gpt-oss/olmoe parity tests: ${skip}`);

const results: (ParityResult & { label: string })[] = [];

async function parity(opts: FixtureOptions, label: string, seed: number, o: ParityRunOptions = {}) {
  const check = (model: Model) => {
    if (opts.arch !== "gpt-oss") return;
    // the prompt must reach past the sliding window for the window to matter
    const window = Math.max(...model.config.windows!);
    assert.ok((o.promptLength ?? 16) > window, `prompt within the window ${window}`);
  };
  results.push({ ...(await parityRun(opts, label, seed, { ...o, check })), label });
}

for (const arch of ["gpt-oss", "olmoe"] as const) {
  for (const shape of SHAPES) {
    Deno.test({
      name: `${arch} parity: shape ${shape}, ${
        TYPES[arch].join("/")
      }, 32 greedy tokens = llama.cpp`,
      ignore: skip !== null,
      sanitizeResources: false,
      async fn() {
        for (const [i, type] of TYPES[arch].entries()) {
          await parity({ arch, shape, type }, `${arch}/${shape}/${type}`, i + 1);
        }
      },
    });
  }
}

Deno.test({
  name:
    "gpt-oss/olmoe parity: a 40-token prompt in one batch (past the window; the many-token matmul and attention kernels)",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    for (const shape of SHAPES) {
      await parity(
        { arch: "gpt-oss", shape, type: "MXFP4_MOE" },
        `gpt-oss/${shape}/MXFP4_MOE prompt 40`,
        7,
        { maxBatch: 64, promptLength: 40, generate: 8 },
      );
    }
    await parity({ arch: "olmoe", shape: "b", type: "Q4_K_M" }, "olmoe/b/Q4_K_M prompt 40", 7, {
      maxBatch: 64,
      promptLength: 40,
      generate: 8,
    });
  },
});

gpuTest({
  name: "gpt-oss/olmoe: the same tokens at expert budgets 0, 25% and 100%",
  sanitizeResources: false,
  async fn() {
    const cases: FixtureOptions[] = [
      { arch: "gpt-oss", shape: "b", type: "MXFP4_MOE" },
      { arch: "gpt-oss", shape: "a", type: "MXFP4_F16" },
      { arch: "olmoe", shape: "b", type: "Q4_K_M" },
    ];
    for (const opts of cases) {
      const path = await fixtureModel(opts);
      const rng = new Rng(11);
      const prompt = Array.from({ length: 16 }, () => rng.int(3000));
      await checkBudgets(path, [0, 0.25, 1], {
        prompt,
        maxTokens: 12,
        label: `${opts.arch}/${opts.shape}/${opts.type}`,
      });
    }
  },
});

Deno.test({
  name: "gpt-oss/olmoe parity: a deliberately broken engine is caught",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const broken: [FixtureOptions, string, Partial<ModelConfig>][] = [
      [{ arch: "gpt-oss", shape: "b" }, "no sliding window", { windows: [0, 0, 0, 0] }],
      [{ arch: "gpt-oss", shape: "b" }, "plain SwiGLU", { expertAct: "swiglu" }],
      [{ arch: "gpt-oss", shape: "b" }, "softmax over all experts", { gating: "softmax" }],
      [{ arch: "gpt-oss", shape: "a" }, "no YaRN", { yarnExtFactor: 0, ropeFreqScale: 1 }],
      [{ arch: "olmoe", shape: "a" }, "renormalised top-k", { normTopK: true }],
      [{ arch: "olmoe", shape: "a" }, "no q/k norm", { qkNorm: "none" }],
    ];
    for (const [opts, what, override] of broken) {
      await assert.rejects(
        () => parity({ ...opts, type: "F32" }, what, 1, { override }),
        /logit diff|tokens differ/,
        `${opts.arch}: ${what}`,
      );
    }
  },
});

Deno.test({
  name: "gpt-oss/olmoe parity: summary",
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
