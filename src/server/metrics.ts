/**
 * What `/metrics` reports: the server's own counters (requests by endpoint
 * and status, generations, tokens, latency histograms) joined with the
 * engine's expert-cache statistics, as JSON ({@linkcode metricsJson}) or as
 * Prometheus text exposition format 0.0.4 ({@linkcode prometheusText}),
 * every name prefixed `odmoe_`, counters ending `_total`, latencies as
 * histograms in seconds.
 *
 * ```ts
 * import { metricsJson, prometheusText, ServerMetrics } from "./metrics.ts";
 *
 * const m = new ServerMetrics();
 * m.recordRequest("/health", 200, 0.001);
 * const view = { startedAt: Date.now(), inFlight: 0, queueDepth: 0, prefetchEnabled: false };
 * console.log(metricsJson(m, view).requests.total, prometheusText(m, view).split("\n")[0]);
 * ```
 *
 * @module
 */

import { type ExpertStatsSnapshot, LatencyRing, type LatencySummary } from "../experts/stats.ts";
import type { PrefetchStatsSnapshot } from "../experts/prefetch_stats.ts";
import type { GenerationStats } from "../generate/types.ts";

/** Upper bounds (seconds) of the latency histograms' buckets. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
];

/** A Prometheus-style cumulative histogram (fixed buckets, a sum and a count). */
export class Histogram {
  /** Upper bounds, ascending (`+Inf` implied). */
  readonly bounds: readonly number[];
  /** Observations per bucket, not cumulative; the last entry is `+Inf`. */
  readonly counts: number[];
  /** Sum of observations. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  /** A histogram over `bounds` (default {@linkcode LATENCY_BUCKETS}). */
  constructor(bounds: readonly number[] = LATENCY_BUCKETS) {
    this.bounds = bounds;
    this.counts = new Array(bounds.length + 1).fill(0);
  }

  /** Records one value. */
  observe(v: number): void {
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }

  /** `[le, cumulative count]` pairs, `+Inf` last. */
  cumulative(): [string, number][] {
    let acc = 0;
    return this.counts.map((c, i) => {
      acc += c;
      return [i < this.bounds.length ? String(this.bounds[i]) : "+Inf", acc];
    });
  }
}

/** One finished generation, as the server saw it. */
export interface GenerationRecord {
  /** The engine's statistics. */
  stats: GenerationStats;
  /** From admission to the last token, ms. */
  totalMs: number;
  /** From admission to the first generated token (or the end), ms. */
  ttftMs: number;
  /** Time spent waiting behind other requests, ms. */
  queueMs: number;
}

/** Counters and histograms the server keeps itself. */
export class ServerMetrics {
  /** Requests by `endpoint` and `status`: key `endpoint status`. */
  readonly requests: Map<string, number> = new Map();
  /** Request latency by endpoint. */
  readonly requestSeconds: Map<string, Histogram> = new Map();
  /** Time from admission to the first token. */
  readonly ttftSeconds: Histogram = new Histogram();
  /** Time waiting for the model. */
  readonly queueSeconds: Histogram = new Histogram();
  /** Generations by finish reason (and `error`). */
  readonly generations: Map<string, number> = new Map();
  /** Prompt tokens processed. */
  promptTokens = 0;
  /** Prompt tokens whose KV cache was reused from the previous request (part of `promptTokens`). */
  promptTokensCached = 0;
  /** Tokens generated. */
  completionTokens = 0;
  /** Requests refused because the queue was full. */
  queueRejections = 0;
  /** Recent request latencies (all endpoints), for the JSON percentiles. */
  readonly #recentRequests = new LatencyRing(1024);
  /** Recent time-to-first-token values. */
  readonly #recentTtft = new LatencyRing(1024);
  /** The last generations' (decoded tokens, decode ms, syncs per token). */
  readonly #recent: { tokens: number; ms: number; syncs: number }[] = [];
  static readonly #RECENT = 32;

