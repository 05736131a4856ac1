/**
 * The expert cache over a long generation: hit rate, misses, stalls, syncs
 * and bytes uploaded per token, tokens/s, and peak expert bytes against the
 * budget, at several budgets (fractions of the model's expert bytes: by
 * default 0 — minimum mode —, 10%, 25%, 50%, 100%). Tokens/s is also given
 * as a ratio to the 100% budget (nothing streams) and to llama.cpp on the
 * same file, both measured in the same run. The generated tokens must not
 * depend on the budget (DESIGN.md); `tokens_identical` says whether they did.
 *
 * The default model is generated (cached in `.cache/models/`): qwen3moe,
 * 512 wide, 4 layers, 64 experts of 256, top-4, Q4_K_M; one token per batch
 * (maxBatch 1), so the prompt streams its experts token by token too.
 *
 * ```sh
 * deno run -A bench/cache_hit_rate.ts [--model FILE.gguf] [--tokens 192] [--prompt-tokens 16]
 *   [--budgets 0,0.1,0.25,0.5,1] [--out bench/out/cache_hit_rate.svg] [--no-reference] [--quick]
 * ```
 *
 * Prints one JSON object on stdout and writes an SVG chart (hit rate and
 * tokens/s against the budget) to `--out`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { fixtureModel, type FixtureOptions } from "../dev/fixtures.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { loadModel, type Model } from "../src/model/model.ts";
import { generate, generateSteps } from "../src/generate/session.ts";
import { acquireGpu } from "../src/gpu/device.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { archSpec } from "../src/model/registry.ts";
import {
  benchPrompt,
  firstDivergence,
  intFlag,
  lineChartSvg,
  median,
  niceMax,
  note,
  roundNumbers,
  tokenWeightBytes,
  writeTextFileMkdir,
} from "./_util.ts";

/** The generated model: many small experts, top-4. */
export const CACHE_MODEL: FixtureOptions = {
  arch: "qwen3moe",
  shape: "b",
  type: "Q4_K_M",
  nEmbd: 512,
  nLayer: 4,
  nHead: 8,
  nHeadKv: 2,
  headDim: 64,
  nFfExp: 256,
  nExpert: 64,
  nExpertUsed: 4,
};

/** Where the chart goes by default (git-ignored). */
export const DEFAULT_CHART = fileURLToPath(new URL("./out/cache_hit_rate.svg", import.meta.url));

/** Options of {@linkcode runCacheHitRateBench}. */
export interface CacheHitRateOptions {
  /** A GGUF to bench; default a generated model ({@linkcode CACHE_MODEL}). */
  model?: string;
  /** The generated model's definition when `model` is absent. */
  fixture?: FixtureOptions;
  /** Prompt tokens. */
  promptTokens: number;
  /** Tokens decoded after the first generated one. */
  tokens: number;
  /** Budgets as fractions of the model's expert bytes. */
  budgets: number[];
  /** SVG chart path; none when empty. */
  out: string;
  /** Skip llama.cpp. */
  noReference?: boolean;
}

interface BudgetRun {
  tokens: number[];
  row: Record<string, number | boolean>;
}

async function runBudget(
  model: Model,
  prompt: number[],
  tokens: number,
  fraction: number,
): Promise<BudgetRun> {
  const gpu = model.gpu;
  const ex = model.expertStats;
  const t0 = performance.now();
  let t1 = t0;
  let g0 = gpu.stats.snapshot();
  let x0 = ex.snapshot();
  let stalls0 = model.stalls;
  const out: number[] = [];
  for await (const step of generateSteps(model, prompt, { maxTokens: tokens + 1 })) {
    if (out.length === 0) {
      t1 = performance.now();
      g0 = gpu.stats.snapshot();
      x0 = ex.snapshot();
      stalls0 = model.stalls;
    }
    out.push(...step);
  }
  const t2 = performance.now();
  const g = gpu.stats.since(g0);
  const x = ex.snapshot();
  const n = Math.max(1, out.length - 1);
  const lookups = x.lookups - x0.lookups;
  const hits = x.hits - x0.hits;
  const misses = x.misses - x0.misses;
  return {
    tokens: out,
    row: {
      budget_fraction: fraction,
      budget_bytes: model.pool.budgetBytes,
      all_resident: model.pool.allResident,
      slots: model.pool.nSlots,
      decode_tokens: n,
      hit_rate: lookups > 0 ? hits / lookups : 1,
      misses_per_token: misses / n,
      stalls_per_token: (model.stalls - stalls0) / n,
      syncs_per_token: g.syncs / n,
      submits_per_token: g.submits / n,
      bytes_uploaded_per_token: (x.bytesUploaded - x0.bytesUploaded) / n,
      decode_tokens_per_s: n / (t2 - t1) * 1e3,
      prefill_ms: t1 - t0,
      peak_expert_bytes: x.peakBytes,
      requested_budget_bytes: model.pool.requestedBudgetBytes,
      min_budget_bytes: model.pool.minBudgetBytes,
      allocated_expert_bytes: x.allocatedBytes,
      // the hard cap: max(budget asked for, top-k × the largest expert)
      peak_within_budget: x.peakBytes <= model.pool.budgetBytes,
      split_layers: x.splitLayers - x0.splitLayers,
    },
  };
}

