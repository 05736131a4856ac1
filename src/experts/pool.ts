/**
 * The GPU expert pool: one set of equal slots, each holding one routed
 * expert's parts (gate, up, down, …), filled on demand from an
 * {@link ExpertSource} and recycled by a pluggable eviction policy (LRU).
 *
 * Budget. `--cache-size-gb` is a hard cap on the GPU bytes that hold
 * routed experts. When it covers every expert at its own size
 * ({@link ExpertPool.allFit}), each slot group gets one slot per expert and
 * nothing streams. Otherwise every slot is {@link ExpertPool.slotBytes}
 * long — the largest expert of any layer (each part rounded up to 4
 * bytes) — and the pool allocates `⌊budgetBytes / slotBytes⌋` of them, at
 * most one per expert, shared by every layer. Either way the slots are
 * allocated once, so the bytes allocated for experts, and with them the
 * bytes resident, never exceed the budget, whatever the batch, the
 * prefetcher or the mix of tensor types. The smallest budget is one
 * token's chosen experts of the largest layer (`minSlots × slotBytes`,
 * `minSlots` = top-k); a smaller one (0 included) is raised to it
 * ({@link ExpertPool.budgetRaised}). A batch needing more distinct experts
 * of a layer than it has slots ({@link ExpertPool.slotsFor}) is the
 * caller's to split into expert groups; {@link ExpertPool.ensure} refuses it.
 *
 * Layout. Slots live in *arenas*, one GPU buffer each, at most
 * `maxStorageBufferBindingSize`, holding consecutive slots (the kernels'
 * `idBase` is the first), each slot's parts one after the other. Layers
 * whose experts have the same shape (parts' role, kind, type and slice
 * shape) form a *slot group*; files whose layers differ (a Q4_K_M file
 * gives half the layers Q6_K `ffn_down_exps`) have several; when every
 * expert fits, each layer is a group of its own (its own arenas). A group sees
 * the arenas it may use through its own typed {@link GpuWeight} stacks
 * (slots `slotBytes` apart, part `p` at byte `partOffsets[p]` of a slot):
 * while streaming every group sees every arena, so a slot that held a Q6_K
 * layer's expert can next hold a Q4_K layer's. The engine prepares one
 * `matmul_id` dispatch per arena with its `idBase`.
 *
 * Residency table. An i32 GPU buffer `[nLayer, nExpert]` maps (layer,
 * expert) → slot, or −1. The CPU keeps a mirror and rewrites only the
 * entries a call changed (merged into few `writeBuffer`s).
 *
 * Uploads are `queue.writeBuffer` straight from the source's (mapped) views,
 * with one `gpu.flush()` per call. Writes are queue-ordered, so work already
 * submitted still sees the slots and table as they were when it was queued.
 *
 * @example
 * ```ts ignore
 * const pool = new ExpertPool(gpu, source, { budgetBytes: 4 * 2 ** 30, minSlots: topK });
 * const { uploaded, evicted } = pool.ensure(layer, missingIds, { pinned });
 * for (const arena of pool.arenasFor(layer)) {
 *   // prepareMatmulId(gpu, { weight: arena.weights.gate, idBase: arena.idBase, … })
 * }
 * ```
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { upload } from "../gpu/buffers.ts";
import type { ExpertSource } from "./source.ts";
import { ExpertReadError } from "./source.ts";
import { ExpertStats } from "./stats.ts";
import {
  type EvictionPolicy,
  type EvictionPolicyFactory,
  expertKey,
  lruPolicy,
} from "./eviction.ts";
import { type Group, layoutSlots, type PoolArena, type SlotGroup } from "./slots.ts";
import { ResidencyTable } from "./residency.ts";
export type { PoolArena, SlotGroup } from "./slots.ts";

/** Options of {@link ExpertPool}. */
export interface ExpertPoolOptions {
  /**
   * GPU bytes for routed experts (`--cache-size-gb` × 2^30), a hard cap;
   * raised to `minSlots` slots when smaller (0 = that minimum).
   */
  budgetBytes: number;
  /**
   * Experts that must fit at once: one token's chosen experts (top-k).
   * Default 1; capped at the largest layer's expert count.
   */
  minSlots?: number;
  /** Rows of the residency table (default: last expert layer + 1). */
  nLayer?: number;
  /** Eviction policy over the slots (default {@link lruPolicy}). */
  policy?: EvictionPolicyFactory;
  /** Cap on slots per arena (default: as many as one storage binding holds, ≤ 65535). */
  maxSlotsPerArena?: number;
  /** Counters to fill (default: new ones). */
  stats?: ExpertStats;
  /** Prefix of the GPU buffer labels (default `"experts"`). */
  label?: string;
}

