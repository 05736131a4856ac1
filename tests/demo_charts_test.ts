/**
 * The trained demo model's charts (bench/demo_charts.ts) drawn from the
 * committed reports in docs/bench/: every policy and prefetch setting gets
 * its line, with its measured points; a report without the expected fields
 * is refused naming the file and the field.
 */

import assert from "node:assert/strict";
import { cacheHitRateChart, recallChart, reuseChart } from "../bench/demo_charts.ts";

const DIR = new URL("../docs/bench/", import.meta.url);
const report = async (name: string) =>
  JSON.parse(await Deno.readTextFile(new URL(name, DIR))) as Record<string, unknown>;

/** The legend's names, in order. */
const legend = (svg: string) =>
  [...svg.matchAll(/<text x="\d+(?:\.\d+)?" y="\d+(?:\.\d+)?">([^<]+)<\/text>/g)].map((m) => m[1]);

Deno.test("demo charts: a hit-rate line per policy × prefetch, the recall and reuse lines, from the committed reports", async () => {
  const cache = await report("demo_model_cache.json");
  const svg = cacheHitRateChart(cache);
  const names = legend(svg);
  for (const policy of ["lru", "predictive", "least-stale"]) {
    for (const prefetch of ["off", "lookahead"]) {
      assert.ok(
        names.includes(`${policy}, prefetch ${prefetch}`),
        `${policy} ${prefetch}: ${names}`,
      );
    }
  }
  // one marker per measured row, and the committed SVG is this drawing
  assert.equal([...svg.matchAll(/<circle /g)].length, (cache.rows as unknown[]).length);
  assert.equal(await Deno.readTextFile(new URL("demo_cache_hit_rate.svg", DIR)), svg);

  const recall = recallChart(await report("demo_model_recall.json"));
  assert.deepEqual(legend(recall).slice(-4), ["shadow", "lookahead", "history", "chance (0.25)"]);
  assert.equal(await Deno.readTextFile(new URL("demo_recall.svg", DIR)), recall);

  const reuse = reuseChart(await report("routing_locality.json"));
  assert.deepEqual(legend(reuse).slice(-3), [
    "trained model",
    "random model",
    "memoryless router (0.25)",
  ]);
  assert.equal(await Deno.readTextFile(new URL("demo_reuse.svg", DIR)), reuse);
});

Deno.test("demo charts: a report without its fields is refused, naming the file and field", () => {
  assert.throws(() => cacheHitRateChart({ bench: "x" }, "a.json"), /a\.json: field "rows"/);
  assert.throws(
    () => cacheHitRateChart({ rows: [{ budget: "lots", hit_rate: 1 }] }, "a.json"),
    /a\.json: a row lacks a numeric budget or hit_rate/,
  );
  assert.throws(() => recallChart({ predictors: [] }, "r.json"), /r\.json: field "chance"/);
  assert.throws(
    () => reuseChart({ trained: { reuse_per_layer: [0.3] } }, "l.json"),
    /l\.json: field "random"/,
  );
});