/** Runs the benchmark, writes the chart, and returns the JSON-ready report. */
export async function runCacheHitRateBench(
  o: CacheHitRateOptions,
): Promise<Record<string, unknown>> {
  const fixture = o.fixture ?? CACHE_MODEL;
  if (!o.model) note(`cache_hit_rate: generating or reusing ${JSON.stringify(fixture)}`);
  const path = o.model ?? await fixtureModel(fixture);
  const file = readGgufModel(path);
  const config = archSpec(file.architecture).readConfig(file.metadata);
  const bytes = tokenWeightBytes(file.tensors, config.nExpertUsed);
  const prompt = benchPrompt(o.promptTokens, config.nVocab);
  const nCtx = o.promptTokens + o.tokens + 8;
  const GIB = 1024 ** 3;
  const gpu = await acquireGpu();
  const load0 = Deno.loadavg()[0];
  try {
    const open = (fraction: number) =>
      loadModel({
        model: path,
        nCtx,
        maxBatch: 1,
        // 100%: a hair over, so that every expert fits despite GiB rounding
        cacheSizeGB: fraction * bytes.allExperts * (fraction >= 1 ? 1.0001 : 1) / GIB,
        gpu,
      });
    note("cache_hit_rate: warming up");
    {
      const m = await open(1);
      await generate(m, prompt.slice(0, 4), { maxTokens: 4 });
      m.close();
    }
    const runs: BudgetRun[] = [];
    for (const f of o.budgets) {
      note(`cache_hit_rate: budget ${(f * 100).toFixed(0)}% of expert bytes`);
      const m = await open(f);
      try {
        runs.push(await runBudget(m, prompt, o.tokens, f));
      } finally {
        m.close();
      }
    }
    let refDecode = NaN;
    if (!o.noReference) {
      note("cache_hit_rate: llama.cpp on the same file");
      using ref = loadReference().loadModel(path, { nCtx });
      ref.greedy(prompt.slice(0, 4), 4);
      const rates: number[] = [];
      for (let r = 0; r < 2; r++) {
        const t0 = performance.now();
        ref.greedy(prompt, 1);
        const t1 = performance.now();
        ref.greedy(prompt, o.tokens + 1);
        const t2 = performance.now();
        rates.push(o.tokens / Math.max(1e-3, t2 - t1 - (t1 - t0)) * 1e3);
      }
      refDecode = median(rates);
    }
    const full = runs.find((r) => r.row.all_resident === true);
    const fullRate = full ? full.row.decode_tokens_per_s as number : NaN;
    for (const r of runs) {
      const rate = r.row.decode_tokens_per_s as number;
      r.row.tokens_per_s_vs_full_budget = rate / fullRate;
      r.row.tokens_per_s_vs_llama_cpp = rate / refDecode;
    }
    const identical = runs.every((r) => firstDivergence(r.tokens, runs[0]!.tokens) === null);
    const device = gpu.describe();
    const report = roundNumbers({
      bench: "cache_hit_rate",
      device,
      machine: {
        cores: navigator.hardwareConcurrency,
        load_average_1min: { start: load0, end: Deno.loadavg()[0] },
      },
      model: {
        path,
        generated: o.model ? null : fixture,
        architecture: config.arch,
        n_layer: config.nLayer,
        n_expert: config.nExpert,
        n_expert_used: config.nExpertUsed,
        bytes_per_expert: bytes.bytesPerExpert,
        all_expert_bytes: bytes.allExperts,
      },
      prompt_tokens: prompt.length,
      decode_tokens: o.tokens,
      max_batch: 1,
      tokens_identical: identical,
      first_divergence: runs.map((r) => firstDivergence(r.tokens, runs[0]!.tokens)),
      llama_cpp_decode_tokens_per_s: refDecode,
      note: "per-token figures cover decode only (after the first generated token); " +
        "budgets are fractions of all routed-expert bytes; the budget is a hard cap on expert " +
        "bytes, raised to min_budget_bytes (top-k experts of the largest layer) when smaller",
      budgets: runs.map((r) => r.row),
      chart: o.out || null,
    });
    if (o.out) await writeTextFileMkdir(o.out, cacheHitRateChart(report, device));
    return report;
  } finally {
    gpu.destroy();
  }
}

