/**
 * Eviction policies of the expert pool: the interface a policy implements
 * (told when a slot is filled, used or emptied; asked for a victim), the
 * default least-recently-used list, and the key of an expert in pinned sets.
 * The predictive and least-stale policies are in `policy_predictive.ts`.
 *
 * @module
 */

/** The key of an expert in pinned sets: `"layer:expert"`. */
export function expertKey(layer: number, expert: number): string {
  return `${layer}:${expert}`;
}

/** What an eviction policy may ask about the slots of its group. */
export interface EvictionContext {
  /** Slots of the group. */
  readonly nSlots: number;
  /** Layer of the expert in `slot`, or −1 when free. */
  layerOf(slot: number): number;
  /** Expert id in `slot`, or −1 when free. */
  expertOf(slot: number): number;
}

/**
 * Chooses which occupied slot to give up. The pool calls {@link touch} when
 * a slot is filled or its expert used, {@link remove} when it is emptied,
 * and {@link victim} when it needs a slot and none is free.
 */
export interface EvictionPolicy {
  /** `slot` was filled or its expert was used. */
  touch(slot: number): void;
  /** `slot` was emptied. */
  remove(slot: number): void;
  /** The occupied slot to evict, skipping those for which `skip` is true; −1 if none. */
  victim(skip: (slot: number) => boolean): number;
}

/** Builds a policy for one slot group. */
export type EvictionPolicyFactory = (ctx: EvictionContext) => EvictionPolicy;

/** Least recently used first: a doubly linked list over slot indices, O(1) per touch. */
export class LruPolicy implements EvictionPolicy {
  // Node `n` is the sentinel: next[n] is the most recent slot, prev[n] the least.
  readonly #prev: Int32Array;
  readonly #next: Int32Array;
  readonly #in: Uint8Array;
  readonly #head: number;

  /** An empty list for `nSlots` slots. */
  constructor(nSlots: number) {
    this.#prev = new Int32Array(nSlots + 1);
    this.#next = new Int32Array(nSlots + 1);
    this.#in = new Uint8Array(nSlots);
    this.#head = nSlots;
    this.#prev[nSlots] = this.#next[nSlots] = nSlots;
  }

  /** Moves `slot` to the most recent end. */
  touch(slot: number): void {
    if (this.#in[slot]) this.#unlink(slot);
    const h = this.#head;
    const first = this.#next[h]!;
    this.#prev[slot] = h;
    this.#next[slot] = first;
    this.#prev[first] = slot;
    this.#next[h] = slot;
    this.#in[slot] = 1;
  }

  /** Takes `slot` out of the list. */
  remove(slot: number): void {
    if (this.#in[slot]) this.#unlink(slot);
  }

  /** The least recently used slot not skipped, or −1. */
  victim(skip: (slot: number) => boolean): number {
    for (let s = this.#prev[this.#head]!; s !== this.#head; s = this.#prev[s]!) {
      if (!skip(s)) return s;
    }
    return -1;
  }

  /** Slots from least to most recently used (for tests and debugging). */
  order(): number[] {
    const out: number[] = [];
    for (let s = this.#prev[this.#head]!; s !== this.#head; s = this.#prev[s]!) out.push(s);
    return out;
  }

  #unlink(slot: number): void {
    const p = this.#prev[slot]!;
    const n = this.#next[slot]!;
    this.#next[p] = n;
    this.#prev[n] = p;
    this.#in[slot] = 0;
  }
}

/** The default policy factory: an {@link LruPolicy} over the group's slots. */
export function lruPolicy(ctx: EvictionContext): EvictionPolicy {
  return new LruPolicy(ctx.nSlots);
}
