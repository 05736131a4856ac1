/**
 * Continuous batching: several generations share one model, each in a
 * sequence slot (a KV region of the model's cache, `Model.forwardRows`),
 * and the {@link Batcher} computes their tokens in shared batches:
 *
 * - a **prefill round** runs one chunk (at most `maxBatch` tokens) of a
 *   waiting prompt longer than {@linkcode Batcher.mergeMax}, alone, so a
 *   newcomer's prompt stalls the others for one chunk at most: prefill and
 *   decode rounds alternate while both wait, and waiting prompts take turns
 *   chunk by chunk (a short one is not held up by a long one's whole
 *   prompt); a request cancelled meanwhile drops the chunks not yet run
 *   (those that ran stay for prefix reuse); its first token is chosen on
 *   the CPU from the last chunk's logits;
 * - a **decode round** feeds one token of every generating slot, and the
 *   whole of each short prompt (up to `mergeMax` tokens: most chat turns
 *   after prefix reuse) that joins, in one batch. While every expert is
 *   resident and no request needs each token's logits on the CPU, rounds
 *   run in **windows**: each slot's own GPU sampler (its parameters, seed
 *   and penalty history) picks its next token on the GPU and the next round
 *   embeds it without a round trip, up to `window` rounds per readback.
 *   Otherwise (experts streaming: a batch that misses is repaired as a
 *   whole; a grammar; log probabilities) each round reads the logits back
 *   and every slot's token is chosen on the CPU (the GPU sampler's
 *   reference: the same token for the same logits, seed and position);
 *   slots of both kinds take turns.
 *
 * A sequence's tokens do not depend on what else runs: a long prompt's
 * chunks are computed alone, at the same boundaries; a decode round attends
 * token by token and computes each row independently of the others (bit for
 * bit: tested), with at most `Model.exactBatchRows` tokens (8 on GPUs,
 * where more would switch the matrix kernels to tiled ones whose sums
 * differ in the last bits): more generating slots than that take turns,
 * those served longest ago first. New requests take a free slot between
 * rounds and finished ones leave; a slot keeps its last tokens, and a
 * request takes the free slot sharing the longest prefix with its prompt
 * (prefix reuse per slot).
 *
 * @module
 */

import type { Model } from "../model/model.ts";
import { createBuffer, upload } from "../gpu/buffers.ts";
import { type GpuSampler, prepareSampler } from "../gpu/ops/sample.ts";
import { recordOps } from "../gpu/ops/op.ts";
import { resolveSampling } from "./sampler_cpu.ts";
import { checkRequest, type StepsResult } from "./session.ts";
import { type ReadbackOptions, TokenChooser, type TokenContext } from "./readback.ts";
import type { FinishReason } from "./types.ts";

/** A prompt chunk's forward call waiting for its round. */
interface Call {
  readonly slot: SequenceSlot;
  readonly tokens: readonly number[];
  /** Tokens already run (chunks). */
  done: number;
  readonly resolve: (logits: Float32Array) => void;
  readonly reject: (e: unknown) => void;
  /** Its request's cancellation: the chunks not yet run are dropped. */
  readonly signal?: AbortSignal;
}

/** What a forward call whose request was cancelled rejects with. */
class PromptCancelled extends Error {
  constructor() {
    super("the request was cancelled during its prompt");
    this.name = "PromptCancelled";
  }
}

/** Tokens handed from the batcher to one generation, as they come. */
class TokenChannel {
  #items: number[][] = [];
  #end: FinishReason | undefined;
  #error: { e: unknown } | undefined;
  #wake: (() => void) | undefined;

  push(ids: number[]): void {
    if (ids.length) this.#items.push(ids);
    this.#wake?.();
  }

  finish(reason: FinishReason): void {
    this.#end ??= reason;
    this.#wake?.();
  }

  fail(e: unknown): void {
    this.#error ??= { e };
    this.#wake?.();
  }

