/**
 * Charts of the trained demo model's measurements, drawn from the JSON
 * reports of bench/demo_model_cache.ts, bench/demo_model_recall.ts and
 * bench/routing_locality.ts (saved under docs/bench/ with the commands
 * below), as SVG files for bench/README.md:
 *
 * - `demo_cache_hit_rate.svg`: expert cache hit rate vs budget, one line per
 *   eviction policy and prefetch setting;
 * - `demo_recall.svg`: recall@k one and two layers ahead and for the next
 *   token, one line per predictor, with chance;
 * - `demo_reuse.svg`: expert reuse between consecutive tokens per layer,
 *   trained vs random-weight model, with a memoryless router's figure.
 *
 * ```sh
 * deno run -A bench/demo_model_cache.ts > docs/bench/demo_model_cache.json
 * deno run -A bench/demo_model_recall.ts > docs/bench/demo_model_recall.json
 * deno run -A bench/routing_locality.ts > docs/bench/routing_locality.json
 * deno run -A bench/demo_charts.ts [--dir docs/bench]
 * ```
 *
 * A report that is missing is skipped with a note; one that does not have
 * the fields expected is an error naming the file and the field.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type ChartSeries, lineChartSvg, note, writeTextFileMkdir } from "./_util.ts";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

type Json = Record<string, unknown>;

function field<T>(report: Json, name: string, file: string, check: (v: unknown) => boolean): T {
  const v = report[name];
  if (!check(v)) throw new Error(`${file}: field "${name}" is missing or malformed`);
  return v as T;
}

const isArray = (v: unknown) => Array.isArray(v);
const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

async function readReport(path: string): Promise<Json | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      note(`${path}: not found, its chart is skipped (run the bench that writes it first)`);
      return undefined;
    }
    throw e;
  }
  try {
    return JSON.parse(text) as Json;
  } catch (e) {
    throw new Error(`${path}: not a JSON report: ${(e as Error).message}`);
  }
}

/** Hit rate vs budget per (policy, prefetch); the SVG text. */
export function cacheHitRateChart(report: Json, file = "demo_model_cache.json"): string {
  const rows = field<Json[]>(report, "rows", file, isArray);
  const lines = new Map<string, [number, number][]>();
  const policies: string[] = [];
  for (const r of rows) {
    const budget = Number(r.budget), hit = Number(r.hit_rate);
    if (!Number.isFinite(budget) || !Number.isFinite(hit)) {
      throw new Error(`${file}: a row lacks a numeric budget or hit_rate: ${JSON.stringify(r)}`);
    }
    if (!policies.includes(String(r.policy))) policies.push(String(r.policy));
    const key = `${r.policy}, prefetch ${r.predictor}`;
    lines.set(key, [...(lines.get(key) ?? []), [budget * 100, hit]]);
  }
  // at 100% every expert is resident (prefetch off only): the lookahead lines end at 50%
  const series: ChartSeries[] = [...lines].map(([name, pts]) => ({
    name,
    axis: "left",
    color: COLORS[policies.indexOf(name.split(",")[0]!) % COLORS.length]!,
    dashed: name.endsWith("off"),
    points: pts.sort((a, b) => a[0] - b[0]),
  }));
  const budgets = [...new Set(rows.map((r) => Number(r.budget) * 100))].sort((a, b) => a - b);
  return lineChartSvg({
    title: "Expert cache hit rate vs budget (trained demo model)",
    subtitle: `kjv-moe-Q8_0, ${report.prompt_tokens}-token held-out prompt + ${report.tokens} ` +
      `greedy tokens; dashed = prefetch off, solid = lookahead prefetch`,
    xLabel: "expert budget (% of the experts' bytes)",
    leftLabel: "hit rate",
    xRange: [0, 100],
    leftRange: [0, 1],
    xTicks: budgets.map((b) => [b, `${b}%`]),
    series,
  });
}

/** Recall@k by distance per predictor; the SVG text. */
export function recallChart(report: Json, file = "demo_model_recall.json"): string {
  const predictors = field<Json[]>(report, "predictors", file, isArray);
  const chance = field<number>(report, "chance", file, (v) => typeof v === "number");
  const keys = ["recall_one_layer_ahead", "recall_two_layers_ahead", "recall_next_token"];
  const series: ChartSeries[] = predictors.map((p, i) => ({
    name: String(p.name),
    axis: "left",
    color: COLORS[i % COLORS.length]!,
    points: keys.flatMap((k, x) => typeof p[k] === "number" ? [[x, p[k] as number] as const] : []),
  }));
  series.push({
    name: `chance (${chance})`,
    axis: "left",
    color: "#888",
    dashed: true,
    points: [[0, chance], [2, chance]],
  });
  return lineChartSvg({
    title: `Predictor recall@${report.k} (trained demo model, held-out text)`,
    subtitle: `shadow MLP trained on ${report.train_tokens} tokens disjoint from the ` +
      `${report.test_tokens} scored`,
    xLabel: "what is predicted",
    leftLabel: `recall@${report.k}`,
    xRange: [-0.2, 2.2],
    // headroom above 1 for the legend
    leftRange: [0, 1.3],
    xTicks: [[0, "one layer ahead"], [1, "two layers ahead"], [2, "next token"]],
    series,
  });
}

/** Consecutive-token expert reuse per layer, trained vs random; the SVG text. */
export function reuseChart(report: Json, file = "routing_locality.json"): string {
  const series: ChartSeries[] = [];
  let nLayer = 0, memoryless = NaN;
  ["trained", "random"].forEach((name, i) => {
    const m = field<Json>(report, name, file, isObject);
    const reuse = field<number[]>(m, "reuse_per_layer", `${file} (${name})`, isArray);
    nLayer = Math.max(nLayer, reuse.length);
    memoryless = Number(m.reuse_if_memoryless);
    series.push({
      name: `${name} model`,
      axis: "left",
      color: COLORS[i]!,
      points: reuse.map((r, l) => [l, r] as const),
    });
  });
  series.push({
    name: `memoryless router (${memoryless})`,
    axis: "left",
    color: "#888",
    dashed: true,
    points: [[0, memoryless], [nLayer - 1, memoryless]],
  });
  return lineChartSvg({
    title: "Expert reuse between consecutive tokens",
    subtitle: `share of token t's experts that token t−1 also chose, per layer; same held-out ` +
      `text, ${(report.trained as Json).tokens} tokens`,
    xLabel: "layer",
    leftLabel: "reuse",
    xRange: [-0.2, nLayer - 0.8],
    leftRange: [0, 0.5],
    xTicks: Array.from({ length: nLayer }, (_, l) => [l, String(l)] as const),
    series,
  });
}

if (import.meta.main) {
  const { values: v } = parseArgs({ args: Deno.args, options: { dir: { type: "string" } } });
  const dir = v.dir ?? "docs/bench";
  const charts: [string, string, (r: Json, f: string) => string][] = [
    ["demo_model_cache.json", "demo_cache_hit_rate.svg", cacheHitRateChart],
    ["demo_model_recall.json", "demo_recall.svg", recallChart],
    ["routing_locality.json", "demo_reuse.svg", reuseChart],
  ];
  for (const [json, svg, draw] of charts) {
    const report = await readReport(`${dir}/${json}`);
    if (!report) continue;
    await writeTextFileMkdir(`${dir}/${svg}`, draw(report, `${dir}/${json}`));
    note(`${dir}/${svg}`);
  }
}
