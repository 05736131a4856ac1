/**
 * Prefetch and eviction on a generated model with experts streaming: for
 * cache budgets of 10 %, 25 % and 50 % of the expert bytes, the hit rate,
 * stalls per token and tokens/s with prefetch off, with the gate lookahead
 * and with a shadow model trained in the same run, each under LRU and under
 * the predictive policy; plus the predictor's recall@k per distance,
 * prefetch accuracy and wasted upload bytes. Tokens/s is also given as a
 * ratio to prefetch off + LRU at the same budget (the reference, same run).
 * Every configuration must generate the same tokens (`tokens_identical`),
 * and the pool must stay within its budget, a hard cap (`within_budget`).
 *
 * The model is `src/training/demo_model.ts` (qwen3moe, 64 wide, 6 layers,
 * 16 experts, top-2; cached in `.cache/predictor/`); the shadow model is
 * trained on routing data collected from random prompts (a few seconds).
 *
 * ```sh
 * deno run -A bench/prefetch.ts [--tokens 64] [--budgets 0.1,0.25,0.5]
 *   [--train-samples 3000] [--epochs 4] [--out bench/out/prefetch.svg] [--quick]
 * ```
 *
 * Prints one JSON object on stdout, a table and a bar chart on stderr, and
 * writes an SVG chart (tokens/s against the budget) to `--out`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { predictorDemoModel } from "../src/training/demo_model.ts";
import { collectRoutingData, syntheticPrompts } from "../src/training/collect.ts";
import { trainShadow } from "../src/training/trainer.ts";
import { saveShadow } from "../src/predictor/shadow.ts";
import {
  benchPrompt,
  firstDivergence,
  intFlag,
  lineChartSvg,
  niceMax,
  note,
  roundNumbers,
  writeTextFileMkdir,
} from "./_util.ts";

/** Options of {@linkcode runPrefetchBench}. */
export interface PrefetchBenchOptions {
  /** Tokens generated per configuration. */
  tokens: number;
  /** Budgets as fractions of the expert bytes. */
  budgets: number[];
  /** Samples (tokens) collected to train the shadow model. */
  trainSamples: number;
  /** Training epochs. */
  epochs: number;
  /** Where the SVG chart goes (undefined: none). */
  out?: string;
}

/** The options for a full or `--quick` run. */
export function prefetchBenchOptions(quick: boolean): PrefetchBenchOptions {
  return quick
    ? { tokens: 24, budgets: [0.1, 0.25, 0.5], trainSamples: 1500, epochs: 3 }
    : { tokens: 64, budgets: [0.1, 0.25, 0.5], trainSamples: 3000, epochs: 4 };
}

const PREDICTORS = ["off", "lookahead", "shadow"] as const;
const POLICIES = ["lru", "predictive"] as const;

/** One configuration's figures. */
interface Row {
  budget: number;
  predictor: (typeof PREDICTORS)[number];
  policy: (typeof POLICIES)[number];
  hitRate: number;
  stallsPerToken: number;
  syncsPerToken: number;
  tokensPerSecond: number;
  ratioToOffLru: number;
  prefetchUploads: number;
  prefetchAccuracy: number;
  wastedUploadBytes: number;
  recallByDistance: readonly number[];
  peakBytes: number;
  limitBytes: number;
}