  /** The next tokens, or how it ended. */
  async next(): Promise<number[] | FinishReason> {
    for (;;) {
      if (this.#items.length) return this.#items.shift()!;
      if (this.#error) throw this.#error.e;
      if (this.#end) return this.#end;
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = undefined;
    }
  }
}

/** A slot's generation after its first token, driven by the batcher. */
interface Decoder {
  readonly slot: SequenceSlot;
  readonly chooser: TokenChooser;
  readonly stop: ReadonlySet<number>;
  /** Tokens it may still generate. */
  remaining: number;
  /**
   * What the next round feeds: the last token chosen, or (a prompt merged
   * into the decode rounds, see {@linkcode Batcher.mergeMax}) the prompt's
   * tokens not in the slot yet.
   */
  feed: number[];
  /** When it last had a round (the rounds' count then; 0: never). */
  served: number;
  /** Whether the slot's GPU sampler history holds `chooser.history`. */
  ringFresh: boolean;
  readonly out: TokenChannel;
}

/**
 * One sequence of a batched model: its KV region and the tokens there. A
 * generation drives its prompt through it as a {@link TokenContext}.
 */
export class SequenceSlot implements TokenContext {
  /** Tokens in the region (positions `[0, nPast)`). */
  nPast = 0;
  /** Their ids, when known (for prefix reuse). */
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

  /**
   * Runs `tokens` (a prompt) at the end of the region's sequence; the
   * logits after the last. When `signal` aborts, the chunks not yet run are
   * dropped and it rejects with `PromptCancelled` (nPast counts those that ran).
   */
  forward(tokens: readonly number[], signal?: AbortSignal): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("forward needs at least one token");
    if (this.nPast + tokens.length > this.nCtx) {
      throw new RangeError(
        `context full: ${this.nPast} tokens + ${tokens.length} more exceed the context size ${this.nCtx}`,
      );
    }
    return this.batcher.enqueue(this, tokens, signal);
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

/** Gathers the slots' work into batches (see the module doc). */
export class Batcher {
  /** The slots, one per KV region of the model. */
  readonly slots: SequenceSlot[];
  /** Most decode rounds per readback. */
  readonly window: number;
  #calls: Call[] = [];
  #decoders: Decoder[] = [];
  #running = false;
  #lastWasPrefill = false;
  #lastWasReadback = false;
  #served = 0;
  readonly #maxRows: number;
  /** Most tokens a decode round feeds: within `exactBatchRows` and the batch size. */
  readonly #roundTokens: number;
  /**
   * Prompts (the part not in the slot yet) up to this many tokens join the
   * decode rounds (a window, or a readback round) instead of prefill rounds
   * of their own: with a full round of one-token rows they still keep the
   * round within `Model.exactBatchRows` tokens, where every row is computed
   * as alone, and decode rounds attend token by token, so such a prompt's
   * numbers are the same whatever runs beside it (0: none join).
   */
  readonly mergeMax: number;
  #clock = 0;
  /** Rounds run and the rows they computed (for statistics and tests). */
  readonly stats = {
    decodeRounds: 0,
    decodeRows: 0,
    prefillRounds: 0,
    windows: 0,
    maxRows: 0,
    merged: 0,
  };

  private constructor(
    readonly model: Model,
    /** Per slot: its GPU sampler, and the step buffer giving the sampler its token's position. */
    readonly samplers: readonly { sampler: GpuSampler; step: GPUBuffer }[],
    /** u32 [window, maxSequences]: the tokens a window's rounds sampled. */
    readonly tokenLog: GPUBuffer,
  ) {
    this.slots = Array.from({ length: model.maxSequences }, (_, i) => new SequenceSlot(this, i));
    this.#roundTokens = Math.min(model.exactBatchRows, model.maxBatch);
    this.#maxRows = Math.min(model.maxSequences, this.#roundTokens);
    this.mergeMax = this.#roundTokens - this.#maxRows;
    // the route log holds a window's routes, a row per token
    this.window = Math.max(
      1,
      Math.min(8, model.window, Math.floor(model.nCtx / model.maxSequences)),
    );
  }

  /** Slots and samplers for every sequence `model` was loaded for (`maxSequences`). */
  static async create(model: Model): Promise<Batcher> {
    const s = model.transformer.state;
    if (!s.logitsRows) throw new RangeError("a Batcher needs a model loaded with maxSequences > 1");
    const V = model.config.nVocab;
    const samplers = [];
    for (let i = 0; i < model.maxSequences; i++) {
      const step = createBuffer(model.gpu, {
        label: `slot${i}.sample_step`,
        size: 16,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      const sampler = await prepareSampler(model.gpu, {
        logits: { buffer: s.logitsRows, offset: 0, stride: V },
        n: V,
        params: resolveSampling({ seed: 0 }),
        step,
        out: { buffer: s.tokens, index: 0 },
        label: `slot${i}.sampler`,
      });
      samplers.push({ sampler, step });
    }
    const tokenLog = createBuffer(model.gpu, {
      label: "batch_token_log",
      size: 4 * model.window * model.maxSequences,
    });
    return new Batcher(model, samplers, tokenLog);
  }

  /** The penalty history a slot's GPU sampler holds (as the session's does). */
  get historyCapacity(): number {
    return this.samplers[0]!.sampler.historyCapacity;
  }

  /**
   * A free slot for `prompt`: the one sharing the longest prefix with it,
   * else the least recently used (`[]`: the least recently used);
   * undefined when all are held.
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

  /** Queues a prompt's forward call of `slot` for the prefill rounds. */
  enqueue(
    slot: SequenceSlot,
    tokens: readonly number[],
    signal?: AbortSignal,
  ): Promise<Float32Array> {
    if (this.#calls.some((c) => c.slot === slot)) {
      throw new Error(`slot ${slot.index} already has a forward call waiting`);
    }
    const p = new Promise<Float32Array>((resolve, reject) => {
      this.#calls.push({ slot, tokens: [...tokens], done: 0, resolve, reject, signal });
    });
    this.#kick();
    return p;
  }

  /**
   * Generates in `slot` after `first` (chosen from the prompt's logits,
   * not yet fed) until a stop token or `remaining` more tokens; the tokens
   * arrive on the returned channel. `leave` ends it early.
   */
  decode(
    slot: SequenceSlot,
    o: {
      chooser: TokenChooser;
      stop: ReadonlySet<number>;
      remaining: number;
      /** The first token, chosen from the prompt's logits; or `prompt`, the tokens to feed first. */
      first?: number;
      prompt?: readonly number[];
    },
  ): { channel: TokenChannel; leave: () => void } {
    const d: Decoder = {
      slot,
      chooser: o.chooser,
      stop: o.stop,
      remaining: o.remaining,
      feed: o.prompt ? [...o.prompt] : [o.first!],
      ringFresh: false,
      served: 0,
      out: new TokenChannel(),
    };
    this.samplers[slot.index]!.sampler.setParams(o.chooser.params);
    this.#decoders.push(d);
    this.#kick();
    return { channel: d.out, leave: () => this.#remove(d) };
  }

  #remove(d: Decoder): void {
    const i = this.#decoders.indexOf(d);
    if (i >= 0) this.#decoders.splice(i, 1);
  }

  #kick(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop().finally(() => this.#running = false);
  }

  async #loop(): Promise<void> {
    while (this.#calls.length > 0 || this.#decoders.length > 0) {
      await this.#gather();
      for (const c of this.#calls.filter((c) => c.signal?.aborted)) {
        this.#calls.splice(this.#calls.indexOf(c), 1);
        c.reject(new PromptCancelled());
      }
      if (this.#calls.length > 0 && (this.#decoders.length === 0 || !this.#lastWasPrefill)) {
        await this.#prefillRound(this.#calls[0]!);
        this.#lastWasPrefill = true;
      } else if (this.#decoders.length > 0) {
        // windows for what the GPU can sample, readback rounds for the rest, taking turns
        const gpu = this.model.scheduler.streaming
          ? []
          : this.#decoders.filter((d) => d.chooser.gpuSamplable);
        const cpu = this.#decoders.filter((d) => !gpu.includes(d));
        const windowed = gpu.length > 0 && (cpu.length === 0 || this.#lastWasReadback);
        // at most exactBatchRows rows (each computed as alone): merged prompts first, then
        // those served longest ago
        const order = (windowed ? gpu : cpu).sort((a, b) =>
          (b.feed.length > 1 ? 1 : 0) - (a.feed.length > 1 ? 1 : 0) || a.served - b.served
        );
        const ds: Decoder[] = [];
        let tokens = 0;
        for (const d of order) {
          if (ds.length === this.#maxRows) break;
          if (tokens + d.feed.length > this.#roundTokens && ds.length > 0) continue;
          ds.push(d);
          tokens += d.feed.length;
        }
        for (const d of ds) d.served = ++this.#served;
        this.stats.maxRows = Math.max(this.stats.maxRows, ds.length);
        this.#lastWasReadback = !windowed;
        try {
          await (windowed ? this.#window(ds) : this.#readbackRound(ds));
        } catch (e) {
          for (const d of ds) {
            this.#remove(d);
            d.out.fail(e);
          }
        }
        this.#lastWasPrefill = false;
      }
    }
  }

  /**
   * Lets every held slot whose generation is between steps (choosing its
   * first token, streaming its text) join before a round starts, for a few
   * milliseconds at most.
   */
  async #gather(): Promise<void> {
    const deadline = performance.now() + 4;
    for (;;) {
      const ready = new Set([
        ...this.#calls.map((c) => c.slot),
        ...this.#decoders.map((d) => d.slot),
      ]);
      if (this.slots.every((s) => !s.busy || ready.has(s))) return;
      if (performance.now() >= deadline) return;
      await new Promise((r) => setTimeout(r, 0));
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
      this.#calls.splice(this.#calls.indexOf(call), 1);
      if (call.done === call.tokens.length) call.resolve(logits!);
      else this.#calls.push(call); // the other waiting prompts' chunks go first
    } catch (e) {
      this.#calls.splice(this.#calls.indexOf(call), 1);
      call.reject(e);
    }
  }

  /** Hands `ids` (in order) to `d` up to its stop token or budget; ends it there. */
  #deliver(d: Decoder, ids: readonly number[]): number {
    const take: number[] = [];
    let reason: FinishReason | undefined;
    for (const id of ids) {
      take.push(id);
      d.remaining--;
      if (d.stop.has(id)) reason = "stop";
      else if (d.remaining <= 0) reason = "length";
      if (reason) break;
    }
    d.out.push(take);
    if (take.length) d.feed = [take[take.length - 1]!];
    if (reason) {
      this.#remove(d);
      d.out.finish(reason);
    }
    return take.length;
  }

  /** One round, logits read back, every token chosen on the CPU. */
  async #readbackRound(ds: Decoder[]): Promise<void> {
    const logits = await this.model.forwardRows(
      ds.map((d) => ({ sequence: d.slot.index, pos: d.slot.nPast, tokens: d.feed })),
      { tokenByToken: true },
    );
    this.stats.decodeRounds++;
    this.stats.decodeRows += ds.length;
    ds.forEach((d, i) => {
      if (!this.#decoders.includes(d)) return; // left while the round ran
      d.slot.nPast += d.feed.length;
      d.ringFresh = false;
      this.#deliver(d, [d.chooser.choose(logits[i]!, d.slot.nPast - 1, d.remaining)]);
    });
  }

  /** Rounds sampled on the GPU, each feeding the next, with one readback. */
  async #window(ds: Decoder[]): Promise<void> {
    const model = this.model;
    const R = ds.length;
    // round 0 feeds each slot's `feed` (a merged prompt: several tokens), later rounds one
    const first = ds.reduce((n, d) => n + d.feed.length, 0);
    // a prompt waiting for its chunk or its turn: one round, so that it joins soon; the window
    // stops where the fullest context does (a slot's room covers its own remaining tokens,
    // not a longer neighbour's) and where the route log (a row per token) is full
    const prompts = this.#calls.length > 0 ||
      this.#decoders.some((d) => d.feed.length > 1 && !ds.includes(d));
    const W = prompts ? 1 : Math.min(
      this.window,
      Math.max(...ds.map((d) => d.remaining)),
      ...ds.map((d) => model.nCtx - d.slot.nPast - d.feed.length + 1),
      Math.floor((model.nCtx - first) / R) + 1,
    );
    const s = model.transformer.state;
    ds.forEach((d, r) => {
      const { sampler } = this.samplers[d.slot.index]!;
      if (!d.ringFresh) sampler.resetHistory(d.chooser.history);
      sampler.retarget(r, r);
    });
    const ops = ds.flatMap((d) => this.samplers[d.slot.index]!.sampler.ops);
    model.beginChecks();
    let logged = 0;
    for (let j = 0; j < W; j++) {
      // the position of the token whose logits round j samples
      const at = (d: Decoder) => d.slot.nPast + d.feed.length - 1 + j;
      ds.forEach((d) => {
        const pos = at(d);
        upload(model.gpu, this.samplers[d.slot.index]!.step, new Uint32Array([pos, 1, pos + 1, 0]));
      });
      const runs = ds.map((d) => ({
        sequence: d.slot.index,
        pos: j === 0 ? d.slot.nPast : at(d),
        // after round 0 the ids come from the samplers (not uploaded): a stand-in for the checks
        tokens: j === 0 ? d.feed : [d.feed[d.feed.length - 1]!],
      }));
      model.queueRows(runs, {
        feed: j === 0,
        logRow: logged,
        tokenByToken: true,
        after: (enc) => {
          recordOps(enc, ops, 1);
          enc.copyBufferToBuffer(s.tokens, 0, this.tokenLog, 4 * j * R, 4 * R);
        },
      });
      logged += j === 0 ? first : R;
    }
    const [routes, [log, flag]] = await model.readRoutes(0, logged, [
      { buffer: this.tokenLog, offset: 0, size: 4 * W * R },
      model.finiteFlag,
    ]);
    model.scheduler.account(routes, logged);
    model.checkFinite(flag);
    this.stats.windows++;
    this.stats.decodeRounds += W;
    this.stats.decodeRows += W * R;
    const ids = new Uint32Array(log!);
    ds.forEach((d, r) => {
      if (!this.#decoders.includes(d)) return; // left while the window ran
      const got = Array.from({ length: W }, (_, j) => ids[j * R + r]!);
      const fed = d.feed.length;
      const n = this.#deliver(d, got);
      d.chooser.accept(got.slice(0, n));
      d.slot.nPast += fed + n - 1;
      d.ringFresh = true;
    });
  }

  /** Frees the samplers (not the model). */
  destroy(): void {
    for (const { sampler, step } of this.samplers) {
      sampler.destroy();
      step.destroy();
    }
    this.tokenLog.destroy();
  }
}

/**
 * Generation after `prompt` in `slot` (see the module doc): the checks,
 * prefix reuse and context left behind of `readbackSteps`, the prompt in
 * prefill rounds and its first token chosen on the CPU from their logits
 * (or, a short prompt, both in the decode rounds), the rest from the
 * batcher's decode rounds.
 */
export async function* batchSteps(
  slot: SequenceSlot,
  prompt: readonly number[],
  o: ReadbackOptions,
): AsyncGenerator<number[], StepsResult, void> {
  checkRequest(prompt, slot.nCtx, slot, o.maxTokens);
  // the last generated token is never fed back, so it needs no cache room
  const maxTokens = Math.min(o.maxTokens, slot.nCtx - prompt.length + 1);
  const stop = new Set(o.stopTokens);
  const chooser = new TokenChooser(o, slot.nVocab, prompt);
  const generated: number[] = [];
  let failed = false;
  let leave: (() => void) | undefined;
  const cached = await slot.begin(prompt, o.context);
  o.onContext?.(cached);
  const result = (finishReason: FinishReason): StepsResult => ({
    promptTokens: prompt.length,
    cachedTokens: cached,
    finishReason,
  });
  try {
    const rest = prompt.slice(cached);
    let d: ReturnType<Batcher["decode"]>;
    if (rest.length <= slot.batcher.mergeMax) {
      // a short prompt joins the decode rounds: its first token is chosen there too
      d = slot.batcher.decode(slot, { chooser, stop, remaining: maxTokens, prompt: rest });
      slot.batcher.stats.merged++;
    } else {
      let logits: Float32Array;
      try {
        logits = await slot.forward(rest, o.signal);
      } catch (e) {
        // the chunks that ran stay in the slot (its context: the prompt's first nPast tokens)
        if (e instanceof PromptCancelled) return result("cancelled");
        throw e;
      }
      const first = chooser.choose(logits, slot.nPast - 1, maxTokens);
      generated.push(first);
      yield [first];
      if (stop.has(first)) return result("stop");
      if (maxTokens === 1) return result("length");
      d = slot.batcher.decode(slot, { chooser, stop, remaining: maxTokens - 1, first });
    }
    leave = d.leave;
    for (;;) {
      const next = await d.channel.next();
      if (typeof next === "string") return result(next);
      generated.push(...next);
      yield next;
    }
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    leave?.();
    slot.end(failed ? undefined : [...prompt, ...generated]);
  }
}
