/**
 * The next-layer lookahead on DeepSeek-V3-style routing (sigmoid router, a
 * selection bias `exp_probs_b`, group-limited top-k): ranking each target
 * layer as its router selects predicts the routes it will take better than
 * ranking the raw router logits, on held-out tokens of a generated model.
 */

import assert from "node:assert/strict";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { LookaheadPredictor } from "../src/predictor/lookahead.ts";
import { collectRoutingData, syntheticPrompts } from "../src/training/collect.ts";
import { evaluateGpuPredictor, type RecallFigures } from "../src/training/evaluate.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { Rng } from "../src/util/rng.ts";
import { gpuTest } from "../dev/gpu.ts";

/** DeepSeek-V3's routing at small width: 32 experts in 4 groups of which 2 are kept, top-4. */
export const V3_ROUTING = {
  arch: "deepseek2",
  shape: "b",
  type: "F16",
  nLayer: 4,
  nExpert: 32,
  nExpertUsed: 4,
  nExpertGroups: 4,
  nExpertGroupsUsed: 2,
} as const;

gpuTest({
  name: "lookahead on V3-style routing: selection bias and group limit raise held-out recall",
  sanitizeResources: false,
  async fn(gpu) {
    const model = await loadModel({
      model: await fixtureModel(V3_ROUTING),
      gpu,
      nCtx: 64,
      maxBatch: 16,
    });
    try {
      const c = model.config;
      assert.equal(c.gating, "sigmoid");
      const data = await collectRoutingData(model, syntheticPrompts(12, 48, c.nVocab, 21), {
        numSamples: 500,
        newTokens: 0,
      });
      const recall = (routerSelection: boolean) =>
        evaluateGpuPredictor(
          gpu,
          data,
          (src) =>
            LookaheadPredictor.create(gpu, model.weights, src, {
              ...c,
              depth: 2,
              routerSelection,
            }),
        );
      const before = await recall(false);
      const after = await recall(true);
      const line = (f: RecallFigures) => f.recall.map((x) => x.toFixed(3)).join(" / ");
      console.log(
        `V3-style routing (${c.nExpert} experts, top-${c.nExpertUsed}, ${c.nExpertGroups} groups ` +
          `keep ${c.nExpertGroupsUsed}, exp_probs_b), ${data.nSamples} held-out tokens: ` +
          `lookahead recall@${after.k} at distance 1 / 2: logits only ${line(before)}, ` +
          `as the router selects ${line(after)}`,
      );
      for (let d = 0; d < 2; d++) {
        assert.ok(
          after.recall[d]! > before.recall[d]! + 0.02,
          `distance ${d + 1}: ${after.recall[d]} is not above ${before.recall[d]}`,
        );
      }
    } finally {
      model.close();
    }
  },
});

gpuTest({
  name: "lookahead prefetch on V3-style routing: the same tokens at 25%, fewer stalls than without",
  sanitizeResources: false,
  async fn(gpu) {
    const path = await fixtureModel(V3_ROUTING);
    const total = expertLayout(readGgufModel(path)).reduce(
      (s, l) => s + l.nExpert * l.bytesPerExpert,
      0,
    );
    const rng = new Rng(31);
    const prompt = Array.from({ length: 8 }, () => rng.int(3000));
    const run = async (cacheSizeGB: number, enablePrefetch: boolean) => {
      const model = await loadModel({
        model: path,
        gpu,
        nCtx: 64,
        maxBatch: 1,
        cacheSizeGB,
        enablePrefetch,
      });
      try {
        const r = await generate(model, prompt, { maxTokens: 16 });
        return { tokens: r.tokens, stalls: r.stats.stalls };
      } finally {
        model.close();
      }
    };
    const resident = await run(4, false);
    const budget = (0.25 * total) / 1024 ** 3;
    const off = await run(budget, false);
    const on = await run(budget, true);
    assert.deepEqual(off.tokens, resident.tokens);
    assert.deepEqual(on.tokens, resident.tokens);
    console.log(
      `V3-style routing at a 25% budget: ${off.stalls} stalls without prefetch, ${on.stalls} with the lookahead`,
    );
    assert.ok(on.stalls < off.stalls, `prefetch ${on.stalls} stalls ≥ ${off.stalls} without`);
  },
});
