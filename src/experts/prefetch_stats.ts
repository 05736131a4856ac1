/**
 * Prefetch statistics, for `/metrics` and the benchmarks: how many
 * prefetched experts were used before their eviction, the predictor's
 * recall@k per lookahead distance (measured on decoded tokens against the
 * routes they took), the bytes uploaded for nothing, and stalls per decoded
 * token. Upload counts come from the pool's {@linkcode ExpertStats}.
 *
 * @module
 */

import type { ExpertPool } from "./pool.ts";

/** A JSON-ready copy of {@linkcode PrefetchStats}. */
export interface PrefetchStatsSnapshot {
  /** The predictor: `"lookahead"`, `"shadow"` or `"history"`. */
  readonly predictor: string;
  /** The pool's eviction policy. */
  readonly evictionPolicy: string;
  /** Decoded tokens counted. */
  readonly tokens: number;
  /** Stalls (repairs) of those tokens. */
  readonly stalls: number;
  /** `stalls / tokens`. */
  readonly stallsPerToken: number;
  /** Experts uploaded by prefetch. */
  readonly prefetchUploads: number;
  /** Bytes uploaded by prefetch. */
  readonly prefetchBytes: number;
  /** Prefetched experts used before their eviction. */
  readonly prefetchHits: number;
  /** Prefetched experts evicted unused. */
  readonly prefetchUnused: number;
  /** `prefetchHits / prefetchUploads` (the rest unused so far or evicted unused); 0 without uploads. */
  readonly prefetchAccuracy: number;
  /** Bytes of prefetched experts evicted unused. */
  readonly wastedUploadBytes: number;
  /** k of recall@k (the model's experts per token). */
  readonly recallK: number;
  /** Predictor recall@k per lookahead distance (index 0: the next layer), within the token. */
  readonly recallByDistance: readonly number[];
  /** Routed experts counted per distance. */
  readonly recallCounts: readonly number[];
  /** Recall@k of the predictions for the next token's layers (NaN when none were made). */
  readonly recallNextToken: number;
}

/** Prefetch counters (see the module doc). */
export class PrefetchStats {
  /** Decoded tokens. */
  tokens = 0;
  /** Their stalls. */
  stalls = 0;
  readonly #hits: number[];
  readonly #counts: number[];
  #nextHits = 0;
  #nextCount = 0;
  readonly #base: { uploads: number; bytes: number; hits: number; unused: number };

  /** Counters for a pool and predictor; upload counters start from the pool's current ones. */
  constructor(
    readonly pool: ExpertPool,
    readonly predictor: string,
    readonly evictionPolicy: string,
    depth: number,
    readonly k: number,
  ) {
    this.#hits = new Array(depth).fill(0);
    this.#counts = new Array(depth).fill(0);
    const s = pool.stats;
    this.#base = {
      uploads: s.prefetchUploads,
      bytes: s.prefetchBytes,
      hits: s.prefetchHits,
      unused: s.prefetchUnused,
    };
  }

  /** `n` decoded tokens that stalled `stalls` times. */
  recordTokens(n: number, stalls: number): void {
    this.tokens += n;
    this.stalls += stalls;
  }

  /**
   * One prediction at `distance` against the `K` experts the layer chose
   * (`routes[off …]`): counts how many are among its first k.
   */
  recordRecall(
    distance: number,
    predicted: readonly number[],
    routes: Uint32Array,
    off: number,
    K: number,
    nextToken: boolean,
  ): void {
    let hits = 0;
    const top = predicted.slice(0, this.k);
    for (let j = 0; j < K; j++) if (top.includes(routes[off + j]!)) hits++;
    if (nextToken) {
      this.#nextHits += hits;
      this.#nextCount += K;
    } else if (distance >= 1 && distance <= this.#hits.length) {
      this.#hits[distance - 1]! += hits;
      this.#counts[distance - 1]! += K;
    }
  }

  /** Zeroes the counters (uploads count from the pool's current figures). */
  reset(): void {
    this.tokens = this.stalls = 0;
    this.#hits.fill(0);
    this.#counts.fill(0);
    this.#nextHits = this.#nextCount = 0;
    const s = this.pool.stats;
    this.#base.uploads = s.prefetchUploads;
    this.#base.bytes = s.prefetchBytes;
    this.#base.hits = s.prefetchHits;
    this.#base.unused = s.prefetchUnused;
  }

  /** A JSON-ready copy. */
  snapshot(): PrefetchStatsSnapshot {
    const s = this.pool.stats;
    const uploads = s.prefetchUploads - this.#base.uploads;
    const hits = s.prefetchHits - this.#base.hits;
    const unused = s.prefetchUnused - this.#base.unused;
    const groups = this.pool.groups;
    const perExpert = groups.reduce((a, g) => a + g.bytesPerExpert, 0) / Math.max(1, groups.length);
    return {
      predictor: this.predictor,
      evictionPolicy: this.evictionPolicy,
      tokens: this.tokens,
      stalls: this.stalls,
      stallsPerToken: this.tokens > 0 ? this.stalls / this.tokens : 0,
      prefetchUploads: uploads,
      prefetchBytes: s.prefetchBytes - this.#base.bytes,
      prefetchHits: hits,
      prefetchUnused: unused,
      prefetchAccuracy: uploads > 0 ? hits / uploads : 0,
      wastedUploadBytes: unused * perExpert,
      recallK: this.k,
      recallByDistance: this.#hits.map((h, d) => this.#counts[d]! > 0 ? h / this.#counts[d]! : NaN),
      recallCounts: [...this.#counts],
      recallNextToken: this.#nextCount > 0 ? this.#nextHits / this.#nextCount : NaN,
    };
  }
}
