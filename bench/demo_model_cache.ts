/**
 * The expert cache and the lookahead prefetcher on the trained demo model
 * (data/kjv-moe-Q8_0.gguf: routing learned from text), at budgets of
 * 10/25/50/100% of its expert bytes: hit rate, stalls and syncs per token,
 * decode tokens/s (and its ratio to prefetch off + LRU at the same budget,
 * same run) for prefetch off / lookahead × LRU / predictive / least-stale
 * eviction, and the lookahead's recall one layer ahead. At 100% every expert
 * is resident (no eviction, no prefetcher): one row per policy, prefetch off.
 * bench/demo_charts.ts draws its JSON report. The prompt is the first
 * `--prompt-tokens` tokens of the held-out text; greedy generation; every
 * configuration must generate the same tokens (`tokens_identical`).
 *
 * ```sh
 * deno run -A bench/demo_model_cache.ts [--tokens 48] [--prompt-tokens 32]
 *   [--budgets 0.1,0.25,0.5,1] [--policies lru,predictive,least-stale]
 *   [--predictors off,lookahead] > docs/bench/demo_model_cache.json
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { acquireGpu } from "../src/gpu/device.ts";
import { trainedDemoModel } from "../src/server/demo.ts";
import { HELDOUT_PATH, heldoutStream } from "./perplexity.ts";
import { firstDivergence, intFlag, note, roundNumbers } from "./_util.ts";
import {
  EVICTION_POLICY_NAMES,
  type EvictionPolicyName,
} from "../src/experts/policy_predictive.ts";

const BUDGETS = [0.1, 0.25, 0.5, 1];
const PREDICTORS = ["off", "lookahead"] as const;
type PredictorName = typeof PREDICTORS[number];

/** Runs every configuration; the JSON report. */
export async function runDemoModelCacheBench(
  o: {
    tokens?: number;
    promptTokens?: number;
    budgets?: number[];
    policies?: readonly EvictionPolicyName[];
    predictors?: readonly PredictorName[];
  } = {},
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
  for (const budget of o.budgets ?? BUDGETS) {
    let offLru = NaN;
    for (const policy of o.policies ?? EVICTION_POLICY_NAMES) {
      for (const predictor of o.predictors ?? PREDICTORS) {
        // every expert resident: no prefetcher, nothing to evict
        if (budget >= 1 && predictor !== "off") continue;
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
          await generate(model, prompt.slice(0, 2), { maxTokens: 2 });
          model.reset();
          model.expertStats.reset();
          model.prefetcher?.stats.reset();
          const r = await generate(model, prompt, { maxTokens: tokens });
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
    options: {
      tokens: { type: "string" },
      "prompt-tokens": { type: "string" },
      budgets: { type: "string" },
      policies: { type: "string" },
      predictors: { type: "string" },
    },
  });
  const list = <T extends string>(
    flag: string,
    text: string | undefined,
    allowed: readonly T[],
  ) => {
    if (text === undefined) return undefined;
    const out = text.split(",").map((s) => s.trim()) as T[];
    for (const x of out) {
      if (!allowed.includes(x)) {
        throw new RangeError(`--${flag}: "${x}" is not one of ${allowed.join(", ")}`);
      }
    }
    return out;
  };
  const budgets = v.budgets?.split(",").map((s) => {
    const b = Number(s);
    if (!(b > 0 && b <= 1)) throw new RangeError(`--budgets: "${s}" is not a fraction in (0, 1]`);
    return b;
  });
  const r = await runDemoModelCacheBench({
    tokens: intFlag("tokens", v.tokens, 48),
    promptTokens: intFlag("prompt-tokens", v["prompt-tokens"], 32),
    budgets,
    policies: list("policies", v.policies, EVICTION_POLICY_NAMES),
    predictors: list("predictors", v.predictors, PREDICTORS),
  });
  console.log(JSON.stringify(r));
}
