/**
 * Constrained decoding's token masks: which tokens may come next under a
 * grammar (`./grammar.ts`, JSON schemas from `./json_schema.ts`).
 *
 * A token is allowed when all its bytes step the automaton without it
 * dying. The mask over the whole vocabulary walks the tokens in byte order
 * ({@linkcode TokenIndex}, built once per tokenizer), so a prefix shared by
 * many tokens is stepped once and a dead prefix rules out every token under
 * it; inside a free JSON string, plain printable tokens pass without being
 * stepped. Markup tokens (control and user-defined: `<|im_end|>`,
 * `<tool_call>`, `<|channel|>`) are allowed only where a literal of the
 * grammar spells their text (inside a JSON string they would break the
 * format's parser); end-of-generation tokens only where the grammar may end.
 *
 * Every constraint also keeps a length budget: with `room` tokens left, a
 * token is allowed only if the shortest way to finish after it fits in the
 * tokens after it (every byte has a token of its own in byte-level and
 * byte-fallback vocabularies), so the output is complete within
 * `max_tokens` whenever the grammar's shortest output is.
 *
 * The grammar's builders and automaton are re-exported here, so that a
 * user of constrained decoding imports one module.
 *
 * @module
 */

import { TokenAttr, type Tokenizer } from "../tokenizer/tokenizer.ts";
import {
  canFinish,
  freeString,
  type GrammarNode,
  type GrammarState,
  minToFinish,
  startState,
  stepState,
} from "./grammar.ts";

export {
  alt,
  canFinish,
  type GrammarNode,
  type GrammarState,
  lit,
  minToFinish,
  seq,
  startState,
  stepState,
  until,
} from "./grammar.ts";
export { jsonSchema, jsonValue, SchemaError } from "./json_schema.ts";

// ---------------------------------------------------------------------------
// Tokens.

/** A vocabulary's token bytes in byte order, for masks (build once per tokenizer: {@linkcode tokenIndex}). */
export class TokenIndex {
  /** Ordinary token ids, sorted by their bytes. */
  readonly order: Int32Array;
  /** Bytes shared with the previous token in `order`. */
  readonly lcp: Int32Array;
  /** Markup tokens (control and user-defined) that do not end generation, with their text's bytes. */
  readonly control: readonly { id: number; bytes: Uint8Array }[];
  /** End-of-generation tokens. */
  readonly eog: readonly number[];
  /** Bytes of each token (empty for those never allowed by bytes). */
  readonly bytes: readonly Uint8Array[];
  /** Vocabulary size. */
  readonly size: number;
  /**
   * 1 for tokens of printable ASCII other than `"` and `\`: text that any
   * free JSON string accepts as it is (the mask's shortcut inside strings).
   */
  readonly plain: Uint8Array;

  /** Indexes `tokenizer`'s vocabulary. */
  constructor(tokenizer: Tokenizer) {
    this.size = tokenizer.vocabSize;
    const ids: number[] = [];
    const bytes: Uint8Array[] = [];
    const control: { id: number; bytes: Uint8Array }[] = [];
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const b = tokenizer.tokenToBytes(id);
      bytes.push(b);
      if (tokenizer.isEog(id) || b.length === 0) continue;
      // markup (control and user-defined tokens: <|im_end|>, <tool_call>, gpt-oss's
      // <|channel|>) only where a literal spells it: inside JSON it would break the format
      if (tokenizer.tokenAttr(id) & (TokenAttr.control | TokenAttr.userDefined)) {
        control.push({ id, bytes: b });
      } else ids.push(id);
    }
    // bytes as Latin-1 strings sort in byte order with the engine's own comparison
    const keyed = ids.map((id) => ({ id, key: latin1(bytes[id]!) }));
    keyed.sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    this.order = Int32Array.from(keyed, (x) => x.id);
    ids.length = 0;
    for (const x of keyed) ids.push(x.id);
    this.lcp = new Int32Array(ids.length);
    for (let k = 1; k < ids.length; k++) {
      const a = bytes[ids[k - 1]!]!, b = bytes[ids[k]!]!;
      let l = 0;
      while (l < a.length && l < b.length && a[l] === b[l]) l++;
      this.lcp[k] = l;
    }
    this.control = control;
    this.eog = [...tokenizer.eogIds];
    this.bytes = bytes;
    this.plain = new Uint8Array(this.size);
    for (const id of ids) {
      const b = bytes[id]!;
      this.plain[id] = b.every((c) => c >= 0x20 && c < 0x7f && c !== 0x22 && c !== 0x5c) ? 1 : 0;
    }
  }
}

