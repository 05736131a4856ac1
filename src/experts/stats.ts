/**
 * Expert cache statistics: lookups, hits, misses, evictions, bytes uploaded,
 * upload latency (cold vs warm page cache), hit rate per layer, pool memory,
 * and the per-token counters the engine reports (syncs and misses per token).
 * The pool fills most of it; the engine adds one {@link ExpertStats.recordToken}
 * per decoded token. `/metrics` and the benchmarks read
 * {@link ExpertStats.snapshot}.
 *
 * Invariants (checked by the pool's tests): `hits + misses = lookups`;
 * `bytesUploaded = Σ bytes of the experts uploaded for misses` (that is
 * `misses × bytesPerExpert` on a model whose MoE layers share one expert
 * shape); prefetch uploads are counted apart, in `prefetchUploads` and
 * `prefetchBytes`.
 *
 * @example
 * ```ts
 * import { ExpertStats } from "./stats.ts";
 *
 * const stats = new ExpertStats(2);
 * stats.recordMiss(0, 4096, 0.5, true);
 * stats.recordHit(0);
 * stats.recordToken({ syncs: 2, misses: 1 });
 * const s = stats.snapshot();
 * console.log(s.hitRate, s.layers[0]?.hitRate, s.missesPerToken); // 0.5 0.5 1
 * ```
 *
 * @module
 */

/** Percentiles of a set of latency samples, in milliseconds. */
export interface LatencySummary {
  /** Samples summarised (the most recent ones, at most the ring's capacity). */
  readonly count: number;
  /** Median. */
  readonly p50Ms: number;
  /** 95th percentile. */
  readonly p95Ms: number;
  /** Mean. */
  readonly meanMs: number;
  /** Largest. */
  readonly maxMs: number;
}

/** Hit statistics of one layer. */
export interface LayerHitStats {
  /** Layer (block) index. */
  readonly layer: number;
  /** Experts looked up in this layer. */
  readonly lookups: number;
  /** Of those, found resident. */
  readonly hits: number;
  /** Of those, uploaded on demand. */
  readonly misses: number;
  /** `hits / lookups`, 0 with no lookups. */
  readonly hitRate: number;
}

/** A JSON-ready copy of {@link ExpertStats} at one moment. */
export interface ExpertStatsSnapshot {
  /** Experts looked up (one per routed expert per call, distinct within a call). */
  readonly lookups: number;
  /** Lookups that found the expert resident. */
  readonly hits: number;
  /** Lookups that had to upload the expert. */
  readonly misses: number;
  /** `hits / lookups`, 0 with no lookups. */
  readonly hitRate: number;
  /** Experts evicted (for misses and for prefetches). */
  readonly evictions: number;
  /** Experts uploaded because of a miss (equals `misses`). */
  readonly uploads: number;
  /** Bytes uploaded because of misses (file bytes, before 4-byte padding). */
  readonly bytesUploaded: number;
  /** Experts uploaded by prefetch or preload. */
  readonly prefetchUploads: number;
  /** Bytes uploaded by prefetch or preload. */
  readonly prefetchBytes: number;
  /** Prefetched experts that were later used (a hit before their eviction). */
  readonly prefetchHits: number;
  /** Prefetched experts evicted without being used. */
  readonly prefetchUnused: number;
  /** Expert reads that failed (missing or truncated file). */
  readonly readErrors: number;
  /**
   * CPU time of the `writeBuffer` calls of one expert (the copy out of the
   * mapped file, page faults included), every upload (misses and prefetches).
   * `cold`: some of its bytes were not in the OS page cache before the copy;
   * `warm`: all were. `all` also holds uploads from sources that cannot tell.
   */
  readonly uploadLatency: {
    readonly cold: LatencySummary;
    readonly warm: LatencySummary;
    readonly all: LatencySummary;
  };
  /** Per expert layer, in layer order. */
  readonly layers: readonly LayerHitStats[];
  /** GPU bytes of the slots holding an expert now. */
  readonly residentBytes: number;
  /** The largest `residentBytes` seen. */
  readonly peakBytes: number;
  /** GPU bytes of the pool's arenas (allocated once). */
  readonly allocatedBytes: number;
  /** The cap on GPU bytes for experts: the budget asked for, raised to the minimum. */
  readonly budgetBytes: number;
  /** The budget asked for (`--cache-size-gb` in bytes). */
  readonly requestedBudgetBytes: number;
  /** The smallest budget: one token's chosen experts of the largest layer. */
  readonly minBudgetBytes: number;
  /** Layer passes whose batch needed more experts than fit at once, computed in expert groups. */
  readonly splitLayers: number;
  /** Expert groups of those passes (each group one upload + compute). */
  readonly splitGroups: number;
  /** Tokens recorded with {@link ExpertStats.recordToken}. */
  readonly tokens: number;
  /** GPU→CPU syncs of those tokens. */
  readonly syncs: number;
  /** Misses of those tokens (as the engine counted them). */
  readonly tokenMisses: number;
  /** `syncs / tokens`, 0 with no tokens. */
  readonly syncsPerToken: number;
  /** `tokenMisses / tokens`, 0 with no tokens. */
  readonly missesPerToken: number;
  /** `(bytesUploaded + prefetchBytes) / tokens`, 0 with no tokens. */
  readonly bytesPerToken: number;
}

