/**
 * The expert scheduler: the one object the forward pass and the generation
 * loop ask about routed experts. It wraps the {@link ExpertPool} and, while
 * experts stream, the {@link Prefetcher}, and answers two questions:
 *
 * - after a readback of routes, **which layer missed** ({@linkcode
 *   ExpertScheduler.firstMiss}): the first layer at which a token named an
 *   expert that was not resident when the GPU looked;
 * - **repair that layer** ({@linkcode ExpertScheduler.repair}): upload its
 *   experts (in groups the pool can hold when they do not fit at once) and
 *   tell the caller which pass to record after each group.
 *
 * It also counts the lookups of settled routes (hits for the eviction
 * policy and the statistics), keeps the stall count, drops a layer's
 * experts after a non-finite result and reloads them when every expert is
 * meant to be resident, and forwards the prefetcher's hooks (no-ops while
 * every expert is resident, when there is no prefetcher).
 *
 * @module
 */

import type { BufferBinding } from "../gpu/dispatch.ts";
import type { ExpertPool } from "./pool.ts";
import type { ExpertStats } from "./stats.ts";
import type { Prefetcher } from "./prefetcher.ts";
import type { PrefetchStatsSnapshot } from "./prefetch_stats.ts";

/** The routing shape the scheduler reads routes with. */
export interface RouteShape {
  /** Layers. */
  readonly nLayer: number;
  /** Experts chosen per token. */
  readonly nExpertUsed: number;
  /** Leading blocks without experts (DeepSeek); default 0. */
  readonly nLayerDenseLead?: number;
}

/** A layer at which some token's experts were not resident, with all the experts its tokens chose there. */
export interface ExpertMiss {
  /** The layer. */
  readonly layer: number;
  /** Distinct experts the batch's tokens chose at that layer. */
  readonly experts: readonly number[];
}

/**
 * One pass of a repair, recorded by the caller after the scheduler loaded
 * its experts: `"whole"` resumes the batch from the layer (every expert of
 * it fits at once); `"partial"` computes that layer's MoE step for one
 * group only; `"last"` computes the last group and resumes the batch.
 */
export type RepairPass = "whole" | "partial" | "last";

/** The expert scheduler (see the module doc). */
export class ExpertScheduler {
  /** Batches repaired after a missing expert, since load. */
  stalls = 0;
  #dropped = false;

  /**
   * Builds the scheduler over a pool and, while experts stream, a
   * prefetcher (which is then the scheduler's to destroy).
   */
  constructor(
    /** The GPU expert pool. */
    readonly pool: ExpertPool,
    readonly shape: RouteShape,
    /** The prefetcher (prefetch on or off) while experts stream. */
    readonly prefetcher?: Prefetcher,
  ) {}

  /** Whether experts stream (some may be missing when the GPU looks); false when every expert is resident. */
  get streaming(): boolean {
    return !this.pool.allResident;
  }

  /** u32 words of one token's routes: `nLayer × nExpertUsed`. */
  get routeWords(): number {
    return this.shape.nLayer * this.shape.nExpertUsed;
  }

  /** Expert cache statistics. */
  get stats(): ExpertStats {
    return this.pool.stats;
  }

  /** Prefetch statistics while experts stream; none when every expert fits. */
  get prefetchStats(): PrefetchStatsSnapshot | undefined {
    return this.prefetcher?.stats.snapshot();
  }

  /**
   * The first layer from `fromLayer` on at which any of `nTokens` routes
   * (u32 `[nTokens, nLayer, nExpertUsed]`, token-major) names an expert that
   * is not resident, with that layer's experts; null when every expert was
   * resident. Layers before a repaired one are not looked at again: they
   * ran with their experts present, which the repair's uploads may since
   * have evicted.
   */
  firstMiss(routes: Uint32Array, nTokens: number, fromLayer = 0): ExpertMiss | null {
    const { nLayer: L, nExpertUsed: K } = this.shape;
    // leading dense blocks (DeepSeek) route nothing
    for (let l = Math.max(fromLayer, this.shape.nLayerDenseLead ?? 0); l < L; l++) {
      const wanted = new Set<number>();
      for (let t = 0; t < nTokens; t++) {
        for (let k = 0; k < K; k++) wanted.add(routes[(t * L + l) * K + k]!);
      }
      for (const e of wanted) {
        if (this.pool.slotOf(l, e) < 0) return { layer: l, experts: [...wanted] };
      }
    }
    return null;
  }