/** Options of {@link ExpertPool.ensure}. */
export interface EnsureOptions {
  /** Experts ({@link expertKey}) that must not be evicted, e.g. the rest of the batch's. */
  pinned?: ReadonlySet<string>;
  /**
   * Flush the uploads to the GPU at the end (default true). Pass false to
   * batch several calls, then call {@link ExpertPool.flush} once.
   */
  flush?: boolean;
}

/** What {@link ExpertPool.ensure} changed. */
export interface EnsureResult {
  /** Experts of the layer that were uploaded (the misses), in request order. */
  readonly uploaded: number[];
  /** Experts evicted to make room, as `[layer, expert]`. */
  readonly evicted: [number, number][];
}

/** Options of {@link ExpertPool.prefetch}. */
export interface PrefetchOptions extends EnsureOptions {
  /** Most experts to evict for this call (default: no limit). */
  maxEvict?: number;
}

/** What {@link ExpertPool.prefetch} changed, and the experts it could not read. */
export interface PrefetchResult extends EnsureResult {
  /** Experts whose read failed; they were skipped. */
  readonly failed: { expert: number; error: ExpertReadError }[];
}

/**
 * One change in the pool, told to {@link ExpertPool.listen}ers as it happens
 * (for live views such as the server's `/v1/experts/events`).
 */
export interface PoolEvent {
  /**
   * `hit`: a lookup found the expert resident; `load`: uploaded for a miss
   * (or by preload); `prefetch`: uploaded ahead of use by
   * {@link ExpertPool.prefetch}; `evict`: its slot was given up.
   */
  readonly kind: "hit" | "load" | "prefetch" | "evict";
  /** Layer (block) index. */
  readonly layer: number;
  /** Expert id within the layer. */
  readonly expert: number;
}

/** An {@link ExpertPool.ensure} asked for more experts than the pool can hold at once. */
export class ExpertPoolFullError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "ExpertPoolFullError";
  }
}

const PRELOAD_FLUSH_BYTES = 256 * 2 ** 20;

/** The GPU slot pool for routed experts (see the module doc). */
export class ExpertPool {
  /** The device. */
  readonly gpu: Gpu;
  /** Where experts are read from. */
  readonly source: ExpertSource;
  /** Hit/miss/upload counters. */
  readonly stats: ExpertStats;
  /** The cap on GPU bytes for experts: the budget asked for, raised to {@link minBudgetBytes}. */
  readonly budgetBytes: number;
  /** The budget asked for (`options.budgetBytes`). */
  readonly requestedBudgetBytes: number;
  /** The smallest budget: `minSlots × slotBytes`, one token's chosen experts of the largest layer. */
  readonly minBudgetBytes: number;
  /** GPU bytes of a slot: the largest expert of any layer, each part rounded up to 4. */
  readonly slotBytes: number;
  /** Slots: the most distinct experts resident at once. */
  readonly nSlots: number;
  /**
   * Whether the budget holds every expert at its own size: then each slot
   * group has its own slots, one per expert, and nothing streams.
   */
  readonly allFit: boolean;
  /** Rows of the residency table. */
  readonly nLayer: number;
  /** Columns of the residency table: the largest expert count of any layer. */
  readonly nExpert: number;
  /** i32 [nLayer, nExpert]: slot, or −1 when absent. */
  readonly residencyBuffer: GPUBuffer;
  /**
   * The slot groups (while streaming, one for a model whose MoE layers share
   * one expert shape; when every expert fits, one a layer).
   */
  readonly groups: readonly SlotGroup[];
  /** The arenas' buffers, in slot order. */
  readonly buffers: readonly GPUBuffer[];
  /** The eviction policy over every slot. */
  readonly policy: EvictionPolicy;
  readonly #groups: Group[];
  readonly #groupOf: (Group | undefined)[];
  readonly #layerExperts: number[];
  readonly #totalExperts: number;
  // per slot: layer and expert held (−1 when free), whether a prefetch put it there
  readonly #slotLayer: Int32Array;
  readonly #slotExpert: Int32Array;
  readonly #prefetched: Uint8Array;
  // per slot: its bytes; free slots per group (shared by every group while streaming)
  readonly #slotSize: Float64Array;
  readonly #free: number[][];
  // per group: the range of slots it can use (all of them while streaming)
  readonly #classStart: number[];
  readonly #classSlots: number[];
  // per arena: first slot, slot bytes, buffer
  readonly #arenaBase: readonly number[];
  readonly #arenaSlotBytes: readonly number[];
  #residentBytes = 0;
  readonly #table: ResidencyTable;
  readonly #listeners = new Set<(e: PoolEvent) => void>();
  #pendingFlush = false;
  #destroyed = false;

