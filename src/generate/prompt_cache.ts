/**
 * The prompt cache: copies of the KV cache of earlier sequences, in CPU
 * memory, within a byte bound (llama.cpp server's `--cache-ram`). The
 * model's KV cache holds one sequence at a time; when a request would throw
 * away most of it (another conversation), the session saves it here first,
 * and a later request that shares a longer prefix with a saved sequence
 * than with the live one gets that prefix's keys and values uploaded instead
 * of computed again. Least recently used entries go first when the bound is
 * reached; a sequence larger than the bound is not kept.
 *
 * @module
 */

import type { ContextSnapshot } from "../model/model.ts";

/** One saved sequence. */
interface Entry {
  readonly tokens: readonly number[];
  readonly snapshot: ContextSnapshot;
}

/** A prompt-cache hit: the entry's first `n` tokens are the prompt's. */
export interface PromptCacheHit {
  /** The saved sequence's tokens. */
  readonly tokens: readonly number[];
  /** Its KV cache. */
  readonly snapshot: ContextSnapshot;
  /** Tokens it shares with the prompt (at most the prompt's length − 1). */
  readonly n: number;
}

/** Saved sequences within a byte bound (see the module doc). */
export class PromptCache {
  // least recently used first
  #entries: Entry[] = [];
  #bytes = 0;
  /** Sequences saved, since the start. */
  saved = 0;
  /** Hits used (a prefix uploaded from here), since the start. */
  hits = 0;

  /** An empty cache holding at most `limitBytes` of KV cache copies. */
  constructor(readonly limitBytes: number) {
    if (!(limitBytes >= 0)) {
      throw new RangeError(`prompt cache bound must be ≥ 0, got ${limitBytes}`);
    }
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Sequences held. */
  get size(): number {
    return this.#entries.length;
  }

  /**
   * The saved sequence sharing the longest prefix with `prompt` (at most
   * `prompt.length − 1` tokens: the last one is always computed, for its
   * logits), or undefined when none shares a token. Marks it used.
   */
  lookup(prompt: readonly number[]): PromptCacheHit | undefined {
    let best: Entry | undefined;
    let bestN = 0;
    for (const e of this.#entries) {
      const n = commonPrefix(e.tokens, prompt, Math.min(e.snapshot.nTokens, prompt.length - 1));
      if (n > bestN) {
        best = e;
        bestN = n;
      }
    }
    if (!best) return undefined;
    this.#entries = [...this.#entries.filter((e) => e !== best), best];
    return { tokens: best.tokens, snapshot: best.snapshot, n: bestN };
  }

  /** Whether a saved sequence already starts with all of `tokens`. */
  covers(tokens: readonly number[]): boolean {
    return this.#entries.some((e) =>
      e.snapshot.nTokens >= tokens.length &&
      commonPrefix(e.tokens, tokens, tokens.length) === tokens.length
    );
  }

  /**
   * Saves a sequence (`tokens`, whose keys and values are `snapshot`),
   * replacing saved sequences that are prefixes of it and evicting the least
   * recently used until the bound holds. A sequence larger than the bound
   * is not kept. Returns whether it was kept.
   */
  add(tokens: readonly number[], snapshot: ContextSnapshot): boolean {
    if (snapshot.bytes > this.limitBytes || snapshot.nTokens === 0) return false;
    const n = snapshot.nTokens;
    const kept = this.#entries.filter((e) =>
      !(e.snapshot.nTokens <= n &&
        commonPrefix(e.tokens, tokens, e.snapshot.nTokens) === e.snapshot.nTokens)
    );
    this.#entries = [...kept, { tokens: tokens.slice(0, n), snapshot }];
    this.#bytes = this.#entries.reduce((s, e) => s + e.snapshot.bytes, 0);
    while (this.#bytes > this.limitBytes) {
      const old = this.#entries.shift()!;
      this.#bytes -= old.snapshot.bytes;
    }
    this.saved++;
    return true;
  }

  /** Forgets every saved sequence. */
  clear(): void {
    this.#entries = [];
    this.#bytes = 0;
  }
}

/** Length of the common prefix of `a` and `b`, at most `max`. */
function commonPrefix(a: readonly number[], b: readonly number[], max: number): number {
  const n = Math.min(a.length, b.length, max);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