  /**
   * Repairs `miss`: for each group of its experts the pool can hold at once
   * (the resident ones first, so they are used before any is evicted; one
   * group when they all fit), loads the group and yields the pass the
   * caller records and submits before the next group is loaded (the
   * uploads are queue-ordered with the submits). Counts the stall.
   */
  *repair(miss: ExpertMiss): Generator<RepairPass, void, void> {
    this.stalls++;
    const p = this.prefetcher;
    p?.cursor(miss.layer);
    const groups = this.#groups(miss.layer, miss.experts);
    for (const group of groups.slice(0, -1)) {
      this.pool.ensure(miss.layer, group);
      yield "partial";
    }
    const last = groups[groups.length - 1]!;
    if (groups.length > 1) this.pool.stats.recordSplit(groups.length);
    this.pool.ensure(miss.layer, last);
    p?.onStall(miss.layer, last);
    yield groups.length > 1 ? "last" : "whole";
  }

  /**
   * `experts` of `layer` cut into groups the pool can hold at once (its
   * slots), the resident ones first; one group when they all fit.
   */
  #groups(layer: number, experts: readonly number[]): number[][] {
    const n = this.pool.slotsFor(layer);
    if (experts.length <= n) return [[...experts]];
    const resident = experts.filter((e) => this.pool.slotOf(layer, e) >= 0);
    const absent = experts.filter((e) => this.pool.slotOf(layer, e) < 0);
    const order = [...resident, ...absent];
    const groups: number[][] = [];
    for (let i = 0; i < order.length; i += n) groups.push(order.slice(i, i + n));
    return groups;
  }

  /**
   * Counts the lookups of settled routes as hits (and marks the experts
   * used), for every layer not in `repaired` (those were counted when the
   * repair loaded them).
   */
  account(routes: Uint32Array, nTokens: number, repaired: ReadonlySet<number> = new Set()): void {
    const { nLayer: L, nExpertUsed: K } = this.shape;
    for (let l = this.shape.nLayerDenseLead ?? 0; l < L; l++) {
      if (repaired.has(l)) continue;
      const ids: number[] = [];
      for (let t = 0; t < nTokens; t++) {
        for (let k = 0; k < K; k++) ids.push(routes[(t * L + l) * K + k]!);
      }
      this.pool.touch(l, ids);
    }
  }

  /** Decode tokens accepted after a window: per-token syncs and misses for the statistics. */
  recordTokens(n: number, t: { syncs: number; misses: number }): void {
    for (let j = 0; j < n; j++) this.pool.stats.recordToken(t);
  }

  /**
   * Before a generation: when every expert is meant to be resident, refills
   * the slots of experts dropped after a non-finite result (an unreadable
   * file throws `ExpertReadError` here).
   */
  refill(): void {
    if (this.pool.allResident && this.#dropped) {
      this.pool.preloadAll();
      this.#dropped = false;
    }
  }

  /**
   * After a non-finite result at `layer` (`nLayer` = the output head):
   * drops the routed experts of that layer (the last one for the head), so
   * a corrupt file's bytes do not outlive the repair.
   */
  dropAfterNonFinite(layer: number): void {
    const dropFrom = Math.min(layer, this.shape.nLayer - 1);
    try {
      if (this.pool.dropLayer(dropFrom) > 0) this.#dropped = true;
    } catch (e) {
      if (!(e instanceof RangeError)) throw e; // a dense layer: nothing to drop
    }
  }

  // The prefetcher's hooks (see src/experts/prefetcher.ts); nothing without one.

  /** Ring slot for prefill batches and repairs (decode tokens use slots 0 … window−1). */
  get batchSlot(): number {
    return this.prefetcher?.batchSlot ?? 0;
  }

  /** Records the predictor after a batch's forward pass, into ring `slot` (default the batch slot). */
  record(encoder: GPUCommandEncoder, nTokens: number, slot = this.batchSlot): void {
    this.prefetcher?.record(encoder, nTokens, slot);
  }

  /** The predictions to read back with the routes (none without a GPU predictor). */
  readRange(nTokens: number, slot = this.batchSlot): BufferBinding[] {
    return this.prefetcher?.readRange(slot, nTokens) ?? [];
  }

  /** The predictions read back (see `Prefetcher.seen`). */
  seen(
    bytes: ArrayBuffer | undefined,
    nTokens: number,
    o?: { token?: number; firstMiss?: number },
  ): void {
    this.prefetcher?.seen(bytes, nTokens, o);
  }

  /** Settled routes of accepted tokens (see `Prefetcher.settle`). */
  settle(routes: Uint32Array, nTokens: number, decode: boolean): void {
    this.prefetcher?.settle(routes, nTokens, decode);
  }

  /** Before the next decode window: prefetch the next token's first layers. */
  beforeNext(): void {
    this.prefetcher?.beforeNext();
  }

  /** Frees the prefetcher and the pool, and closes the expert source. */
  destroy(): void {
    this.prefetcher?.destroy();
    this.pool.destroy();
    this.pool.source.close();
  }
}