/** The most recent latency samples, in a fixed-size ring (no allocation per sample). */
export class LatencyRing {
  readonly #samples: Float64Array;
  #n = 0;
  #next = 0;

  /** A ring keeping the last `capacity` samples. */
  constructor(capacity = 4096) {
    this.#samples = new Float64Array(capacity);
  }

  /** Adds one sample, dropping the oldest when full. */
  add(ms: number): void {
    this.#samples[this.#next] = ms;
    this.#next = (this.#next + 1) % this.#samples.length;
    if (this.#n < this.#samples.length) this.#n++;
  }

  /** Percentiles (nearest rank) of the samples held. */
  summary(): LatencySummary {
    if (this.#n === 0) return { count: 0, p50Ms: 0, p95Ms: 0, meanMs: 0, maxMs: 0 };
    const sorted = this.#samples.slice(0, this.#n).sort();
    const rank = (p: number) => sorted[Math.min(this.#n - 1, Math.ceil(p * this.#n) - 1)]!;
    let sum = 0;
    for (const v of sorted) sum += v;
    return {
      count: this.#n,
      p50Ms: rank(0.5),
      p95Ms: rank(0.95),
      meanMs: sum / this.#n,
      maxMs: sorted[this.#n - 1]!,
    };
  }

  /** Forgets every sample. */
  clear(): void {
    this.#n = 0;
    this.#next = 0;
  }
}

/** Mutable expert cache counters; one per pool (`pool.stats`). */
export class ExpertStats {
  /** Rows of the per-layer counters. */
  readonly nLayer: number;
  /** Lookups. */
  lookups = 0;
  /** Hits. */
  hits = 0;
  /** Misses. */
  misses = 0;
  /** Evictions. */
  evictions = 0;
  /** Bytes uploaded for misses. */
  bytesUploaded = 0;
  /** Experts uploaded by prefetch or preload. */
  prefetchUploads = 0;
  /** Bytes uploaded by prefetch or preload. */
  prefetchBytes = 0;
  /** Prefetched experts used before eviction. */
  prefetchHits = 0;
  /** Prefetched experts evicted unused. */
  prefetchUnused = 0;
  /** Failed expert reads. */
  readErrors = 0;
  /** GPU bytes of occupied slots. */
  residentBytes = 0;
  /** Largest `residentBytes` seen. */
  peakBytes = 0;
  /** GPU bytes of the arenas. */
  allocatedBytes = 0;
  /** The cap on GPU bytes for experts. */
  budgetBytes = 0;
  /** The budget asked for. */
  requestedBudgetBytes = 0;
  /** The smallest budget. */
  minBudgetBytes = 0;
  /** Layer passes computed in expert groups. */
  splitLayers = 0;
  /** Expert groups of those passes. */
  splitGroups = 0;
  /** Tokens recorded. */
  tokens = 0;
  /** Syncs of the recorded tokens. */
  syncs = 0;
  /** Misses of the recorded tokens. */
  tokenMisses = 0;
  /** Per layer: lookups. */
  readonly layerLookups: Float64Array;
  /** Per layer: hits. */
  readonly layerHits: Float64Array;
  /** Per layer: misses. */
  readonly layerMisses: Float64Array;
  readonly #cold: LatencyRing;
  readonly #warm: LatencyRing;
  readonly #all: LatencyRing;

  /** Counters for a model of `nLayer` layers; latency rings keep `latencySamples` each. */
  constructor(nLayer: number, latencySamples = 4096) {
    this.nLayer = nLayer;
    this.layerLookups = new Float64Array(nLayer);
    this.layerHits = new Float64Array(nLayer);
    this.layerMisses = new Float64Array(nLayer);
    this.#cold = new LatencyRing(latencySamples);
    this.#warm = new LatencyRing(latencySamples);
    this.#all = new LatencyRing(latencySamples);
  }

  /** One lookup of `layer` that found its expert resident. */
  recordHit(layer: number): void {
    this.lookups++;
    this.hits++;
    this.layerLookups[layer]!++;
    this.layerHits[layer]!++;
  }

  /**
   * One lookup of `layer` that uploaded its expert: `bytes` uploaded in `ms`;
   * `cold` says whether some bytes were outside the page cache (undefined:
   * unknown).
   */
  recordMiss(layer: number, bytes: number, ms: number, cold: boolean | undefined): void {
    this.lookups++;
    this.misses++;
    this.layerLookups[layer]!++;
    this.layerMisses[layer]!++;
    this.bytesUploaded += bytes;
    this.#latency(ms, cold);
  }

  /** One expert uploaded by prefetch or preload (not a lookup). */
  recordPrefetch(bytes: number, ms: number, cold: boolean | undefined): void {
    this.prefetchUploads++;
    this.prefetchBytes += bytes;
    this.#latency(ms, cold);
  }

  /** One expert evicted; `prefetchedUnused` when it was prefetched and never used. */
  recordEviction(prefetchedUnused = false): void {
    this.evictions++;
    if (prefetchedUnused) this.prefetchUnused++;
  }

  /** A prefetched expert was used for the first time. */
  recordPrefetchHit(): void {
    this.prefetchHits++;
  }

  /** An expert read failed. */
  recordReadError(): void {
    this.readErrors++;
  }

  /** The pool's memory now; `peakBytes` follows `residentBytes`. */
  setMemory(m: {
    residentBytes: number;
    allocatedBytes: number;
    budgetBytes: number;
    requestedBudgetBytes?: number;
    minBudgetBytes?: number;
  }): void {
    this.residentBytes = m.residentBytes;
    this.allocatedBytes = m.allocatedBytes;
    this.budgetBytes = m.budgetBytes;
    this.requestedBudgetBytes = m.requestedBudgetBytes ?? m.budgetBytes;
    this.minBudgetBytes = m.minBudgetBytes ?? 0;
    if (m.residentBytes > this.peakBytes) this.peakBytes = m.residentBytes;
  }

  /** A layer pass computed in `groups` expert groups (its batch's experts did not fit at once). */
  recordSplit(groups: number): void {
    this.splitLayers++;
    this.splitGroups += groups;
  }

  /** One decoded token: the GPU→CPU syncs it took and the misses it hit (engine counts). */
  recordToken(t: { syncs: number; misses: number }): void {
    this.tokens++;
    this.syncs += t.syncs;
    this.tokenMisses += t.misses;
  }

  /** A JSON-ready copy of every counter and summary. */
  snapshot(): ExpertStatsSnapshot {
    const layers: LayerHitStats[] = [];
    for (let l = 0; l < this.nLayer; l++) {
      const lookups = this.layerLookups[l]!;
      const hits = this.layerHits[l]!;
      layers.push({
        layer: l,
        lookups,
        hits,
        misses: this.layerMisses[l]!,
        hitRate: lookups > 0 ? hits / lookups : 0,
      });
    }
    const perToken = (n: number) => this.tokens > 0 ? n / this.tokens : 0;
    return {
      lookups: this.lookups,
      hits: this.hits,
      misses: this.misses,
      hitRate: this.lookups > 0 ? this.hits / this.lookups : 0,
      evictions: this.evictions,
      uploads: this.misses,
      bytesUploaded: this.bytesUploaded,
      prefetchUploads: this.prefetchUploads,
      prefetchBytes: this.prefetchBytes,
      prefetchHits: this.prefetchHits,
      prefetchUnused: this.prefetchUnused,
      readErrors: this.readErrors,
      uploadLatency: {
        cold: this.#cold.summary(),
        warm: this.#warm.summary(),
        all: this.#all.summary(),
      },
      layers,
      residentBytes: this.residentBytes,
      peakBytes: this.peakBytes,
      allocatedBytes: this.allocatedBytes,
      budgetBytes: this.budgetBytes,
      requestedBudgetBytes: this.requestedBudgetBytes,
      minBudgetBytes: this.minBudgetBytes,
      splitLayers: this.splitLayers,
      splitGroups: this.splitGroups,
      tokens: this.tokens,
      syncs: this.syncs,
      tokenMisses: this.tokenMisses,
      syncsPerToken: perToken(this.syncs),
      missesPerToken: perToken(this.tokenMisses),
      bytesPerToken: perToken(this.bytesUploaded + this.prefetchBytes),
    };
  }

  /**
   * Zeroes every counter and latency sample; `peakBytes` restarts from the
   * current `residentBytes`, and the memory figures are kept.
   */
  reset(): void {
    this.lookups =
      this.hits =
      this.misses =
      this.evictions =
        0;
    this.bytesUploaded = this.prefetchUploads = this.prefetchBytes = 0;
    this.prefetchHits = this.prefetchUnused = this.readErrors = 0;
    this.tokens = this.syncs = this.tokenMisses = 0;
    this.splitLayers = this.splitGroups = 0;
    this.peakBytes = this.residentBytes;
    this.layerLookups.fill(0);
    this.layerHits.fill(0);
    this.layerMisses.fill(0);
    this.#cold.clear();
    this.#warm.clear();
    this.#all.clear();
  }

  #latency(ms: number, cold: boolean | undefined): void {
    this.#all.add(ms);
    if (cold === true) this.#cold.add(ms);
    else if (cold === false) this.#warm.add(ms);
  }
}