function latin1(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

const indexes = new WeakMap<Tokenizer, TokenIndex>();

/** The {@linkcode TokenIndex} of a tokenizer, built on first use. */
export function tokenIndex(tokenizer: Tokenizer): TokenIndex {
  let x = indexes.get(tokenizer);
  if (!x) {
    x = new TokenIndex(tokenizer);
    indexes.set(tokenizer, x);
  }
  return x;
}

/**
 * A grammar applied token by token: which tokens may come next
 * ({@linkcode Constraint.allows}, {@linkcode Constraint.mask}) and the
 * state after each accepted one.
 */
export class Constraint {
  #state: GrammarState;
  readonly #index: TokenIndex;
  readonly #eog: ReadonlySet<number>;
  readonly #control: ReadonlyMap<number, Uint8Array>;

  /** Starts `grammar` over `tokenizer`'s vocabulary. */
  constructor(grammar: GrammarNode, tokenizer: Tokenizer) {
    this.#state = startState(grammar);
    this.#index = tokenIndex(tokenizer);
    this.#eog = new Set(this.#index.eog);
    this.#control = new Map(this.#index.control.map((c) => [c.id, c.bytes]));
  }

  /** The current state. */
  get state(): GrammarState {
    return this.#state;
  }

  /** Whether the grammar is complete and nothing more may follow (only end of generation). */
  get finished(): boolean {
    return this.#state.every((s) => s === null);
  }

  /** Whether the grammar may end here. */
  get canEnd(): boolean {
    return canFinish(this.#state);
  }

  #after(id: number): GrammarState {
    const c = this.#control.get(id);
    if (c) return stepState(this.#state, c, true);
    const b = this.#index.bytes[id];
    if (b === undefined || b.length === 0) return [];
    return stepState(this.#state, b);
  }

  /**
   * Whether token `id` may come next with `room` tokens left for the rest
   * of the output (this one included; Infinity = no limit).
   */
  allows(id: number, room = Infinity): boolean {
    if (this.#eog.has(id)) return this.canEnd;
    const next = this.#after(id);
    return next.length > 0 && minToFinish(next) <= room - 1;
  }

  /**
   * The tokens that may come next (1 = allowed), with `room` tokens left
   * (this one included). If the budget rules out every token, the mask
   * without it; if still none, the end-of-generation tokens.
   */
  mask(room = Infinity): Uint8Array {
    const x = this.#index;
    const out = new Uint8Array(x.size);
    const fill = (budget: number): boolean => {
      let any = false;
      // inside a string of any length, plain text is allowed as it is: only the
      // other tokens (quotes, escapes, UTF-8 pieces) are stepped through
      const shortcut = freeString(this.#state) && minToFinish(this.#state) <= budget - 1;
      const levels: GrammarState[] = [this.#state];
      let have = 0; // levels[0..have] hold the states after the previous token's first bytes
      let dead = Infinity; // a level whose states are empty
      for (let k = 0; k < x.order.length; k++) {
        const id = x.order[k]!;
        const b = x.bytes[id]!;
        have = Math.min(have, x.lcp[k]!);
        if (dead > have) dead = Infinity;
        if (shortcut && x.plain[id] === 1) {
          out[id] = 1;
          any = true;
          continue;
        }
        if (dead <= have) continue;
        for (; have < b.length; have++) {
          const next = stepState(levels[have]!, b.subarray(have, have + 1));
          levels[have + 1] = next;
          if (next.length === 0) {
            dead = ++have;
            break;
          }
        }
        if (dead <= b.length) continue;
        if (minToFinish(levels[b.length]!) <= budget - 1) {
          out[id] = 1;
          any = true;
        }
      }
      for (const c of x.control) {
        const next = stepState(this.#state, c.bytes, true);
        if (next.length > 0 && minToFinish(next) <= budget - 1) {
          out[c.id] = 1;
          any = true;
        }
      }
      if (this.canEnd) {
        for (const e of x.eog) out[e] = 1;
        any = true;
      }
      return any;
    };
    if (!fill(room) && !fill(Infinity)) { for (const e of x.eog) out[e] = 1; }
    return out;
  }

  /**
   * Moves past token `id`.
   *
   * @throws if the grammar does not allow it here.
   */
  accept(id: number): void {
    if (this.#eog.has(id)) {
      if (!this.canEnd) {
        throw new Error(`token ${id} ends generation before the grammar is complete`);
      }
      this.#state = [null];
      return;
    }
    const next = this.#after(id);
    if (next.length === 0) throw new Error(`token ${id} is not allowed by the grammar here`);
    this.#state = next;
  }
}
