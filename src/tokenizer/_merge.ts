/**
 * The merge loops of llama.cpp's two subword tokenizers: byte-pair encoding
 * by merge rank (`llm_tokenizer_bpe_session`) and SentencePiece by piece
 * score (`llm_tokenizer_spm_session`). Both merge adjacent symbols of one
 * word through a priority queue, ties going to the leftmost pair.
 *
 * @module
 */

import { utf8 } from "./_unicode.ts";

/** A binary heap; `before(a, b)` is true when `a` must come out first. */
class Heap<T> {
  readonly #items: T[] = [];
  readonly #before: (a: T, b: T) => boolean;

  constructor(before: (a: T, b: T) => boolean) {
    this.#before = before;
  }

  get size(): number {
    return this.#items.length;
  }

  push(item: T): void {
    const a = this.#items;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  pop(): T {
    const a = this.#items;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.#before(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.#before(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

/** One candidate merge of symbols `left` and `right`, `size` code units long in all. */
interface Bigram {
  left: number;
  right: number;
  /** BPE: merge rank (lower first). SPM: piece score (higher first). */
  key: number;
  size: number;
}

/**
 * The symbols of a word: one per codepoint at first, merged in place. A
 * merged symbol keeps the left one's start; the right one's length drops to 0.
 */
class Symbols {
  readonly start: Int32Array;
  readonly len: Int32Array;
  readonly prev: Int32Array;
  readonly next: Int32Array;
  readonly count: number;

  constructor(word: string) {
    const n = word.length;
    this.start = new Int32Array(n);
    this.len = new Int32Array(n);
    let k = 0;
    for (let i = 0; i < n; k++) {
      const c = word.charCodeAt(i);
      const w = c >= 0xd800 && c <= 0xdbff && i + 1 < n ? 2 : 1;
      this.start[k] = i;
      this.len[k] = w;
      i += w;
    }
    this.count = k;
    this.prev = new Int32Array(k);
    this.next = new Int32Array(k);
    for (let i = 0; i < k; i++) {
      this.prev[i] = i - 1;
      this.next[i] = i + 1 < k ? i + 1 : -1;
    }
  }

  /** Merges `right` into `left`. */
  merge(left: number, right: number): void {
    this.len[left]! += this.len[right]!;
    this.len[right] = 0;
    const after = this.next[right]!;
    this.next[left] = after;
    if (after >= 0) this.prev[after] = left;
  }

  /** The texts of the surviving symbols, in order. */
  texts(word: string): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.count; i++) {
      if (this.len[i]! > 0) out.push(word.slice(this.start[i]!, this.start[i]! + this.len[i]!));
    }
    return out;
  }
}

/** Options of {@linkcode BpeMerger}. */
export interface BpeOptions {
  /** A word that is a token as a whole is that token, merges or not (Llama 3, Tekken…). */
  ignoreMerges: boolean;
  /** Words are GPT-2 byte characters; false: raw text with `<0xXX>` byte tokens. */
  byteEncoded: boolean;
  /** Gemma 4: a word of newlines that is a token is that token. */
  newlineWords: boolean;
}

/** Byte-pair encoding of single words by merge rank. */
export class BpeMerger {
  readonly #tokenToId: ReadonlyMap<string, number>;
  readonly #ranks = new Map<string, number>();
  readonly #options: BpeOptions;