/** Runs the benchmark and returns its report. */
export async function runPrefetchBench(
  o: PrefetchBenchOptions,
  gpu?: Gpu,
): Promise<Record<string, unknown>> {
  const g = gpu ?? await acquireGpu();
  const path = await predictorDemoModel();
  const total = expertLayout(readGgufModel(path)).reduce(
    (s, l) => s + l.nExpert * l.bytesPerExpert,
    0,
  );
  const dir = await Deno.makeTempDir();
  try {
    // the shadow model: collect from random prompts, train, save
    const shadowPath = `${dir}/shadow.safetensors`;
    const t0 = performance.now();
    let training: Record<string, unknown>;
    {
      const m = await loadModel({ model: path, gpu: g, nCtx: 128, maxBatch: 64, cacheSizeGB: 1 });
      try {
        const data = await collectRoutingData(
          m,
          syntheticPrompts(Math.ceil(o.trainSamples / 30), 64, m.config.nVocab, 1),
          { numSamples: o.trainSamples, newTokens: 0 },
        );
        const r = await trainShadow(g, data, {
          epochs: o.epochs,
          batchSize: 64,
          lr: 5e-4,
          depth: 2,
          log: note,
        });
        await saveShadow(shadowPath, r.weights);
        training = {
          samples: data.nSamples,
          best_epoch: r.best.epoch,
          val_recall: r.best.valRecall,
          gpu_bytes: r.gpuBytes,
          ms: performance.now() - t0,
        };
      } finally {
        m.close();
      }
    }
    const prompt = benchPrompt(8, 600);
    const rows: Row[] = [];
    let reference: number[] | undefined;
    let identical = true;
    let divergence: string | null = null;
    let withinBudget = true;
    for (const budget of o.budgets) {
      let offLru = NaN;
      for (const policy of POLICIES) {
        for (const predictor of PREDICTORS) {
          const model = await loadModel({
            model: path,
            gpu: g,
            nCtx: 256,
            maxBatch: 4,
            cacheSizeGB: (budget * total) / 2 ** 30,
            evictionPolicy: policy,
            enablePrefetch: predictor !== "off",
            predictorPath: predictor === "shadow" ? shadowPath : undefined,
          });
          try {
            // warm the pipelines and the page cache; count from here
            await generate(model, prompt.slice(0, 2), { maxTokens: 2 });
            model.reset();
            model.expertStats.reset();
            model.prefetcher?.stats.reset();
            const r = await generate(model, prompt, { maxTokens: o.tokens });
            const s = model.expertStats.snapshot();
            const p = model.prefetchStats!;
            const limit = model.pool.limitBytes;
            withinBudget &&= s.peakBytes <= limit;
            if (!reference) reference = r.tokens;
            const at = firstDivergence(reference, r.tokens);
            if (at !== null || reference.length !== r.tokens.length) {
              identical = false;
              divergence ??= `${budget} ${policy} ${predictor} at token ${at}`;
            }
            const tps = (r.tokens.length - 1) / (r.stats.decodeMs / 1000);
            if (predictor === "off" && policy === "lru") offLru = tps;
            rows.push({
              budget,
              predictor,
              policy,
              hitRate: s.hitRate,
              stallsPerToken: p.stallsPerToken,
              syncsPerToken: r.stats.syncsPerToken,
              tokensPerSecond: tps,
              ratioToOffLru: tps / offLru,
              prefetchUploads: p.prefetchUploads,
              prefetchAccuracy: p.prefetchAccuracy,
              wastedUploadBytes: p.wastedUploadBytes,
              recallByDistance: p.recallByDistance,
              peakBytes: s.peakBytes,
              limitBytes: limit,
            });
          } finally {
            model.close();
          }
        }
      }
    }
    printTable(rows);
    if (o.out) await writeTextFileMkdir(o.out, chart(rows, o));
    return roundNumbers({
      bench: "prefetch",
      model: "predictor demo (qwen3moe 64×6, 16 experts top-2)",
      device: g.describe(),
      expert_bytes: total,
      tokens: o.tokens,
      training,
      tokens_identical: identical,
      first_divergence: divergence,
      within_budget: withinBudget,
      rows,
      chart: o.out,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
    if (!gpu) g.destroy();
  }
}

function printTable(rows: readonly Row[]): void {
  const head = "budget  policy      predictor   hit    stalls/tok  syncs/tok  tok/s  ×off+lru  " +
    "accuracy  recall@k d1/d2   wasted KiB";
  note(head);
  for (const r of rows) {
    note(
      `${(r.budget * 100).toFixed(0).padStart(5)}%  ${r.policy.padEnd(10)}  ${
        r.predictor.padEnd(10)
      }  ${r.hitRate.toFixed(3)}  ${r.stallsPerToken.toFixed(2).padStart(10)}  ${
        r.syncsPerToken.toFixed(2).padStart(9)
      }  ${r.tokensPerSecond.toFixed(1).padStart(5)}  ${r.ratioToOffLru.toFixed(2).padStart(8)}  ${
        r.predictor === "off" ? "       -" : r.prefetchAccuracy.toFixed(2).padStart(8)
      }  ${
        (r.predictor === "off" ? "-" : r.recallByDistance.map((x) => x.toFixed(2)).join("/"))
          .padStart(15)
      }  ${(r.wastedUploadBytes / 1024).toFixed(0).padStart(10)}`,
    );
  }
  // a bar chart of tokens/s
  const max = Math.max(...rows.map((r) => r.tokensPerSecond));
  note("\ntokens/s");
  for (const r of rows) {
    const label = `${(r.budget * 100).toFixed(0)}% ${r.policy} ${r.predictor}`.padEnd(26);
    const bar = "█".repeat(Math.max(1, Math.round((r.tokensPerSecond / max) * 40)));
    note(`${label} ${bar} ${r.tokensPerSecond.toFixed(1)}`);
  }
}

const COLORS: Record<string, string> = {
  "lru off": "#888888",
  "lru lookahead": "#1f77b4",
  "lru shadow": "#2ca02c",
  "predictive off": "#555555",
  "predictive lookahead": "#ff7f0e",
  "predictive shadow": "#d62728",
};

function chart(rows: readonly Row[], o: PrefetchBenchOptions): string {
  const series = POLICIES.flatMap((policy) =>
    PREDICTORS.map((predictor) => ({
      name: `${policy} · ${predictor}`,
      axis: "left" as const,
      color: COLORS[`${policy} ${predictor}`]!,
      dashed: policy === "lru",
      points: rows.filter((r) => r.policy === policy && r.predictor === predictor)
        .map((r) => [r.budget * 100, r.tokensPerSecond] as const),
    }))
  );
  const xs = o.budgets.map((b) => b * 100);
  return lineChartSvg({
    title: "Decode tokens/s by cache budget: prefetch off / lookahead / shadow, LRU vs predictive",
    subtitle: `predictor demo model, ${o.tokens} tokens`,
    xLabel: "cache budget, % of expert bytes",
    leftLabel: "tokens/s",
    xRange: [Math.min(...xs), Math.max(...xs)],
    leftRange: [0, niceMax(Math.max(...rows.map((r) => r.tokensPerSecond)))],
    xTicks: xs.map((x) => [x, `${x}%`] as const),
    series,
  });
}

/** One line for `deno task bench`'s summary. */
export function prefetchSummary(r: Record<string, unknown>): string {
  const rows = r["rows"] as Row[];
  const best = rows.reduce((a, b) => (b.tokensPerSecond > a.tokensPerSecond ? b : a));
  return `prefetch: identical ${r["tokens_identical"]}, within budget ${r["within_budget"]}; ` +
    `best ${best.policy}+${best.predictor} at ${
      best.budget * 100
    }%: ${best.tokensPerSecond} tok/s (×${best.ratioToOffLru} off+LRU)`;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      tokens: { type: "string" },
      budgets: { type: "string" },
      "train-samples": { type: "string" },
      epochs: { type: "string" },
      out: { type: "string" },
      quick: { type: "boolean" },
    },
  });
  const base = prefetchBenchOptions(v.quick ?? false);
  const o: PrefetchBenchOptions = {
    tokens: intFlag("tokens", v.tokens, base.tokens),
    budgets: v.budgets ? v.budgets.split(",").map(Number) : base.budgets,
    trainSamples: intFlag("train-samples", v["train-samples"], base.trainSamples),
    epochs: intFlag("epochs", v.epochs, base.epochs),
    out: v.out ?? fileURLToPath(new URL("./out/prefetch.svg", import.meta.url)),
  };
  const report = await runPrefetchBench(o);
  console.log(JSON.stringify(report));
  note(prefetchSummary(report));
  if (!report["tokens_identical"] || !report["within_budget"]) Deno.exit(1);
}