  /** Allocates every arena and the residency table (all slots empty). */
  constructor(gpu: Gpu, source: ExpertSource, options: ExpertPoolOptions) {
    const { budgetBytes } = options;
    if (!Number.isFinite(budgetBytes) || budgetBytes < 0) {
      throw new RangeError(`ExpertPool: budgetBytes must be ≥ 0, got ${budgetBytes}`);
    }
    const minSlots = options.minSlots ?? 1;
    if (!Number.isInteger(minSlots) || minSlots < 1) {
      throw new RangeError(
        `ExpertPool: minSlots must be an integer ≥ 1 (the experts one token chooses per layer), ` +
          `got ${minSlots}`,
      );
    }
    if (source.layers.length === 0) {
      throw new RangeError("ExpertPool: the source has no expert layers");
    }
    this.gpu = gpu;
    this.source = source;
    this.requestedBudgetBytes = budgetBytes;
    const lastLayer = Math.max(...source.layers.map((l) => l.layer));
    this.nLayer = options.nLayer ?? lastLayer + 1;
    if (this.nLayer <= lastLayer) {
      throw new RangeError(`ExpertPool: nLayer ${this.nLayer} but layer ${lastLayer} has experts`);
    }
    this.nExpert = Math.max(...source.layers.map((l) => l.nExpert));
    this.stats = options.stats ?? new ExpertStats(this.nLayer);
    this.#layerExperts = new Array(this.nLayer).fill(0);
    for (const l of source.layers) this.#layerExperts[l.layer] = l.nExpert;
    this.#totalExperts = source.layers.reduce((s, l) => s + l.nExpert, 0);

    const label = options.label ?? "experts";
    const layout = layoutSlots(gpu, source, {
      budgetBytes,
      minSlots,
      nLayer: this.nLayer,
      nExpert: this.nExpert,
      totalExperts: this.#totalExperts,
      maxSlotsPerArena: options.maxSlotsPerArena,
      label,
    });
    this.slotBytes = layout.slotBytes;
    this.minBudgetBytes = layout.minBudgetBytes;
    this.budgetBytes = layout.budgetBytes;
    this.allFit = layout.allFit;
    this.nSlots = layout.nSlots;
    this.buffers = layout.buffers;
    this.#slotSize = layout.slotSize;
    this.#free = layout.free;
    this.#classSlots = layout.classSlots;
    this.#classStart = layout.classStart;
    this.#arenaBase = layout.arenaBase;
    this.#arenaSlotBytes = layout.arenaSlotBytes;
    this.#groups = layout.groups;
    this.groups = layout.groups;
    this.#groupOf = layout.groupOf;

    const n = this.nSlots;
    this.#slotLayer = new Int32Array(n).fill(-1);
    this.#slotExpert = new Int32Array(n).fill(-1);
    this.#prefetched = new Uint8Array(n);
    this.policy = (options.policy ?? lruPolicy)({
      nSlots: n,
      layerOf: (s) => this.#slotLayer[s] ?? -1,
      expertOf: (s) => this.#slotExpert[s] ?? -1,
    });

    this.#table = new ResidencyTable(gpu, this.nLayer, this.nExpert, `${label}.residency`);
    this.residencyBuffer = this.#table.buffer;
    this.#syncMemoryStats();
  }

  /** Whether the budget asked for was below {@link minBudgetBytes} and was raised to it. */
  get budgetRaised(): boolean {
    return this.requestedBudgetBytes < this.minBudgetBytes;
  }

  /** GPU bytes of every arena (fixed at construction; ≤ {@link budgetBytes}). */
  get allocatedBytes(): number {
    return this.buffers.reduce((s, b) => s + b.size, 0);
  }

