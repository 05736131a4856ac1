/**
 * The expert cache and the lookahead prefetcher on the trained demo model
 * (data/kjv-moe-Q8_0.gguf: routing learned from text), at budgets of
 * 10/25/50% of its expert bytes: hit rate, stalls and syncs per token,
 * decode tokens/s (and its ratio to prefetch off + LRU at the same budget,
 * same run) for prefetch off / lookahead × LRU / predictive eviction, and
 * the lookahead's recall one layer ahead. The prompt is the first
 * `--prompt-tokens` tokens of the held-out text; greedy generation; every
 * configuration must generate the same tokens (`tokens_identical`).
 *
 * ```sh
 * deno run -A bench/demo_model_cache.ts [--tokens 48] [--prompt-tokens 32]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel } from "../src/model/model.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { acquireGpu } from "../src/gpu/device.ts";
import { trainedDemoModel } from "../src/server/demo.ts";
import { HELDOUT_PATH, heldoutStream } from "./perplexity.ts";
import { firstDivergence, intFlag, note, roundNumbers } from "./_util.ts";

const BUDGETS = [0.1, 0.25, 0.5];
const PREDICTORS = ["off", "lookahead"] as const;
const POLICIES = ["lru", "predictive"] as const;

/** Runs every configuration; the JSON report. */
export async function runDemoModelCacheBench(
  o: { tokens?: number; promptTokens?: number } = {},
): Promise<Record<string, unknown>> {
  const demo = trainedDemoModel();
  if (!demo) throw new Error("data/kjv-moe-Q8_0.gguf is missing: this bench needs the demo model");
  const tokens = o.tokens ?? 48;
  const tok = loadTokenizer(demo.path);
  const prompt = heldoutStream(tok, await Deno.readTextFile(HELDOUT_PATH)).slice(
    0,
    o.promptTokens ?? 32,
  );
  const gpu = await acquireGpu();
  const rows: Record<string, unknown>[] = [];
  let reference: number[] | undefined;
  let identical = true;
  for (const budget of BUDGETS) {
    let offLru = NaN;
    for (const policy of POLICIES) {
      for (const predictor of PREDICTORS) {
        const model = await loadModel({
          model: demo.path,
          gpu,
          nCtx: 256,
          maxBatch: 4,
          cacheSizeGB: (budget * demo.expertBytes) / 2 ** 30,
          evictionPolicy: policy,
          enablePrefetch: predictor !== "off",
        });
        try {
          await model.generate(prompt.slice(0, 2), { maxTokens: 2 });
          model.reset();
          model.expertStats.reset();
          model.prefetcher?.stats.reset();
          const r = await model.generate(prompt, { maxTokens: tokens });
          const s = model.expertStats.snapshot();
          const p = model.prefetchStats;
          reference ??= r.tokens;
          if (firstDivergence(reference, r.tokens) !== null) identical = false;
          const tps = (r.tokens.length - 1) / (r.stats.decodeMs / 1000);
          if (predictor === "off" && policy === "lru") offLru = tps;
          rows.push({
            budget,
            policy,
            predictor,
            hit_rate: s.hitRate,
            stalls_per_token: p?.stallsPerToken ?? r.stats.stalls / r.tokens.length,
            syncs_per_token: r.stats.syncsPerToken,
            decode_tokens_per_s: tps,
            ratio_to_off_lru: tps / offLru,
            recall_by_distance: p?.recallByDistance ?? null,
            prefetch_accuracy: p?.prefetchAccuracy ?? null,
            within_budget: s.peakBytes <= model.pool.limitBytes,
          });
          note(
            `${budget} ${policy} ${predictor}: hit ${s.hitRate.toFixed(3)}, ${
              tps.toFixed(1)
            } tok/s`,
          );
        } finally {
          model.close();
        }
      }
    }
  }
  return roundNumbers({
    bench: "demo_model_cache",
    model: demo.path,
    expert_bytes: demo.expertBytes,
    prompt_tokens: prompt.length,
    tokens,
    text: tok.decode(reference ?? []),
    tokens_identical: identical,
    load_average: Deno.loadavg()[0],
    rows,
  });
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: { tokens: { type: "string" }, "prompt-tokens": { type: "string" } },
  });
  const r = await runDemoModelCacheBench({
    tokens: intFlag("tokens", v.tokens, 48),
    promptTokens: intFlag("prompt-tokens", v["prompt-tokens"], 32),
  });
  console.log(JSON.stringify(r));
}
