/**
 * Continuous batching: several generations share one model, each in a
 * sequence slot (a KV region of the model's cache, `Model.forwardRows`).
 * Each generation drives its slot as if it had the model alone (the
 * readback path, `./readback.ts`: forward, logits back, a token chosen on
 * the CPU with the request's own sampler, seed and grammar); the
 * {@link Batcher} gathers the slots' forward calls into batches:
 *
 * - a **decode round** runs one token of every slot waiting with one token,
 *   in one batch (one submit, one readback);
 * - a **prefill round** runs one chunk (at most `maxBatch` tokens) of the
 *   longest-waiting prompt, alone, so a newcomer's prompt never stalls the
 *   others for more than a chunk: rounds alternate while both wait.
 *
 * A sequence's tokens do not depend on what else runs: its prompt chunks are
 * always computed alone, at the same boundaries, and its decode tokens in
 * rounds whose rows are computed independently of each other (see the
 * module's test). New requests take a free slot between rounds and finished
 * ones leave; a slot keeps its last tokens, and a request takes the free
 * slot sharing the longest prefix with its prompt (prefix reuse per slot).
 *
 * @module
 */

import type { Model } from "../model/model.ts";
import type { TokenContext } from "./readback.ts";

/** A forward call waiting for its round. */
interface Call {
  readonly slot: SequenceSlot;
  readonly tokens: readonly number[];
  /** Tokens already run (prefill chunks). */
  done: number;
  readonly resolve: (logits: Float32Array) => void;
  readonly reject: (e: unknown) => void;
}

/**
 * One sequence of a batched model: its KV region and the tokens there. A
 * generation drives it as a {@link TokenContext}.
 */
export class SequenceSlot implements TokenContext {
  /** Tokens in the region (positions `[0, nPast)`). */
  nPast = 0;
  /** Their ids, when known (for prefix reuse); cleared when the region holds anything else. */
  #tokens: number[] = [];
  /** Held by a generation. */
  busy = false;
  /** When it was last released (for choosing among free slots). */
  lastUsed = 0;

  constructor(readonly batcher: Batcher, readonly index: number) {}

  /** Context length of the slot. */
  get nCtx(): number {
    return this.batcher.model.nCtx;
  }

  /** Vocabulary size. */
  get nVocab(): number {
    return this.batcher.model.config.nVocab;
  }

  /** Throws a RangeError naming the first id outside the vocabulary. */
  checkIds(tokens: readonly number[]): void {
    this.batcher.model.checkIds(tokens);
  }

  /** How many of `prompt`'s first tokens are in the region (at least one is left to run). */
  sharedPrefix(prompt: readonly number[]): number {
    const ctx = this.#tokens;
    const n = Math.min(ctx.length, this.nPast, prompt.length - 1);
    let i = 0;
    while (i < n && ctx[i] === prompt[i]) i++;
    return i;
  }

  /** Keeps the longest prefix of `prompt` the region holds ("reuse") or nothing ("reset"). */
  begin(prompt: readonly number[], mode: "reuse" | "reset"): Promise<number> {
    const kept = mode === "reuse" ? this.sharedPrefix(prompt) : 0;
    this.nPast = kept;
    this.#tokens = [];
    return Promise.resolve(kept);
  }

  /** Runs `tokens` at the end of the region's sequence; the logits after the last. */
  forward(tokens: readonly number[]): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("forward needs at least one token");
    if (this.nPast + tokens.length > this.nCtx) {
      throw new RangeError(
        `context full: ${this.nPast} tokens + ${tokens.length} more exceed the context size ${this.nCtx}`,
      );
    }
    return this.batcher.enqueue(this, tokens);
  }

  /** Records that the region holds `tokens` (the first nPast of them), or forgets it (`undefined`). */
  end(tokens: readonly number[] | undefined): void {
    if (tokens === undefined) {
      this.nPast = 0;
      this.#tokens = [];
    } else {
      this.#tokens = tokens.slice(0, this.nPast);
    }
  }
}

/** Gathers the slots' forward calls into batches (see the module doc). */
export class Batcher {
  /** The slots, one per KV region of the model. */
  readonly slots: SequenceSlot[];
  #calls: Call[] = [];
  #running = false;
  #lastWasPrefill = false;
  #clock = 0;
  /** Rounds run, and the rows they computed (for statistics and tests). */
  readonly stats = { decodeRounds: 0, decodeRows: 0, prefillRounds: 0 };