  /** GPU bytes of the slots holding an expert now. */
  get residentBytes(): number {
    return this.#residentBytes;
  }

  /** The largest {@link residentBytes} seen (since the stats were last reset). */
  get peakBytes(): number {
    return this.stats.peakBytes;
  }

  /** The most GPU bytes the pool may hold for experts: the budget. `allocatedBytes ≤ limitBytes` always. */
  get limitBytes(): number {
    return this.budgetBytes;
  }

  /** Whether every expert of every layer has a slot (the budget covers them all). */
  get allResident(): boolean {
    return this.nSlots === this.#totalExperts;
  }

  /** The most experts of `layer` resident at once: the slots its group can use. */
  slotsFor(layer: number): number {
    return this.#classSlots[this.#group(layer).index]!;
  }

  /** Where `slot` is: its arena's index in {@link buffers} and its first byte there. */
  slotLocation(slot: number): { arena: number; byteOffset: number } {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.nSlots) {
      throw new RangeError(`ExpertPool: slot ${slot} is out of range [0, ${this.nSlots})`);
    }
    let a = this.#arenaBase.length - 1;
    while (this.#arenaBase[a]! > slot) a--;
    return { arena: a, byteOffset: (slot - this.#arenaBase[a]!) * this.#arenaSlotBytes[a]! };
  }

  /** The slot group of `layer`; `RangeError` when the layer has no routed experts. */
  groupOf(layer: number): SlotGroup {
    return this.#group(layer);
  }

  /** The arenas holding `layer`'s experts: one `matmul_id` dispatch each. */
  arenasFor(layer: number): readonly PoolArena[] {
    return this.#group(layer).arenas;
  }

  /** The slot of an expert, or −1 when absent. */
  slotOf(layer: number, expert: number): number {
    this.#checkExpert(layer, expert);
    return this.#table.get(layer, expert);
  }

  /** The resident experts of `layer`, ascending. */
  residentExperts(layer: number): number[] {
    const n = this.#layerExperts[layer] ?? 0;
    const out: number[] = [];
    for (let e = 0; e < n; e++) if (this.#table.get(layer, e) >= 0) out.push(e);
    return out;
  }

  /** A copy of the CPU mirror of the residency table, i32 [nLayer, nExpert]. */
  residencyTable(): Int32Array {
    return this.#table.snapshot();
  }

  /**
   * Makes `experts` of `layer` resident: counts a hit for each one already
   * resident (and marks it used) and a miss for each other, which is read
   * from the source and uploaded into a free slot or the slot of the expert
   * the policy picks among those neither requested here nor `pinned`. One
   * flush at the end. Duplicates count once.
   *
   * All or nothing: throws {@link ExpertPoolFullError} (more distinct
   * experts than slots: split them into groups of at most {@link nSlots};
   * or too many slots pinned) or {@link ExpertReadError} (a missing expert
   * cannot be read) before changing any slot.
   */
  ensure(layer: number, experts: readonly number[], options: EnsureOptions = {}): EnsureResult {
    const g = this.#group(layer);
    const wanted = this.#distinct(layer, experts);
    const slots = this.#classSlots[g.index]!;
    if (wanted.length > slots) {
      throw new ExpertPoolFullError(
        `layer ${layer} needs ${wanted.length} distinct experts at once but the pool has ` +
          `${slots} slots (${this.budgetBytes} bytes, ${this.slotBytes} per expert); ` +
          `compute the layer in expert groups of at most ${slots} or raise --cache-size-gb`,
      );
    }
    const missing = wanted.filter((e) => this.#slot(layer, e) < 0);
    const isProtected = this.#protector(layer, wanted, options.pinned);
    if (missing.length > 0) {
      let protectedResident = 0;
      const start = this.#classStart[g.index]!;
      for (let s = start; s < start + slots; s++) {
        if (this.#slotLayer[s]! >= 0 && isProtected(s)) protectedResident++;
      }
      const available = slots - protectedResident;
      if (missing.length > available) {
        throw new ExpertPoolFullError(
          `layer ${layer}: ${missing.length} experts to upload but only ${available} of ` +
            `${slots} slots are free or evictable (${protectedResident} hold requested or ` +
            `pinned experts); pin fewer experts or raise --cache-size-gb`,
        );
      }
    }
    let views: Uint8Array[][];
    try {
      views = missing.map((e) => this.#read(g, layer, e));
    } catch (e) {
      this.stats.recordReadError();
      throw e;
    }
    // Cold experts: ask for all their pages at once, so the reads overlap
    // each other and the copies instead of faulting in one readahead window
    // at a time.
    const cold = missing.map((e) => this.#coldRead(g, layer, e));
    for (const e of wanted) {
      const s = this.#slot(layer, e);
      if (s >= 0) this.#hit(layer, s);
    }
    const evicted: [number, number][] = [];
    missing.forEach((e, i) => {
      const slot = this.#free[g.index]!.pop() ?? this.#evict(isProtected, evicted);
      const ms = this.#write(g, slot, views[i]!);
      this.#assign(slot, layer, e, false);
      this.stats.recordMiss(layer, g.bytesPerExpert, ms, cold[i]);
    });
    this.#commit(options.flush ?? true);
    return { uploaded: missing, evicted };
  }

  /**
   * Counts experts the GPU found resident (hits) and marks them used, for
   * the eviction policy. Pass each routed expert once: either here (it was
   * resident) or to {@link ensure} (it was missing), not both. An expert
   * evicted since the GPU looked is still counted as a hit.
   */
  touch(layer: number, experts: readonly number[]): void {
    this.#group(layer);
    for (const e of this.#distinct(layer, experts)) {
      const s = this.#slot(layer, e);
      if (s >= 0) this.#hit(layer, s);
      else this.stats.recordHit(layer);
    }
  }

  /**
   * Best effort: uploads those of `experts` (in priority order) that are
   * absent, into free slots or by evicting experts that are neither listed
   * here nor `pinned`, at most `maxEvict` of them; stops when nothing more
   * can be evicted. Experts already resident become most recently used. Not
   * lookups: counted as prefetch uploads. An expert that cannot be read is
   * skipped and reported in `failed`. Never exceeds the budget: it only
   * fills the pool's slots.
   */
  prefetch(
    layer: number,
    experts: readonly number[],
    options: PrefetchOptions = {},
  ): PrefetchResult {
    const g = this.#group(layer);
    const wanted = this.#distinct(layer, experts);
    const maxEvict = options.maxEvict ?? Infinity;
    const isProtected = this.#protector(layer, wanted, options.pinned);
    for (const e of wanted) {
      const s = this.#slot(layer, e);
      if (s >= 0) this.policy.touch(s);
    }
    const uploaded: number[] = [];
    const evicted: [number, number][] = [];
    const failed: { expert: number; error: ExpertReadError }[] = [];
    for (const e of wanted) {
      if (this.#slot(layer, e) >= 0) continue;
      if (
        this.#free[g.index]!.length === 0 &&
        (evicted.length >= maxEvict || this.policy.victim(isProtected) < 0)
      ) {
        break;
      }
      let views: Uint8Array[];
      try {
        views = this.#read(g, layer, e);
      } catch (error) {
        if (!(error instanceof ExpertReadError)) throw error;
        this.stats.recordReadError();
        failed.push({ expert: e, error });
        continue;
      }
      const cold = this.#coldRead(g, layer, e);
      const slot = this.#free[g.index]!.pop() ?? this.#evict(isProtected, evicted);
      const ms = this.#write(g, slot, views);
      this.#assign(slot, layer, e, true);
      this.stats.recordPrefetch(g.bytesPerExpert, ms, cold);
      uploaded.push(e);
    }
    this.#commit(options.flush ?? true);
    return { uploaded, evicted, failed };
  }

  /**
   * Hints the source to start reading `experts` of `layer` into the page
   * cache (`madvise(WILLNEED)`), without uploading: cheap, for predictions
   * further ahead than the next prefetch.
   */
  advise(layer: number, experts: readonly number[]): void {
    if (!this.source.willNeed) return;
    for (const e of this.#distinct(layer, experts)) {
      if (this.#slot(layer, e) < 0) this.source.willNeed(layer, e);
    }
  }

  /**
   * Fills the free slots with experts in layer order, evicting nothing —
   * at most the budget — and returns how many were uploaded; with
   * {@link allResident} that is every expert. Counted as prefetch uploads.
   * Flushes every 256 MiB so the driver's staging memory stays bounded.
   * Throws {@link ExpertReadError} (after flushing what was uploaded) when
   * an expert cannot be read.
   */
  preloadAll(): number {
    let count = 0;
    let sinceFlush = 0;
    try {
      for (let layer = 0; layer < this.nLayer; layer++) {
        const g = this.#groupOf[layer];
        if (!g) continue;
        const free = this.#free[g.index]!;
        for (let e = 0; e < this.#layerExperts[layer]! && free.length > 0; e++) {
          if (this.#slot(layer, e) >= 0) continue;
          let views: Uint8Array[];
          try {
            views = this.#read(g, layer, e);
          } catch (error) {
            this.stats.recordReadError();
            throw error;
          }
          const cold = this.#coldRead(g, layer, e);
          const slot = free.pop()!;
          const ms = this.#write(g, slot, views);
          this.#assign(slot, layer, e, false);
          this.stats.recordPrefetch(g.bytesPerExpert, ms, cold);
          count++;
          sinceFlush += g.bytesPerExpert;
          if (sinceFlush >= PRELOAD_FLUSH_BYTES) {
            this.#commit(true);
            sinceFlush = 0;
          }
        }
      }
    } finally {
      this.#commit(true);
    }
    return count;
  }

  /**
   * Empties every slot holding an expert of `layer` (their bytes on the GPU
   * may be corrupt: the next use reads them from the source again) and
   * returns how many were dropped. Pinned or not, nothing of the layer stays.
   */
  dropLayer(layer: number): number {
    const g = this.#group(layer);
    let n = 0;
    for (let slot = 0; slot < this.nSlots; slot++) {
      if (this.#slotLayer[slot] !== layer) continue;
      const expert = this.#slotExpert[slot]!;
      this.policy.remove(slot);
      this.#slotLayer[slot] = this.#slotExpert[slot] = -1;
      this.#prefetched[slot] = 0;
      this.#residentBytes -= this.#slotSize[slot]!;
      this.#free[g.index]!.push(slot);
      this.#table.set(layer, expert, -1);
      n++;
    }
    this.#commit(true);
    return n;
  }

  /** Writes pending residency changes and flushes uploads left by calls with `flush: false`. */
  flush(): void {
    this.#commit(true);
  }

  /**
   * Calls `listener` on every hit, load, prefetch upload and eviction, from
   * inside the pool's calls (keep it cheap; it must not call the pool).
   * Returns the function that removes it. Without listeners nothing is built.
   */
  listen(listener: (e: PoolEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The eviction policy (one for every slot; `layer` is checked to have experts). */
  policyOf(layer: number): EvictionPolicy {
    this.#group(layer);
    return this.policy;
  }

  /** Frees every GPU buffer. The pool is unusable afterwards. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const b of this.buffers) b.destroy();
    this.#table.destroy();
  }

  #group(layer: number): Group {
    if (this.#destroyed) throw new Error("ExpertPool: used after destroy()");
    const g = Number.isInteger(layer) ? this.#groupOf[layer] : undefined;
    if (!g) {
      throw new RangeError(
        `ExpertPool: layer ${layer} has no routed experts (expert layers: ${
          this.source.layers.map((l) => l.layer).join(", ")
        })`,
      );
    }
    return g;
  }

  #checkExpert(layer: number, expert: number): void {
    this.#group(layer);
    const n = this.#layerExperts[layer]!;
    if (!Number.isInteger(expert) || expert < 0 || expert >= n) {
      throw new RangeError(
        `ExpertPool: layer ${layer}: expert ${expert} is out of range [0, ${n})`,
      );
    }
  }

  #distinct(layer: number, experts: readonly number[]): number[] {
    const seen = new Set<number>();
    for (const e of experts) {
      this.#checkExpert(layer, e);
      seen.add(e);
    }
    return [...seen];
  }

  #slot(layer: number, expert: number): number {
    return this.#table.get(layer, expert);
  }

  // Slots not to evict for `layer`: its requested experts, pinned ones, and
  // slots its group cannot use (another group's, when every expert fits).
  #protector(
    layer: number,
    wanted: readonly number[],
    pinned: ReadonlySet<string> | undefined,
  ): (slot: number) => boolean {
    const needed = new Set(wanted);
    const g = this.#group(layer).index;
    const start = this.#classStart[g]!;
    const end = start + this.#classSlots[g]!;
    return (slot) => {
      if (slot < start || slot >= end) return true;
      const l = this.#slotLayer[slot]!;
      const e = this.#slotExpert[slot]!;
      return (l === layer && needed.has(e)) || (pinned?.has(expertKey(l, e)) ?? false);
    };
  }

  #read(g: Group, layer: number, expert: number): Uint8Array[] {
    const views = this.source.expertParts(layer, expert);
    if (
      views.length !== g.parts.length ||
      views.some((v, i) => v.byteLength !== g.parts[i]!.sliceBytes)
    ) {
      throw new Error(
        `ExpertPool: the source returned parts of [${
          views.map((v) => v.byteLength).join(", ")
        }] bytes for expert ${expert} of layer ${layer}; its layout says [${
          g.parts.map((p) => p.sliceBytes).join(", ")
        }]`,
      );
    }
    return views;
  }

  #emit(kind: PoolEvent["kind"], layer: number, expert: number): void {
    const e: PoolEvent = { kind, layer, expert };
    for (const l of this.#listeners) l(e);
  }

  #hit(layer: number, slot: number): void {
    this.stats.recordHit(layer);
    if (this.#listeners.size) this.#emit("hit", layer, this.#slotExpert[slot]!);
    this.policy.touch(slot);
    if (this.#prefetched[slot]) {
      this.#prefetched[slot] = 0;
      this.stats.recordPrefetchHit();
    }
  }

  #evict(isProtected: (slot: number) => boolean, evicted: [number, number][]): number {
    const slot = this.policy.victim(isProtected);
    if (slot < 0 || this.#slotLayer[slot]! < 0) {
      throw new Error(`ExpertPool: the eviction policy found no victim (slot ${slot})`);
    }
    const layer = this.#slotLayer[slot]!;
    const expert = this.#slotExpert[slot]!;
    this.policy.remove(slot);
    this.stats.recordEviction(this.#prefetched[slot] === 1);
    this.#slotLayer[slot] = this.#slotExpert[slot] = -1;
    this.#prefetched[slot] = 0;
    this.#residentBytes -= this.#slotSize[slot]!;
    this.#table.set(layer, expert, -1);
    if (this.#listeners.size) this.#emit("evict", layer, expert);
    evicted.push([layer, expert]);
    return slot;
  }

  #assign(slot: number, layer: number, expert: number, prefetched: boolean): void {
    this.#slotLayer[slot] = layer;
    this.#slotExpert[slot] = expert;
    this.#prefetched[slot] = prefetched ? 1 : 0;
    this.policy.touch(slot);
    this.#residentBytes += this.#slotSize[slot]!;
    this.#table.set(layer, expert, slot);
    if (this.#listeners.size) this.#emit(prefetched ? "prefetch" : "load", layer, expert);
  }

  // Whether some of the expert's bytes are outside the page cache (undefined:
  // the source cannot tell); if so, starts reading them all (WILLNEED).
  #coldRead(g: Group, layer: number, expert: number): boolean | undefined {
    const inCache = this.source.residentBytes?.(layer, expert);
    if (inCache === undefined) return undefined;
    const cold = inCache < g.bytesPerExpert;
    if (cold) this.source.willNeed?.(layer, expert);
    return cold;
  }

  // Copies the views into the slot; returns the CPU time of the copies (ms).
  #write(g: Group, slot: number, views: readonly Uint8Array[]): number {
    const { arena, byteOffset: at } = this.slotLocation(slot);
    const buffer = this.buffers[arena]!;
    const t0 = performance.now();
    views.forEach((v, p) => upload(this.gpu, buffer, v, at + g.partOffsets[p]!));
    this.#pendingFlush = true;
    return performance.now() - t0;
  }

  // Writes the changed residency entries; flushes the queue when asked and something is pending.
  #commit(flush: boolean): void {
    if (this.#table.write()) this.#pendingFlush = true;
    this.#syncMemoryStats();
    if (flush && this.#pendingFlush) {
      this.gpu.flush();
      this.#pendingFlush = false;
    }
  }

  #syncMemoryStats(): void {
    this.stats.setMemory({
      residentBytes: this.residentBytes,
      allocatedBytes: this.allocatedBytes,
      budgetBytes: this.budgetBytes,
      requestedBudgetBytes: this.requestedBudgetBytes,
      minBudgetBytes: this.minBudgetBytes,
    });
  }
}
