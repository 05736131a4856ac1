/**
 * A predictor-aware eviction policy for the expert pool: evict the expert
 * whose next use is furthest away, as far as the engine can tell.
 *
 * A token visits the layers in order, 0 → nLayer−1, then the next token
 * starts again at 0; so under memory pressure LRU evicts exactly the experts
 * needed soonest (the layers visited longest ago are the next ones). This
 * policy ranks a slot by:
 *
 * 1. whether a predictor expects its expert soon (kept; see
 *    {@linkcode PredictivePolicy.setPredicted});
 * 2. staleness: how many visits of its layer went by without using it (the
 *    least stale are kept: recently used experts tend to be used again);
 * 3. how many layers away its layer is from the one being computed (the
 *    engine's cursor, {@linkcode PredictivePolicy.setCursor}): the layer just
 *    computed is needed again only by the next token, the next layer now;
 * 4. least recently used, to break ties.
 *
 * The engine moves the cursor before each repair's uploads and calls
 * {@linkcode PredictivePolicy.nextToken} when a token is done.
 *
 * {@linkcode LeastStalePolicy} ranks by rule 2 then 4 alone (SpecMD's
 * least-stale eviction).
 *
 * Victim selection scans the pool's slots (O(slots) per eviction, with no
 * allocation beyond the LRU order); touch and remove are O(1).
 *
 * @example
 * ```ts ignore
 * const pool = new ExpertPool(gpu, source, { budgetBytes, minSlots: topK, policy: predictivePolicy(nLayer) });
 * const p = pool.policyOf(layer) as PredictivePolicy;
 * p.setCursor(layer);
 * p.setPredicted(new Set(["5:3", "5:7"]));
 * ```
 *
 * @module
 */

import {
  type EvictionContext,
  type EvictionPolicy,
  type EvictionPolicyFactory,
  expertKey,
  LruPolicy,
  lruPolicy,
} from "./eviction.ts";

/**
 * The eviction policies the engine can use: `"lru"`, `"predictive"` (this
 * module's {@linkcode PredictivePolicy}) and `"least-stale"`
 * ({@linkcode LeastStalePolicy}).
 */
export type EvictionPolicyName = "lru" | "predictive" | "least-stale";

/** Every {@linkcode EvictionPolicyName}, for flag parsing and errors. */
export const EVICTION_POLICY_NAMES: readonly EvictionPolicyName[] = [
  "lru",
  "predictive",
  "least-stale",
];

/** The policy of the module doc, over the pool's slots. */
export class PredictivePolicy implements EvictionPolicy {
  readonly #ctx: EvictionContext;
  readonly #lru: LruPolicy;
  readonly #nLayer: number;
  #cursor: number;
  #predicted: ReadonlySet<string> = new Set();
  #token = 0;
  readonly #lastToken: Float64Array;

  /** A policy over `ctx`'s slots for a model of `nLayer` layers. */
  constructor(ctx: EvictionContext, nLayer: number) {
    if (!Number.isInteger(nLayer) || nLayer < 1) {
      throw new RangeError(`PredictivePolicy: nLayer must be a positive integer, got ${nLayer}`);
    }
    this.#ctx = ctx;
    this.#lru = new LruPolicy(ctx.nSlots);
    this.#nLayer = nLayer;
    this.#cursor = nLayer - 1;
    this.#lastToken = new Float64Array(ctx.nSlots);
  }

  /** A token is done: the next one starts at layer 0 (cursor nLayer − 1). */
  nextToken(): void {
    this.#token++;
    this.#cursor = this.#nLayer - 1;
  }

  /**
   * Visits of the slot's layer since its expert was last used: tokens since,
   * less one when the current token has not reached that layer yet.
   */
  staleness(slot: number): number {
    const layer = this.#ctx.layerOf(slot);
    return this.#token - this.#lastToken[slot]! - (layer > this.#cursor ? 1 : 0);
  }

  /**
   * The layer being computed (its experts of this token are requested, hence
   * protected; its others are needed only by the next token). `nLayer − 1`
   * (the initial value) means between tokens: layer 0 comes next.
   */
  setCursor(layer: number): void {
    this.#cursor = ((layer % this.#nLayer) + this.#nLayer) % this.#nLayer;
  }