  /** Slots for every sequence `model` was loaded for (`maxSequences`). */
  constructor(readonly model: Model) {
    this.slots = Array.from({ length: model.maxSequences }, (_, i) => new SequenceSlot(this, i));
  }

  /**
   * A free slot for `prompt`: the one sharing the longest prefix with it,
   * else the least recently used; undefined when all are held.
   */
  acquire(prompt: readonly number[]): SequenceSlot | undefined {
    let best: SequenceSlot | undefined;
    let bestShared = -1;
    for (const s of this.slots) {
      if (s.busy) continue;
      const shared = s.sharedPrefix(prompt);
      if (shared > bestShared || (shared === bestShared && s.lastUsed < best!.lastUsed)) {
        best = s;
        bestShared = shared;
      }
    }
    if (best) best.busy = true;
    return best;
  }

  /** Gives a slot back (its tokens stay for prefix reuse). */
  release(slot: SequenceSlot): void {
    slot.busy = false;
    slot.lastUsed = ++this.#clock;
  }

  /** The longest prefix of `prompt` a free slot holds. */
  cachedPrefix(prompt: readonly number[]): number {
    let best = 0;
    for (const s of this.slots) if (!s.busy) best = Math.max(best, s.sharedPrefix(prompt));
    return best;
  }

  /** Queues a forward call of `slot` for the next round that takes it. */
  enqueue(slot: SequenceSlot, tokens: readonly number[]): Promise<Float32Array> {
    if (this.#calls.some((c) => c.slot === slot)) {
      throw new Error(`slot ${slot.index} already has a forward call waiting`);
    }
    const p = new Promise<Float32Array>((resolve, reject) => {
      this.#calls.push({ slot, tokens: [...tokens], done: 0, resolve, reject });
    });
    if (!this.#running) {
      this.#running = true;
      this.#loop().finally(() => this.#running = false);
    }
    return p;
  }

  async #loop(): Promise<void> {
    while (this.#calls.length > 0) {
      await this.#gather();
      const decode = this.#calls.filter((c) => c.tokens.length === 1);
      const prefill = this.#calls.filter((c) => !decode.includes(c));
      if (decode.length > 0 && (prefill.length === 0 || this.#lastWasPrefill)) {
        await this.#decodeRound(decode);
        this.#lastWasPrefill = false;
      } else {
        await this.#prefillRound(prefill[0]!);
        this.#lastWasPrefill = true;
      }
    }
  }

  /**
   * Lets every held slot whose generation is between tokens (sampling,
   * streaming its text) make its next call before a round starts, for a
   * few milliseconds at most.
   */
  async #gather(): Promise<void> {
    const deadline = performance.now() + 4;
    for (;;) {
      await new Promise((r) => setTimeout(r, 0));
      const held = this.slots.filter((s) => s.busy).length;
      if (this.#calls.length >= held || performance.now() >= deadline) return;
    }
  }

  async #decodeRound(calls: Call[]): Promise<void> {
    for (const c of calls) this.#calls.splice(this.#calls.indexOf(c), 1);
    try {
      const logits = await this.model.forwardRows(
        calls.map((c) => ({ sequence: c.slot.index, pos: c.slot.nPast, tokens: c.tokens })),
      );
      this.stats.decodeRounds++;
      this.stats.decodeRows += calls.length;
      calls.forEach((c, i) => {
        c.slot.nPast += 1;
        c.resolve(logits[i]!);
      });
    } catch (e) {
      for (const c of calls) c.reject(e);
    }
  }

  async #prefillRound(call: Call): Promise<void> {
    const chunk = call.tokens.slice(call.done, call.done + this.model.maxBatch);
    try {
      const [logits] = await this.model.forwardRows([
        { sequence: call.slot.index, pos: call.slot.nPast, tokens: chunk },
      ]);
      this.stats.prefillRounds++;
      call.slot.nPast += chunk.length;
      call.done += chunk.length;
      if (call.done === call.tokens.length) {
        this.#calls.splice(this.#calls.indexOf(call), 1);
        call.resolve(logits!);
      }
    } catch (e) {
      this.#calls.splice(this.#calls.indexOf(call), 1);
      call.reject(e);
    }
  }
}
