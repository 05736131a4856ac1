/**
 * `--cache-size-gb` is a hard cap (issue 14). For every architecture, with
 * uniform-type and mixed-type (Q4_K_M: Q6_K `ffn_down_exps` in half the
 * layers; an I-quant mix with gate/up and down of different types) files, at budgets of the minimum and 10/25/50/100% of the
 * experts' bytes, with prompt batches whose experts do not fit at once and
 * prefetch on and off: after every pool call the GPU bytes holding experts
 * are at most max(budget, top-k × the largest expert), and the tokens are
 * those of the run with every expert resident.
 */

import assert from "node:assert/strict";
import { gpuTest, requireGpu } from "../dev/gpu.ts";
import { loadModel, type Model } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { Rng } from "../src/util/rng.ts";
import { fixtureModel, type FixtureOptions } from "../dev/fixtures.ts";

const GIB = 1024 ** 3;

/** The experts' bytes in the file and the largest expert's, from the file's tensor table. */
function expertSizes(path: string): { total: number; largest: number; distinctSizes: number } {
  const layout = expertLayout(readGgufModel(path));
  const sizes = layout.map((l) => l.bytesPerExpert);
  return {
    total: layout.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0),
    largest: Math.max(...sizes),
    distinctSizes: new Set(sizes).size,
  };
}

/** Wraps the pool's calls that upload so that each one checks the cap when it returns. */
function watchCap(model: Model, cap: number, label: string): { calls: number } {
  const pool = model.pool;
  const seen = { calls: 0 };
  const check = (what: string) => {
    seen.calls++;
    assert.ok(
      pool.residentBytes <= cap && pool.allocatedBytes <= cap,
      `${label}: after ${what}, ${pool.residentBytes} resident / ${pool.allocatedBytes} ` +
        `allocated expert bytes, over the cap ${cap}`,
    );
  };
  const ensure = pool.ensure.bind(pool);
  pool.ensure = (layer, experts, o) => {
    const r = ensure(layer, experts, o);
    check(`ensure(${layer}, ${experts.length} experts)`);
    return r;
  };
  const prefetch = pool.prefetch.bind(pool);
  pool.prefetch = (layer, experts, o) => {
    const r = prefetch(layer, experts, o);
    check(`prefetch(${layer})`);
    return r;
  };
  return seen;
}

interface Run {
  tokens: number[];
  peak: number;
  budget: number;
  splits: number;
  misses: number;
  prefetchUploads: number;
  slots: number;
}

async function run(
  path: string,
  cacheSizeGB: number,
  ids: number[],
  o: { prefetch: boolean; cap?: number; label: string },
): Promise<Run> {
  const warnings: string[] = [];
  const model = await loadModel({
    model: path,
    gpu: requireGpu(),
    nCtx: 64,
    maxBatch: ids.length,
    cacheSizeGB,
    enablePrefetch: o.prefetch,
    onWarning: (m) => warnings.push(m),
  });
  try {
    if (o.cap !== undefined) watchCap(model, o.cap, o.label);
    const r = await generate(model, ids, { maxTokens: 6 });
    const s = model.expertStats.snapshot();
    if (o.cap !== undefined) {
      assert.ok(s.peakBytes <= o.cap, `${o.label}: peak ${s.peakBytes} over the cap ${o.cap}`);
    }
    assert.equal(s.hits + s.misses, s.lookups, `${o.label}: hits + misses = lookups`);
    const raised = model.pool.requestedBudgetBytes < model.pool.minBudgetBytes;
    assert.equal(warnings.length, raised && cacheSizeGB > 0 ? 1 : 0, `${o.label}: ${warnings}`);
    return {
      tokens: r.tokens,
      peak: s.peakBytes,
      budget: s.budgetBytes,
      splits: s.splitLayers,
      misses: s.misses,
      prefetchUploads: model.prefetchStats?.prefetchUploads ?? 0,
      slots: model.pool.nSlots,
    };
  } finally {
    model.close();
  }
}