  /** `merges` are `"first second"` strings, split at the first space after the first character. */
  constructor(
    tokenToId: ReadonlyMap<string, number>,
    merges: readonly string[],
    options: BpeOptions,
  ) {
    this.#tokenToId = tokenToId;
    this.#options = options;
    // Keyed by the merge string itself: llama.cpp splits it at the first space
    // after the first character, so a pair whose first part has a space there
    // cannot be a merge, and for any other pair `first + " " + second` is unique.
    for (let rank = 0; rank < merges.length; rank++) {
      const m = merges[rank]!;
      // llama.cpp's bpe_ranks.emplace keeps the first rank of a repeated pair.
      if (m.indexOf(" ", 1) >= 0 && !this.#ranks.has(m)) this.#ranks.set(m, rank);
    }
  }

  /** The merge rank of a pair, or undefined if the pair never merges. */
  rank(first: string, second: string): number | undefined {
    if (first.length === 0 || first.indexOf(" ", 1) >= 0) return undefined;
    return this.#ranks.get(`${first} ${second}`);
  }

  /** The tokens of one (already encoded) word. Callers cache: a word always gives the same tokens. */
  encodeWord(word: string): number[] {
    return this.#encode(word);
  }

  #encode(word: string): number[] {
    const whole = this.#tokenToId.get(word);
    if (
      whole !== undefined &&
      (this.#options.ignoreMerges || (this.#options.newlineWords && /^\n+$/.test(word)))
    ) {
      return [whole];
    }
    const sym = new Symbols(word);
    const queue = new Heap<Bigram>((a, b) => a.key < b.key || (a.key === b.key && a.left < b.left));
    const text = (i: number) => word.slice(sym.start[i]!, sym.start[i]! + sym.len[i]!);
    const consider = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const rank = this.rank(text(left), text(right));
      if (rank === undefined) return;
      queue.push({ left, right, key: rank, size: sym.len[left]! + sym.len[right]! });
    };
    for (let i = 1; i < sym.count; i++) consider(i - 1, i);
    while (queue.size > 0) {
      const b = queue.pop();
      const l = sym.len[b.left]!;
      const r = sym.len[b.right]!;
      // Stale: one side was merged away, or grew since the pair was queued.
      if (l === 0 || r === 0 || l + r !== b.size) continue;
      sym.merge(b.left, b.right);
      consider(sym.prev[b.left]!, b.left);
      consider(b.left, sym.next[b.left]!);
    }
    const out: number[] = [];
    for (const piece of sym.texts(word)) {
      const id = this.#tokenToId.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // A piece that is no token: its bytes, where the vocabulary has them.
      if (this.#options.byteEncoded) {
        for (let i = 0; i < piece.length; i++) {
          const c = piece.charCodeAt(i);
          // llama.cpp looks up each UTF-8 byte as a one-byte string; only ASCII can match.
          const b = c < 0x80 ? this.#tokenToId.get(piece[i]!) : undefined;
          if (b !== undefined) out.push(b);
        }
      } else {
        for (const byte of utf8(piece)) {
          const b = this.#tokenToId.get(byteTokenText(byte));
          if (b !== undefined) out.push(b);
        }
      }
    }
    return out;
  }
}

/** `<0xAB>`, the text of a byte-fallback token. */
export function byteTokenText(byte: number): string {
  return `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`;
}

/**
 * SentencePiece BPE as llama.cpp runs it: merge the adjacent pair that forms
 * the highest-scoring piece until none does; pieces that are no token fall
 * back to byte tokens.
 */
export class SpmMerger {
  readonly #tokenToId: ReadonlyMap<string, number>;
  readonly #scores: Float32Array;
  readonly #byteIds: Int32Array;

  /**
   * A merger over a vocabulary's texts and scores.
   *
   * @param byteIds the token of each byte (`<0xXX>`, or the one-character
   * token for ASCII), -1 where the vocabulary has none.
   */
  constructor(tokenToId: ReadonlyMap<string, number>, scores: Float32Array, byteIds: Int32Array) {
    this.#tokenToId = tokenToId;
    this.#scores = scores;
    this.#byteIds = byteIds;
  }

  /** Appends the tokens of `text` (spaces already escaped to ▁) to `out`. */
  encode(text: string, out: number[]): void {
    if (text.length === 0) return;
    const sym = new Symbols(text);
    const queue = new Heap<Bigram>((a, b) => a.key > b.key || (a.key === b.key && a.left < b.left));
    const consider = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const size = sym.len[left]! + sym.len[right]!;
      const id = this.#tokenToId.get(text.slice(sym.start[left]!, sym.start[left]! + size));
      if (id === undefined) return;
      queue.push({ left, right, key: this.#scores[id]!, size });
    };
    for (let i = 1; i < sym.count; i++) consider(i - 1, i);
    while (queue.size > 0) {
      const b = queue.pop();
      const l = sym.len[b.left]!;
      const r = sym.len[b.right]!;
      if (l === 0 || r === 0 || l + r !== b.size) continue;
      sym.merge(b.left, b.right);
      consider(sym.prev[b.left]!, b.left);
      consider(b.left, sym.next[b.left]!);
    }
    // Every merged piece is a token (it was looked up to be queued); a piece
    // that is no token is a single codepoint, written as its bytes.
    for (const piece of sym.texts(text)) {
      const id = this.#tokenToId.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of utf8(piece)) {
        const b = this.#byteIds[byte]!;
        if (b < 0) {
          throw new Error(
            `the vocabulary has no byte token for 0x${byte.toString(16).padStart(2, "0")} (${
              byteTokenText(byte)
            }), needed for ${JSON.stringify(piece)}`,
          );
        }
        out.push(b);
      }
    }
  }
}