  /** Counts one HTTP request (every status) and its latency. */
  recordRequest(endpoint: string, status: number, seconds: number): void {
    const key = `${endpoint} ${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    let h = this.requestSeconds.get(endpoint);
    if (!h) this.requestSeconds.set(endpoint, h = new Histogram());
    h.observe(seconds);
    this.#recentRequests.add(seconds * 1000);
  }

  /** Counts one finished generation (whatever its finish reason). */
  recordGeneration(g: GenerationRecord): void {
    const s = g.stats;
    this.generations.set(s.finishReason, (this.generations.get(s.finishReason) ?? 0) + 1);
    this.promptTokens += s.promptTokens;
    this.promptTokensCached += s.cachedTokens;
    this.completionTokens += s.completionTokens;
    this.ttftSeconds.observe(g.ttftMs / 1000);
    this.queueSeconds.observe(g.queueMs / 1000);
    this.#recentTtft.add(g.ttftMs);
    if (s.completionTokens > 1 && s.decodeMs > 0) {
      this.#recent.push({ tokens: s.completionTokens - 1, ms: s.decodeMs, syncs: s.syncsPerToken });
      if (this.#recent.length > ServerMetrics.#RECENT) this.#recent.shift();
    }
  }

  /** Counts a generation that failed (500), with the tokens it got through when known. */
  recordGenerationError(
    usage?: { readonly promptTokens: number; readonly completionTokens: number },
  ): void {
    this.generations.set("error", (this.generations.get("error") ?? 0) + 1);
    this.promptTokens += usage?.promptTokens ?? 0;
    this.completionTokens += usage?.completionTokens ?? 0;
  }

  /** Decode tokens per second over the last 32 generations (0 before any). */
  get tokensPerSecond(): number {
    let t = 0;
    let ms = 0;
    for (const r of this.#recent) {
      t += r.tokens;
      ms += r.ms;
    }
    return ms > 0 ? t / (ms / 1000) : 0;
  }

  /** GPU→CPU syncs per decoded token, weighted over the last 32 generations. */
  get syncsPerToken(): number {
    let t = 0;
    let s = 0;
    for (const r of this.#recent) {
      t += r.tokens;
      s += r.syncs * r.tokens;
    }
    return t > 0 ? s / t : 0;
  }

  /** Percentiles of the recent request latencies, ms. */
  get requestLatency(): LatencySummary {
    return this.#recentRequests.summary();
  }

  /** Percentiles of the recent times to first token, ms. */
  get ttftLatency(): LatencySummary {
    return this.#recentTtft.summary();
  }
}

/** What the server knows about the model and its queue when `/metrics` is asked. */
export interface MetricsView {
  /** `Date.now()` when the server started. */
  startedAt: number;
  /** Model name and architecture once loaded. */
  model?: { name: string; architecture: string };
  /** Generation requests admitted and not finished (running + waiting). */
  inFlight: number;
  /** Of those, the ones waiting for the model. */
  queueDepth: number;
  /** The largest queue depth allowed. */
  maxQueue?: number;
  /** The engine's expert statistics, once loaded. */
  experts?: ExpertStatsSnapshot;
  /** Whether `--enable-prefetch` is on. */
  prefetchEnabled: boolean;
  /** The prefetcher's statistics while experts stream (prefetch on or off). */
  prefetch?: PrefetchStatsSnapshot;
  /** The prompt cache (earlier sequences' KV caches), when the engine keeps one. */
  promptCache?: PromptCacheView;
}

/** What `/metrics` shows of the prompt cache. */
export interface PromptCacheView {
  /** Sequences held. */
  sequences: number;
  /** Bytes held. */
  bytes: number;
  /** The bound (`--cache-ram`), bytes. */
  limitBytes: number;
  /** Sequences saved since the start. */
  saved: number;
  /** Requests whose prefix came from it since the start. */
  hits: number;
}

/** The JSON `/metrics` body. */
export interface MetricsJson {
  /** Model name, or null while loading. */
  model: string | null;
  /** Architecture, or null while loading. */
  architecture: string | null;
  /** Seconds since the server started. */
  uptime_seconds: number;
  /** Expert lookups that found the expert resident, since start (0 before any). */
  cache_hit_rate: number;
  /** Prefetched experts used before eviction, of those whose fate is known (0 before any). */
  prefetch_accuracy: number;
  /** Prefetcher detail while experts stream: stalls per token, wasted bytes, recall@k per distance. */
  prefetch: {
    predictor: string;
    eviction_policy: string;
    stalls_per_token: number;
    uploads: number;
    upload_bytes: number;
    wasted_upload_bytes: number;
    recall_k: number;
    recall_by_distance: readonly number[];
    recall_next_token: number | null;
  } | null;
  /** Whether the prefetcher is on. */
  prefetch_enabled: boolean;
  /** Mean time to upload one expert (recent uploads), ms. */
  avg_expert_load_time: number;
  /** Decode tokens per second over the recent generations. */
  tokens_per_second: number;
  /** GPU→CPU syncs per decoded token over the recent generations. */
  syncs_per_token: number;
  /** Generation requests waiting for the model. */
  queue_depth: number;
  /** The most that may wait (`--max-queue`). */
  max_queue: number | null;
  /** GPU bytes held by resident experts now. */
  resident_expert_bytes: number;
  /** The expert cache budget (`--cache-size-gb`), bytes. */
  budget_bytes: number;
  /** HTTP requests. */
  requests: {
    total: number;
    in_flight: number;
    by_status: Record<string, number>;
    by_endpoint: Record<string, number>;
    rejected_queue_full: number;
    latency_ms: LatencySummary;
  };
  /** Generations. */
  generations: {
    total: number;
    by_finish_reason: Record<string, number>;
    prompt_tokens: number;
    /** Prompt tokens whose KV cache was reused (prefix reuse), part of `prompt_tokens`. */
    prompt_tokens_cached: number;
    completion_tokens: number;
    time_to_first_token_ms: LatencySummary;
  };
  /** Earlier sequences' KV caches kept in CPU memory (`--cache-ram`); null when off or loading. */
  prompt_cache: {
    sequences: number;
    bytes: number;
    limit_bytes: number;
    saved: number;
    hits: number;
  } | null;
  /** The expert cache (null while loading). */
  experts: {
    lookups: number;
    hits: number;
    misses: number;
    evictions: number;
    uploads: number;
    bytes_uploaded: number;
    prefetch_uploads: number;
    prefetch_bytes: number;
    prefetch_hits: number;
    prefetch_unused: number;
    read_errors: number;
    resident_bytes: number;
    peak_bytes: number;
    allocated_bytes: number;
    /** The cap on GPU bytes for experts: --cache-size-gb, raised to the minimum. */
    budget_bytes: number;
    /** --cache-size-gb in bytes, as asked. */
    requested_budget_bytes: number;
    /** The smallest budget: top-k × the largest layer's expert bytes. */
    min_budget_bytes: number;
    /** Layer passes computed in expert groups (a batch's experts did not fit at once). */
    split_layers: number;
    /** Expert groups of those passes. */
    split_groups: number;
    bytes_per_token: number;
    load_time_ms: { all: LatencySummary; cold: LatencySummary; warm: LatencySummary };
  } | null;
}

function prefetchAccuracy(x: ExpertStatsSnapshot | undefined, p?: PrefetchStatsSnapshot): number {
  if (p && p.prefetchUploads > 0) return p.prefetchAccuracy;
  if (!x) return 0;
  const decided = x.prefetchHits + x.prefetchUnused;
  return decided > 0 ? x.prefetchHits / decided : 0;
}

/** The JSON body of `GET /metrics`. */
export function metricsJson(m: ServerMetrics, v: MetricsView): MetricsJson {
  const byStatus: Record<string, number> = {};
  const byEndpoint: Record<string, number> = {};
  let total = 0;
  for (const [key, n] of m.requests) {
    const [endpoint, status] = key.split(" ") as [string, string];
    byStatus[status] = (byStatus[status] ?? 0) + n;
    byEndpoint[endpoint] = (byEndpoint[endpoint] ?? 0) + n;
    total += n;
  }
  const byFinish = Object.fromEntries(m.generations);
  const x = v.experts;
  return {
    model: v.model?.name ?? null,
    architecture: v.model?.architecture ?? null,
    uptime_seconds: (Date.now() - v.startedAt) / 1000,
    cache_hit_rate: x?.hitRate ?? 0,
    prefetch_accuracy: prefetchAccuracy(x, v.prefetch),
    prefetch_enabled: v.prefetchEnabled,
    prefetch: v.prefetch
      ? {
        predictor: v.prefetch.predictor,
        eviction_policy: v.prefetch.evictionPolicy,
        stalls_per_token: v.prefetch.stallsPerToken,
        uploads: v.prefetch.prefetchUploads,
        upload_bytes: v.prefetch.prefetchBytes,
        wasted_upload_bytes: v.prefetch.wastedUploadBytes,
        recall_k: v.prefetch.recallK,
        recall_by_distance: v.prefetch.recallByDistance,
        recall_next_token: Number.isFinite(v.prefetch.recallNextToken)
          ? v.prefetch.recallNextToken
          : null,
      }
      : null,
    avg_expert_load_time: x?.uploadLatency.all.meanMs ?? 0,
    tokens_per_second: m.tokensPerSecond,
    syncs_per_token: m.syncsPerToken,
    queue_depth: v.queueDepth,
    max_queue: v.maxQueue ?? null,
    resident_expert_bytes: x?.residentBytes ?? 0,
    budget_bytes: x?.budgetBytes ?? 0,
    requests: {
      total,
      in_flight: v.inFlight,
      by_status: byStatus,
      by_endpoint: byEndpoint,
      rejected_queue_full: m.queueRejections,
      latency_ms: m.requestLatency,
    },
    generations: {
      total: [...m.generations.values()].reduce((a, b) => a + b, 0),
      by_finish_reason: byFinish,
      prompt_tokens: m.promptTokens,
      prompt_tokens_cached: m.promptTokensCached,
      completion_tokens: m.completionTokens,
      time_to_first_token_ms: m.ttftLatency,
    },
    prompt_cache: v.promptCache
      ? {
        sequences: v.promptCache.sequences,
        bytes: v.promptCache.bytes,
        limit_bytes: v.promptCache.limitBytes,
        saved: v.promptCache.saved,
        hits: v.promptCache.hits,
      }
      : null,
    experts: x
      ? {
        lookups: x.lookups,
        hits: x.hits,
        misses: x.misses,
        evictions: x.evictions,
        uploads: x.uploads,
        bytes_uploaded: x.bytesUploaded,
        prefetch_uploads: x.prefetchUploads,
        prefetch_bytes: x.prefetchBytes,
        prefetch_hits: x.prefetchHits,
        prefetch_unused: x.prefetchUnused,
        read_errors: x.readErrors,
        resident_bytes: x.residentBytes,
        peak_bytes: x.peakBytes,
        allocated_bytes: x.allocatedBytes,
        budget_bytes: x.budgetBytes,
        requested_budget_bytes: x.requestedBudgetBytes,
        min_budget_bytes: x.minBudgetBytes,
        split_layers: x.splitLayers,
        split_groups: x.splitGroups,
        bytes_per_token: x.bytesPerToken,
        load_time_ms: x.uploadLatency,
      }
      : null,
  };
}

/** The content type of Prometheus text exposition format 0.0.4. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function labels(l: Record<string, string> | undefined): string {
  if (!l) return "";
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function num(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

class Exposition {
  readonly lines: string[] = [];
  family(name: string, type: "counter" | "gauge" | "histogram", help: string): void {
    this.lines.push(`# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
    this.lines.push(`# TYPE ${name} ${type}`);
  }
  sample(name: string, value: number, l?: Record<string, string>): void {
    this.lines.push(`${name}${labels(l)} ${num(value)}`);
  }
  one(
    name: string,
    type: "counter" | "gauge",
    help: string,
    value: number,
    l?: Record<string, string>,
  ): void {
    this.family(name, type, help);
    this.sample(name, value, l);
  }
  histogram(name: string, h: Histogram, l?: Record<string, string>): void {
    for (const [le, c] of h.cumulative()) this.sample(`${name}_bucket`, c, { ...l, le });
    this.sample(`${name}_sum`, h.sum, l);
    this.sample(`${name}_count`, h.count, l);
  }
}