const cases: FixtureOptions[] = [
  { arch: "llama", type: "F16", shape: "a" },
  { arch: "llama", type: "Q4_K_M", shape: "b" },
  { arch: "qwen2moe", type: "Q8_0", shape: "a" },
  { arch: "qwen2moe", type: "Q4_K_M", shape: "b" },
  { arch: "qwen3moe", type: "F16", shape: "a" },
  { arch: "qwen3moe", type: "Q4_K_M", shape: "b" },
  { arch: "olmoe", type: "F16", shape: "a" },
  { arch: "gpt-oss", type: "F16", shape: "a" },
  { arch: "deepseek2", type: "F16", shape: "a" },
  { arch: "deepseek2", type: "Q4_K_M", shape: "b" },
  // I-quant experts: IQ2_XXS gate/up, IQ3_XXS down (dev/quant_recipes.ts)
  { arch: "qwen3moe", type: "IQ2_MIX", shape: "b" },
];

for (const c of cases) {
  gpuTest({
    name: `budget: ${c.arch}/${c.shape}/${c.type} holds the cap at min, 10, 25, 50, 100% with ` +
      `prompt batches larger than the pool, prefetch on and off; same tokens`,
    sanitizeResources: false,
    async fn() {
      const path = await fixtureModel(c);
      const file = readGgufModel(path);
      const nVocab = file.metadata.strings("tokenizer.ggml.tokens")!.length;
      const topK = file.metadata.number(`${c.arch}.expert_used_count`);
      const { total, largest, distinctSizes } = expertSizes(path);
      if (c.type === "Q4_K_M") {
        assert.ok(distinctSizes > 1, "a Q4_K_M file should mix expert sizes (Q6_K down)");
      }
      const rng = new Rng(7);
      const ids = Array.from({ length: 20 }, () => rng.int(nVocab));
      const resident = await run(path, 4, ids, { prefetch: false, label: "all resident" });
      assert.equal(resident.misses, 0);
      const minimum = topK * largest;
      for (const [i, frac] of [0, 0.1, 0.25, 0.5, 1].entries()) {
        const budget = Math.floor(frac * total);
        const cap = Math.max(budget, minimum);
        // prefetch on and off alternate over the budgets; both at 10%
        for (const prefetch of frac === 0.1 ? [false, true] : [i % 2 === 0]) {
          const label = `${frac * 100}% (${budget} bytes) prefetch ${prefetch ? "on" : "off"}`;
          const r = await run(path, budget / GIB, ids, { prefetch, cap, label });
          assert.deepEqual(r.tokens, resident.tokens, `${label}: tokens differ`);
          if (frac < 1) assert.ok(r.misses > 0, `${label}: nothing streamed`);
          // the experts' own bytes hold them all, each at its own size (mixed types too)
          else assert.equal(r.misses, 0, `${label}: experts streamed at 100%`);
          if (frac === 0) {
            assert.equal(r.budget, minimum, "budget 0 is the minimum");
            // 20 prompt tokens route to more than top-k experts of a layer: the slots hold top-k
            assert.equal(r.slots, topK);
            assert.ok(r.splits > 0, `${label}: no layer was computed in expert groups`);
          }
        }
      }
    },
  });
}

gpuTest({
  name: "budget: one below the minimum is raised to it with a warning that says so",
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "qwen3moe", type: "F16", shape: "a" });
    const { largest } = expertSizes(path);
    const topK = readGgufModel(path).metadata.number("qwen3moe.expert_used_count");
    const warnings: string[] = [];
    const model = await loadModel({
      model: path,
      gpu: requireGpu(),
      nCtx: 64,
      cacheSizeGB: 1000 / GIB,
      onWarning: (m) => warnings.push(m),
    });
    try {
      assert.equal(model.pool.budgetBytes, topK * largest);
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /--cache-size-gb .* \(1000 bytes\) is below the smallest/);
      assert.match(warnings[0]!, new RegExp(`using ${topK * largest} bytes`));
      const s = model.expertStats.snapshot();
      assert.deepEqual([s.requestedBudgetBytes, s.minBudgetBytes, s.budgetBytes], [
        1000,
        topK * largest,
        topK * largest,
      ]);
    } finally {
      model.close();
    }
  },
});