  /** The layer being computed. */
  get cursor(): number {
    return this.#cursor;
  }

  /** Experts ({@linkcode expertKey}) a predictor expects soon; replaces the previous set. */
  setPredicted(keys: ReadonlySet<string>): void {
    this.#predicted = keys;
  }

  /** Layers from the cursor to `layer`'s next visit minus one: 0 for the next layer, nLayer − 1 for the cursor's. */
  distance(layer: number): number {
    const L = this.#nLayer;
    return (((layer - this.#cursor - 1) % L) + L) % L;
  }

  /** `slot` was filled or used. */
  touch(slot: number): void {
    this.#lru.touch(slot);
    this.#lastToken[slot] = this.#token;
  }

  /** `slot` was emptied. */
  remove(slot: number): void {
    this.#lru.remove(slot);
  }

  /**
   * The slot not skipped that is not predicted, stalest, furthest from use,
   * least recently used, in that order; −1 if every slot is skipped.
   */
  victim(skip: (slot: number) => boolean): number {
    return this.pick(skip, true, true);
  }

  /**
   * The victim by the module doc's ranking, leaving out the predictions
   * (rule 1) and the distance (rule 3) when asked: staleness and LRU always
   * rank.
   */
  protected pick(
    skip: (slot: number) => boolean,
    usePredictions: boolean,
    useDistance: boolean,
  ): number {
    let best = -1;
    let bestPredicted = true;
    let bestStale = -Infinity;
    let bestDistance = -1;
    // oldest first, so the first of equals is the least recently used
    for (const s of this.#lru.order()) {
      if (skip(s)) continue;
      const layer = this.#ctx.layerOf(s);
      const predicted = usePredictions &&
        this.#predicted.has(expertKey(layer, this.#ctx.expertOf(s)));
      const stale = this.staleness(s);
      const d = useDistance ? this.distance(layer) : 0;
      const better = best < 0 ||
        (predicted !== bestPredicted
          ? !predicted
          : stale !== bestStale
          ? stale > bestStale
          : d > bestDistance);
      if (better) {
        best = s;
        bestPredicted = predicted;
        bestStale = stale;
        bestDistance = d;
      }
    }
    return best;
  }
}

/** A factory for the pool's `policy` option: a {@linkcode PredictivePolicy} per slot group. */
export function predictivePolicy(nLayer: number): EvictionPolicyFactory {
  return (ctx) => new PredictivePolicy(ctx, nLayer);
}

/**
 * The least-stale policy (SpecMD, 2026): evict the expert whose layer has
 * been visited the most times since the expert was last used
 * ({@linkcode PredictivePolicy.staleness}); ties go to the least recently
 * used. Unlike {@linkcode PredictivePolicy} it ignores the predictor's
 * expectations and the distance to the layer's next visit. It follows the
 * engine's cursor and tokens the same way (the prefetcher drives both).
 */
export class LeastStalePolicy extends PredictivePolicy {
  /** The stalest slot not skipped, least recently used first among equals; −1 if every slot is skipped. */
  override victim(skip: (slot: number) => boolean): number {
    return this.pick(skip, false, false);
  }
}

/** A factory for the pool's `policy` option: a {@linkcode LeastStalePolicy} per slot group. */
export function leastStalePolicy(nLayer: number): EvictionPolicyFactory {
  return (ctx) => new LeastStalePolicy(ctx, nLayer);
}

/** The pool's `policy` option for `name` on a model of `nLayer` layers. */
export function evictionPolicyFactory(
  name: EvictionPolicyName,
  nLayer: number,
): EvictionPolicyFactory {
  switch (name) {
    case "lru":
      return lruPolicy;
    case "predictive":
      return predictivePolicy(nLayer);
    case "least-stale":
      return leastStalePolicy(nLayer);
    default:
      throw new RangeError(
        `evictionPolicy must be one of ${EVICTION_POLICY_NAMES.join(", ")}, got ${
          JSON.stringify(name)
        }`,
      );
  }
}