/** The Prometheus text body of `GET /metrics` (`Accept: text/plain` or `?format=prometheus`). */
export function prometheusText(m: ServerMetrics, v: MetricsView): string {
  const e = new Exposition();
  const x = v.experts;
  e.family("odmoe_model_info", "gauge", "The served model (value 1 once loaded).");
  if (v.model) e.sample("odmoe_model_info", 1, v.model);
  e.one(
    "odmoe_model_loaded",
    "gauge",
    "1 once the model is loaded, 0 while loading.",
    v.model ? 1 : 0,
  );
  e.one(
    "odmoe_uptime_seconds",
    "gauge",
    "Seconds since the server started.",
    (Date.now() - v.startedAt) / 1000,
  );

  e.family("odmoe_http_requests_total", "counter", "HTTP requests by endpoint and status.");
  for (const [key, n] of m.requests) {
    const [endpoint, status] = key.split(" ") as [string, string];
    e.sample("odmoe_http_requests_total", n, { endpoint, status });
  }
  e.family("odmoe_request_duration_seconds", "histogram", "HTTP request latency by endpoint.");
  for (const [endpoint, h] of m.requestSeconds) {
    e.histogram("odmoe_request_duration_seconds", h, { endpoint });
  }
  e.family(
    "odmoe_time_to_first_token_seconds",
    "histogram",
    "From admission to the first generated token.",
  );
  e.histogram("odmoe_time_to_first_token_seconds", m.ttftSeconds);
  e.family("odmoe_queue_wait_seconds", "histogram", "Time a generation waited for the model.");
  e.histogram("odmoe_queue_wait_seconds", m.queueSeconds);

  e.family("odmoe_generations_total", "counter", "Finished generations by finish reason.");
  for (const [reason, n] of m.generations) {
    e.sample("odmoe_generations_total", n, { finish_reason: reason });
  }
  e.one("odmoe_prompt_tokens_total", "counter", "Prompt tokens processed.", m.promptTokens);
  e.one(
    "odmoe_prompt_tokens_cached_total",
    "counter",
    "Prompt tokens whose KV cache was reused from the previous request (prefix reuse).",
    m.promptTokensCached,
  );
  e.one("odmoe_completion_tokens_total", "counter", "Tokens generated.", m.completionTokens);
  const pc = v.promptCache;
  if (pc) {
    e.one(
      "odmoe_prompt_cache_sequences",
      "gauge",
      "Earlier sequences whose KV cache is kept in CPU memory (--cache-ram).",
      pc.sequences,
    );
    e.one("odmoe_prompt_cache_bytes", "gauge", "Bytes of KV cache kept for them.", pc.bytes);
    e.one(
      "odmoe_prompt_cache_hits_total",
      "counter",
      "Requests whose prefix was uploaded from a kept sequence instead of computed.",
      pc.hits,
    );
  }
  e.one(
    "odmoe_queue_rejections_total",
    "counter",
    "Requests refused with 503 because the queue was full.",
    m.queueRejections,
  );
  e.one("odmoe_queue_depth", "gauge", "Generation requests waiting for the model.", v.queueDepth);
  e.one(
    "odmoe_requests_in_flight",
    "gauge",
    "Generation requests running or waiting.",
    v.inFlight,
  );
  e.one(
    "odmoe_tokens_per_second",
    "gauge",
    "Decode tokens per second over the last 32 generations.",
    m.tokensPerSecond,
  );
  e.one(
    "odmoe_syncs_per_token",
    "gauge",
    "GPU to CPU syncs per decoded token over the last 32 generations.",
    m.syncsPerToken,
  );

  e.one(
    "odmoe_cache_hit_ratio",
    "gauge",
    "Expert lookups that found the expert resident.",
    x?.hitRate ?? 0,
  );
  e.one(
    "odmoe_prefetch_accuracy_ratio",
    "gauge",
    "Prefetched experts used before eviction, of those whose fate is known.",
    prefetchAccuracy(x, v.prefetch),
  );
  e.one(
    "odmoe_prefetch_enabled",
    "gauge",
    "1 when the prefetcher is on.",
    v.prefetchEnabled ? 1 : 0,
  );
  const counters: [string, string, number | undefined][] = [
    ["odmoe_expert_lookups_total", "Expert lookups.", x?.lookups],
    ["odmoe_expert_hits_total", "Expert lookups that found the expert resident.", x?.hits],
    ["odmoe_expert_misses_total", "Expert lookups that loaded the expert.", x?.misses],
    ["odmoe_expert_evictions_total", "Experts evicted.", x?.evictions],
    ["odmoe_expert_uploads_total", "Experts uploaded for misses.", x?.uploads],
    ["odmoe_expert_uploaded_bytes_total", "Bytes uploaded for misses.", x?.bytesUploaded],
    ["odmoe_expert_prefetch_uploads_total", "Experts uploaded by prefetch.", x?.prefetchUploads],
    ["odmoe_expert_prefetch_bytes_total", "Bytes uploaded by prefetch.", x?.prefetchBytes],
    ["odmoe_expert_prefetch_hits_total", "Prefetched experts later used.", x?.prefetchHits],
    [
      "odmoe_expert_prefetch_unused_total",
      "Prefetched experts evicted unused.",
      x?.prefetchUnused,
    ],
    ["odmoe_expert_read_errors_total", "Expert reads that failed.", x?.readErrors],
    [
      "odmoe_expert_split_layers_total",
      "Layer passes whose batch's experts did not fit at once, computed in expert groups.",
      x?.splitLayers,
    ],
    ["odmoe_expert_split_groups_total", "Expert groups of those passes.", x?.splitGroups],
  ];
  for (const [name, help, value] of counters) e.one(name, "counter", help, value ?? 0);
  const gauges: [string, string, number | undefined][] = [
    ["odmoe_expert_resident_bytes", "GPU bytes held by resident experts.", x?.residentBytes],
    ["odmoe_expert_peak_bytes", "Largest resident expert bytes seen.", x?.peakBytes],
    ["odmoe_expert_allocated_bytes", "GPU bytes of the expert pool.", x?.allocatedBytes],
    [
      "odmoe_expert_budget_bytes",
      "The cap on GPU bytes for experts (--cache-size-gb, raised to the minimum).",
      x?.budgetBytes,
    ],
    [
      "odmoe_expert_min_budget_bytes",
      "The smallest expert budget: top-k x the largest layer's expert bytes.",
      x?.minBudgetBytes,
    ],
    [
      "odmoe_expert_load_avg_seconds",
      "Mean upload time of one expert (recent uploads).",
      x ? x.uploadLatency.all.meanMs / 1000 : undefined,
    ],
    [
      "odmoe_expert_load_p50_seconds",
      "Median upload time of one expert (recent uploads).",
      x ? x.uploadLatency.all.p50Ms / 1000 : undefined,
    ],
    [
      "odmoe_expert_load_p95_seconds",
      "95th percentile upload time of one expert (recent uploads).",
      x ? x.uploadLatency.all.p95Ms / 1000 : undefined,
    ],
    ["odmoe_expert_bytes_per_token", "Expert bytes uploaded per token.", x?.bytesPerToken],
  ];
  for (const [name, help, value] of gauges) e.one(name, "gauge", help, value ?? 0);
  return e.lines.join("\n") + "\n";
}