/** The SVG chart of a report (hit rate and tokens/s against the budget). */
export function cacheHitRateChart(report: Record<string, unknown>, device: string): string {
  const rows = report.budgets as Record<string, number>[];
  const model = report.model as Record<string, number | string>;
  const maxRate = niceMax(Math.max(...rows.map((r) => r.decode_tokens_per_s!)));
  return lineChartSvg({
    title: "od-moe expert cache: hit rate and decode speed vs budget",
    subtitle: `${model.architecture}, ${model.n_layer} layers × ${model.n_expert} experts ` +
      `(top-${model.n_expert_used}), ${report.decode_tokens} tokens, batch 1 — ${
        device.replace(/ \[.*\]$/, "")
      }`,
    xLabel: "expert cache budget (% of all routed-expert bytes)",
    leftLabel: "hit rate (decode)",
    rightLabel: "decode tokens/s",
    xRange: [0, 100],
    leftRange: [0, 1],
    rightRange: [0, maxRate],
    xTicks: rows.map((r) => [r.budget_fraction! * 100, `${Math.round(r.budget_fraction! * 100)}%`]),
    leftFormat: (v) => `${Math.round(v * 100)}%`,
    series: [
      {
        name: "hit rate",
        axis: "left",
        color: "#1f77b4",
        points: rows.map((r) => [r.budget_fraction! * 100, r.hit_rate!]),
      },
      {
        name: "tokens/s",
        axis: "right",
        color: "#d62728",
        dashed: true,
        points: rows.map((r) => [r.budget_fraction! * 100, r.decode_tokens_per_s!]),
      },
    ],
  });
}

/** One line for a human. */
export function cacheHitRateSummary(r: Record<string, unknown>): string {
  const rows = r.budgets as Record<string, number>[];
  return `cache_hit_rate: ` +
    rows.map((x) =>
      `${Math.round(x.budget_fraction! * 100)}%: hit ${x.hit_rate} ${x.decode_tokens_per_s} t/s`
    ).join(" | ") + ` | tokens identical: ${r.tokens_identical}`;
}

/** Options from command-line flags (shared with `bench/main.ts`). */
export function cacheHitRateOptions(args: string[], quick = false): CacheHitRateOptions {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      tokens: { type: "string" },
      "prompt-tokens": { type: "string" },
      budgets: { type: "string" },
      out: { type: "string" },
      "no-reference": { type: "boolean" },
      quick: { type: "boolean" },
    },
    strict: true,
  });
  const q = quick || Boolean(values.quick);
  const budgets = (values.budgets ?? "0,0.1,0.25,0.5,1").split(",").map((s) => {
    const f = Number(s);
    if (!(f >= 0 && f <= 1)) throw new RangeError(`--budgets: "${s}" is not a fraction in [0, 1]`);
    return f;
  });
  return {
    model: values.model,
    fixture: CACHE_MODEL,
    tokens: intFlag("tokens", values.tokens, q ? 48 : 192),
    promptTokens: intFlag("prompt-tokens", values["prompt-tokens"], 16),
    budgets,
    out: values.out ?? DEFAULT_CHART,
    noReference: Boolean(values["no-reference"]),
  };
}

if (import.meta.main) {
  const report = await runCacheHitRateBench(cacheHitRateOptions(Deno.args));
  console.log(JSON.stringify(report, null, 2));
  note(cacheHitRateSummary(report));
}
