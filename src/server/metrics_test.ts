import assert from "node:assert/strict";
import {
  Histogram,
  metricsJson,
  type MetricsView,
  prometheusText,
  ServerMetrics,
} from "./metrics.ts";
import { ExpertStats } from "../experts/stats.ts";
import type { GenerationStats } from "../generate/types.ts";

function stats(o: Partial<GenerationStats> = {}): GenerationStats {
  return {
    promptTokens: 5,
    cachedTokens: 2,
    completionTokens: 11,
    prefillMs: 100,
    decodeMs: 500,
    prefillTokensPerSecond: 50,
    decodeTokensPerSecond: 20,
    syncsPerToken: 0.5,
    submitsPerToken: 1,
    stalls: 0,
    expertLookups: 10,
    expertHits: 8,
    expertMisses: 2,
    cacheHitRate: 0.8,
    expertBytesUploaded: 100,
    finishReason: "length",
    ...o,
  };
}

Deno.test("metrics: histogram buckets are cumulative with +Inf last", () => {
  const h = new Histogram([1, 2]);
  for (const v of [0.5, 1, 1.5, 3]) h.observe(v);
  assert.deepEqual(h.cumulative(), [["1", 2], ["2", 3], ["+Inf", 4]]);
  assert.equal(h.sum, 6);
  assert.equal(h.count, 4);
});

Deno.test("metrics: JSON and Prometheus agree on requests, tokens and the expert cache", () => {
  const m = new ServerMetrics();
  m.recordRequest("/generate", 200, 0.6);
  m.recordRequest("/generate", 400, 0.001);
  m.recordRequest("/health", 200, 0.001);
  m.recordGeneration({ stats: stats(), totalMs: 700, ttftMs: 200, queueMs: 100 });
  m.recordGeneration({
    stats: stats({ finishReason: "cancelled", completionTokens: 1 }),
    totalMs: 10,
    ttftMs: 10,
    queueMs: 0,
  });
  m.queueRejections = 2;
  const x = new ExpertStats(1);
  x.recordMiss(0, 4096, 0.5, true);
  x.recordHit(0);
  x.recordHit(0);
  const view: MetricsView = {
    startedAt: Date.now() - 1000,
    model: { name: 'demo "x"', architecture: "qwen3moe" },
    inFlight: 3,
    queueDepth: 2,
    maxQueue: 4,
    experts: x.snapshot(),
    prefetchEnabled: false,
    promptCache: { sequences: 2, bytes: 3000, limitBytes: 4096, saved: 3, hits: 5 },
  };
  const j = metricsJson(m, view);
  assert.deepEqual(j.prompt_cache, {
    sequences: 2,
    bytes: 3000,
    limit_bytes: 4096,
    saved: 3,
    hits: 5,
  });
  assert.equal(j.requests.total, 3);
  assert.deepEqual(j.requests.by_status, { "200": 2, "400": 1 });
  assert.equal(j.requests.rejected_queue_full, 2);
  assert.equal(j.generations.total, 2);
  assert.equal(j.generations.completion_tokens, 12);
  assert.equal(j.generations.prompt_tokens, 10);
  assert.equal(j.generations.prompt_tokens_cached, 4);
  assert.equal(j.tokens_per_second, 10 / 0.5); // only the finished run with >1 token counts
  assert.equal(j.queue_depth, 2);
  assert.ok(Math.abs(j.cache_hit_rate - 2 / 3) < 1e-12);
  assert.equal(j.prefetch_accuracy, 0);
  assert.equal(j.avg_expert_load_time, 0.5);
  assert.ok(j.uptime_seconds >= 1);

  const p = prometheusText(m, view);
  assert.match(p, /^odmoe_model_info\{name="demo \\"x\\"",architecture="qwen3moe"\} 1$/m);
  assert.match(p, /^odmoe_http_requests_total\{endpoint="\/generate",status="400"\} 1$/m);
  assert.match(p, /^odmoe_request_duration_seconds_bucket\{endpoint="\/generate",le="1"\} 2$/m);
  assert.match(p, /^odmoe_request_duration_seconds_count\{endpoint="\/generate"\} 2$/m);
  assert.match(p, /^odmoe_generations_total\{finish_reason="cancelled"\} 1$/m);
  assert.match(p, /^odmoe_completion_tokens_total 12$/m);
  assert.match(p, /^odmoe_prompt_tokens_cached_total 4$/m);
  assert.match(p, /^odmoe_queue_rejections_total 2$/m);
  assert.match(p, /^odmoe_prompt_cache_sequences 2$/m);
  assert.match(p, /^odmoe_prompt_cache_bytes 3000$/m);
  assert.match(p, /^odmoe_prompt_cache_hits_total 5$/m);
  assert.match(p, /^odmoe_expert_misses_total 1$/m);
  assert.match(p, /^odmoe_expert_load_avg_seconds 0\.0005$/m);
  for (const line of p.split("\n")) {
    const t = /^# TYPE (\S+) counter$/.exec(line);
    if (t) assert.ok(t[1]!.endsWith("_total"), t[1]);
  }
  // nothing loaded yet: still well-formed
  const empty = prometheusText(new ServerMetrics(), {
    startedAt: Date.now(),
    inFlight: 0,
    queueDepth: 0,
    prefetchEnabled: false,
  });
  assert.match(empty, /^odmoe_model_loaded 0$/m);
  assert.doesNotMatch(empty, /^odmoe_model_info\{/m);
});
