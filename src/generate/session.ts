/**
 * A generation session: the run loop on top of a {@link Model}'s batches.
 * It owns
 *
 * - **prefill** of the part of the prompt that is not in the KV cache (the
 *   longest prefix shared with the tokens the session left there is kept:
 *   prefix reuse), with the output head and the sampler on its last batch;
 * - **the decode window**: tokens are sampled on the GPU and fed back
 *   without a round trip; the CPU reads a window back at once, asks the
 *   expert scheduler whether a token missed an expert, repairs the first
 *   such token and drops those queued after it (stall and repair,
 *   DESIGN.md), and yields the accepted tokens;
 * - the **token log** and the saved residual streams of the queued tokens;
 * - **the sampler with its history**: the penalties look back over the
 *   whole prompt and the generated tokens; a repaired batch samples again
 *   from the history as it was before its first pass;
 * - the **checks**, once: an empty prompt, ids outside the vocabulary, a
 *   prompt longer than the context ({@link RequestError}); `maxTokens` is
 *   cut to the room left; stop tokens end the generation.
 *
 * @module
 */

import type { Model, SampleState } from "../model/model.ts";
import type { Op } from "../gpu/ops/op.ts";
import { createBuffer, recordReadback } from "../gpu/buffers.ts";
import { type GpuSampler, historyRing, prepareSampler } from "../gpu/ops/sample.ts";
import { resolveSampling } from "./sampler_cpu.ts";
import type { FinishReason, GenerationStats, SamplingParams } from "./types.ts";
import { PromptCache } from "./prompt_cache.ts";

/** A request that cannot be served as given (the message names the field). */
export class RequestError extends Error {
  /** The request field at fault. */
  readonly field: string;
  /** Builds the error. */
  constructor(field: string, message: string) {
    super(message);
    this.name = "RequestError";
    this.field = field;
  }
}

/**
 * Throws a {@link RequestError} naming `field` when `prompt` is empty or
 * longer than a context of `nCtx` positions (`what` names it in the message).
 */
export function checkPrompt(
  prompt: readonly number[],
  nCtx: number,
  o: { field?: string; what?: string } = {},
): void {
  const field = o.field ?? "prompt";
  const what = o.what ?? "prompt";
  if (prompt.length === 0) throw new RequestError(field, `the ${what} is empty`);
  if (prompt.length > nCtx) {
    throw new RequestError(
      field,
      `the ${what} has ${prompt.length} tokens; the context holds ${nCtx} ` +
        `(start the server with a larger --ctx-size, or shorten it)`,
    );
  }
}

/**
 * The checks a generation makes before it starts, as {@link RequestError}s
 * naming the field: the prompt (empty, longer than `nCtx`, ids outside the
 * vocabulary as `model.checkIds` says) and `max_tokens` (a positive integer).
 */
export function checkRequest(
  prompt: readonly number[],
  nCtx: number,
  model: { checkIds(tokens: readonly number[]): void },
  maxTokens: number,
): void {
  checkPrompt(prompt, nCtx);
  try {
    model.checkIds(prompt);
  } catch (e) {
    throw new RequestError("prompt", (e as Error).message);
  }
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new RequestError("max_tokens", `max_tokens must be a positive integer, got ${maxTokens}`);
  }
}

/** How a generation's prompt meets the context already in the KV cache. */
export type ContextMode =
  /** The prompt follows whatever the context holds. */
  | "append"
  /** The context becomes the prompt, keeping the longest prefix it shares with the session's last tokens. */
  | "reuse"
  /** The context becomes the prompt, computed from position 0. */
  | "reset";

/** Options of {@linkcode Session.steps} and {@linkcode Session.generate}. */
export interface StepsOptions {
  /** Tokens to generate at most (cut to the room left in the context). */
  maxTokens: number;
  /** Token ids that end generation (included in the output). */
  stopTokens?: Iterable<number>;
  /** Tokens queued before each readback; default (and at most) the model's window. */
  window?: number;
  /** Also return the logits after the last prompt token. */
  promptLogits?: boolean;
  /** Sampling (needs a session made with a sampler); default greedy argmax. */
  sampling?: SamplingParams;
  /** How the prompt meets the context; default `"append"`. */
  context?: ContextMode;
}

/** What {@linkcode Session.steps} returns when it ends. */
export interface StepsResult {
  /** Prompt tokens. */
  promptTokens: number;
  /** Prompt tokens whose KV cache was kept (not processed again). */
  cachedTokens: number;
  /** A stop token ended it ("stop"), or the token budget ("length"). */
  finishReason: FinishReason;
  /** Logits after the last prompt token, when asked for. */
  promptLogits?: Float32Array;
}

/** What {@linkcode Session.generate} returns. */
export interface SessionOutput {
  /** Generated token ids (a stop token included). */
  tokens: number[];
  /** Logits after the last prompt token, when asked for. */
  promptLogits?: Float32Array;
  /** Statistics. */
  stats: GenerationStats;
}

/**
 * Tokens of the live context a request must throw away before the session
 * saves it in the prompt cache: fewer is a conversation going on (its
 * reply re-tokenised), not another one.
 */
const SAVE_MIN_LOST = 16;

/** A generation session over a model (see the module doc). One generation runs at a time. */
export class Session {
  /** u32 [nCtx + 1]: the token sampled after each position (at the position it will take). */
  readonly #tokenLog: GPUBuffer;
  /** f32 [window, nEmbd]: each queued decode token's saved residual stream. */
  readonly #savedRing: GPUBuffer;
  /** The token ids whose keys and values fill the model's KV cache at positions [0, nPast). */
  #context: number[] = [];
  /** The model's context version when `#context` was recorded (-1: never). */
  #contextVersion = -1;
  #cachedTokens = 0;

  private constructor(
    /** The model. */
    readonly model: Model,
    /** The GPU sampler (temperature, top-k/p, min-p, penalties, seed); none: greedy. */
    readonly sampler: GpuSampler | undefined,
    /** Copies of earlier sequences' KV caches (see `prompt_cache.ts`); none: only the live one is reused. */
    readonly promptCache: PromptCache | undefined,
  ) {
    const c = model.config;
    this.#tokenLog = createBuffer(model.gpu, { label: "token_log", size: 4 * (model.nCtx + 1) });
    this.#savedRing = createBuffer(model.gpu, {
      label: "saved_ring",
      size: 4 * model.window * c.nEmbd,
    });
  }

  /**
   * A session over `model`; with `sampler` (default true) it can sample,
   * otherwise it is greedy. `promptCacheBytes` (default 0: none) bounds the
   * copies of earlier sequences' KV caches kept for prefix reuse.
   */
  static async create(
    model: Model,
    o: { sampler?: boolean; promptCacheBytes?: number } = {},
  ): Promise<Session> {
    const cache = o.promptCacheBytes ? new PromptCache(o.promptCacheBytes) : undefined;
    if (o.sampler === false) return new Session(model, undefined, cache);
    const s = model.transformer.state;
    const sampler = await prepareSampler(model.gpu, {
      logits: { buffer: s.logits, offset: 0, stride: model.config.nVocab },
      n: model.config.nVocab,
      params: resolveSampling({ seed: 0 }),
      step: s.step,
      out: { buffer: s.tokens, index: 0 },
      label: "sampler",
    });
    return new Session(model, sampler, cache);
  }

  /**
   * How many of `prompt`'s first tokens already have their keys and values
   * in the KV cache (left there by this session's last generation). At
   * least one token is always left to process: its logits choose the first
   * new token.
   */
  cachedPrefix(prompt: readonly number[]): number {
    const ctx = this.#context;
    // someone drove the model directly since (reset, forward): nothing is known to be there
    if (
      this.model.contextVersion !== this.#contextVersion || this.model.nPast !== ctx.length
    ) {
      return 0;
    }
    const n = Math.min(ctx.length, prompt.length - 1);
    let i = 0;
    while (i < n && ctx[i] === prompt[i]) i++;
    // a recurrent state (gated DeltaNet) is reusable only whole: the prompt must extend the context
    if (!this.model.canRewind && i !== ctx.length) return 0;
    return i;
  }

  /**
   * Readies the context for `prompt` as {@linkcode Session.steps} does, for
   * a caller that then drives the model itself (the readback path,
   * `./readback.ts`): "reuse" keeps the longest prefix the session knows
   * (the live context's or the prompt cache's), "reset" empties it. Returns
   * the prefix kept; record what the caller leaves with `adopt`.
   */
  async beginContext(prompt: readonly number[], mode: "reuse" | "reset"): Promise<number> {
    const cached = mode === "reuse" ? await this.#reuse(prompt) : 0;
    if (mode === "reset") this.model.truncate(0);
    this.#cachedTokens = cached;
    this.#context = [];
    return cached;
  }

  /**
   * Records that the KV cache holds `tokens` at positions [0, nPast), for a
   * caller that drove the model itself (the readback path, `./readback.ts`),
   * so that the next request can reuse them; `[]` forgets.
   */
  adopt(tokens: readonly number[]): void {
    this.#context = tokens.slice(0, this.model.nPast);
    this.#contextVersion = this.model.contextVersion;
  }

  /**
   * Generation after `prompt`, as an async generator of accepted token
   * ids, a window at a time; see the module doc. Stopping the iteration
   * early leaves the context at the tokens yielded; a failure forgets it.
   */
  async *steps(prompt: readonly number[], o: StepsOptions): AsyncGenerator<number[], StepsResult> {
    const model = this.model;
    const mode = o.context ?? "append";
    checkRequest(prompt, model.nCtx - (mode === "append" ? model.nPast : 0), model, o.maxTokens);
    if (o.window !== undefined && !(Number.isInteger(o.window) && o.window >= 1)) {
      throw new RangeError(`window must be an integer ≥ 1, got ${o.window}`);
    }
    if (o.sampling && !this.sampler) {
      throw new TypeError("this session has no sampler (Session.create(model, { sampler: true }))");
    }
    const cached = mode === "reuse" ? await this.#reuse(prompt) : 0;
    this.#cachedTokens = cached;
    if (mode === "reset") model.truncate(0);
    const start = model.nPast - cached; // the prompt's first position
    // the last generated token is never fed back, so it needs no cache room
    const maxTokens = Math.min(o.maxTokens, model.nCtx - start - prompt.length + 1);
    const stop = new Set(o.stopTokens ?? []);
    const sampler = o.sampling ? this.sampler : undefined;
    if (sampler) sampler.setParams(resolveSampling(o.sampling));
    const sample = sampler?.ops;
    // the penalties look back over the whole prompt, cached or not, and what was generated
    const history = (generated: readonly number[]): SampleState[] =>
      sampler
        ? [{
          buffer: sampler.history,
          data: historyRing([...prompt, ...generated], sampler.historyCapacity, "sampler"),
        }]
        : [];
    const toPrefill = prompt.slice(cached);
    this.#context = [];
    model.beginChecks();
    const sch = model.scheduler;
    const s = model.transformer.state;
    const maxWindow = Math.max(1, Math.min(o.window ?? model.window, model.window));
    const generated: number[] = []; // tokens yielded so far
    let failed = false;
    let finishReason: FinishReason = "length";
    try {
      let stallsSeen = sch.stalls;
      sampler?.resetHistory(prompt);
      await model.prefill(toPrefill, { head: true, sample, sampleState: history([]) });
      const posFirst = model.nPast; // the first generated token takes this position
      const enc0 = model.gpu.device.createCommandEncoder();
      const first = recordReadback(model.gpu, enc0, [
        { buffer: s.tokens, offset: 0, size: 4 },
        model.finiteFlag,
        ...(o.promptLogits ? [s.logits] : []),
      ]);
      model.gpu.submit(enc0);
      const [firstId, flag0, logitsBytes] = await first.read();
      model.checkFinite(flag0);
      const t0 = new Uint32Array(firstId!)[0]!;
      const promptLogits = logitsBytes ? new Float32Array(logitsBytes) : undefined;
      generated.push(t0);
      yield [t0];
      const result = (): StepsResult => ({
        promptTokens: prompt.length,
        cachedTokens: cached,
        finishReason,
        promptLogits,
      });
      if (stop.has(t0)) {
        finishReason = "stop";
        return result();
      }

      let pos = posFirst; // position of the token to feed next
      let window = sch.streaming ? 1 : maxWindow;
      while (generated.length < maxTokens) {
        // a repair appended tokens that were then dropped: the history is the accepted tokens
        if (sch.stalls !== stallsSeen) {
          stallsSeen = sch.stalls;
          sampler?.resetHistory([...prompt, ...generated]);
        }
        const n = Math.min(window, maxTokens - generated.length);
        const { accepted, stalled } = await this.#window(
          pos,
          n,
          sample,
          (g) => history([...generated, ...g]),
        );
        window = stalled ? 1 : Math.min(maxWindow, window * 2);
        const stopAt = accepted.findIndex((t) => stop.has(t));
        const take = stopAt >= 0 ? accepted.slice(0, stopAt + 1) : accepted;
        model.nPast = pos + take.length;
        generated.push(...take);
        yield take;
        if (stopAt >= 0) {
          finishReason = "stop";
          break;
        }
        pos += take.length;
      }
      return result();
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      // every generated token but the last has been fed into the context
      if (failed) {
        // the cache may hold anything beyond the kept prefix: forget it all
        model.reset();
        this.#context = [];
      } else {
        model.nPast = start + prompt.length + Math.max(0, generated.length - 1);
        model.touchContext();
        this.#context = start === 0 ? [...prompt, ...generated].slice(0, model.nPast) : [];
      }
      this.#contextVersion = model.contextVersion;
    }
  }

  /** Prompt tokens the current (or last) generation found in the KV cache or the prompt cache. */
  get cachedTokens(): number {
    return this.#cachedTokens;
  }

  /**
   * Makes the context the longest prefix of `prompt` the session knows:
   * the live context's, or a saved sequence's from the prompt cache
   * (uploaded). A live context that would be mostly thrown away (another
   * conversation) is saved there first. Returns the prefix's length.
   */
  async #reuse(prompt: readonly number[]): Promise<number> {
    const model = this.model;
    const live = this.cachedPrefix(prompt);
    // Saved sequences hold per-position KV rows; a recurrent state (gated DeltaNet) is one
    // summary of a whole sequence that a prefix of it cannot be cut from: not cached.
    const cache = model.canRewind ? this.promptCache : undefined;
    if (cache) {
      const known = model.contextVersion === this.#contextVersion &&
        model.nPast === this.#context.length;
      const ctx = known ? this.#context : [];
      if (ctx.length - live >= SAVE_MIN_LOST && !cache.covers(ctx)) {
        cache.add(ctx, await model.snapshotContext(ctx.length));
      }
      const hit = cache.lookup(prompt);
      if (hit && hit.n > live) {
        model.truncate(live);
        model.restoreContext(hit.snapshot, live, hit.n);
        cache.hits++;
        return hit.n;
      }
    }
    model.truncate(live);
    return live;
  }

  /**
   * Queues `n` decode tokens from `pos` (one submit each, fed back on the
   * GPU), reads them back at once and returns the accepted ones: all of
   * them, or up to and including the first that missed an expert (repaired
   * here, sampling again from the history `historyAt(accepted before it)`).
   */
  async #window(
    pos: number,
    n: number,
    sample: readonly Op[] | undefined,
    historyAt: (accepted: readonly number[]) => SampleState[],
  ): Promise<{ accepted: number[]; stalled: boolean }> {
    const model = this.model;
    const sch = model.scheduler;
    const s = model.transformer.state;
    const E = model.config.nEmbd;
    const streaming = sch.streaming;
    const syncsBefore = model.gpu.stats.syncs;
    const missesBefore = model.pool.stats.snapshot().misses;
    sch.beforeNext();
    for (let j = 0; j < n; j++) {
      model.writeStep(pos + j, 1);
      const enc = model.gpu.device.createCommandEncoder();
      model.recordBatch(enc, pos + j, 1, { sample, head: true, slot: j, keepWindowFlag: j > 0 });
      enc.copyBufferToBuffer(s.tokens, 0, this.#tokenLog, 4 * (pos + j + 1), 4);
      if (streaming) enc.copyBufferToBuffer(s.saved, 0, this.#savedRing, 4 * j * E, 4 * E);
      model.gpu.submit(enc);
    }
    const [routes, [idsBytes, flagBytes, preds]] = await model.readRoutes(pos, n, [
      { buffer: this.#tokenLog, offset: 4 * (pos + 1), size: 4 * n },
      model.finiteFlag,
      ...sch.readRange(n, 0),
    ]);
    model.checkFinite(flagBytes);
    const ids = new Uint32Array(idsBytes!);
    const accepted: number[] = [];
    let stalled = false;
    const words = sch.routeWords;
    for (let j = 0; j < n; j++) {
      const tokenRoutes = routes.subarray(j * words, (j + 1) * words);
      const miss = streaming ? sch.firstMiss(tokenRoutes, 1) : null;
      sch.seen(preds, 1, { token: j, firstMiss: miss?.layer ?? model.config.nLayer });
      if (miss) {
        // repair this token; those queued after it computed from its wrong output
        const repaired = await model.settle(pos + j, 1, tokenRoutes.slice(), {
          sample,
          head: true,
          sampleState: historyAt(accepted),
          restoreFrom: { buffer: this.#savedRing, offset: 4 * j * E },
          extra: [{ buffer: s.tokens, offset: 0, size: 4 }, model.finiteFlag],
        });
        sch.settle(repaired.routes, 1, true);
        model.checkFinite(repaired.extra[1]);
        accepted.push(new Uint32Array(repaired.extra[0]!)[0]!);
        stalled = true;
        break;
      }
      if (streaming) sch.account(tokenRoutes, 1);
      sch.settle(tokenRoutes, 1, true);
      accepted.push(ids[j]!);
    }
    if (!streaming) sch.account(routes, n);
    // per-token syncs and misses, shared out over the window's accepted tokens
    const share = 1 / accepted.length;
    sch.recordTokens(accepted.length, {
      syncs: (model.gpu.stats.syncs - syncsBefore) * share,
      misses: (model.pool.stats.snapshot().misses - missesBefore) * share,
    });
    return { accepted, stalled };
  }

  /** Generation to the end, with statistics; see {@linkcode Session.steps}. */
  async generate(prompt: readonly number[], o: StepsOptions): Promise<SessionOutput> {
    const meter = new StatsMeter(this.model);
    const it = this.steps(prompt, o);
    const tokens: number[] = [];
    let end: StepsResult;
    for (;;) {
      const r = await it.next();
      if (r.done) {
        end = r.value;
        break;
      }
      if (tokens.length === 0) meter.firstToken();
      tokens.push(...r.value);
    }
    return {
      tokens,
      promptLogits: end.promptLogits,
      stats: meter.finish({ ...end, completionTokens: tokens.length }),
    };
  }

  /** Frees the session's buffers and sampler (not the model). */
  destroy(): void {
    this.sampler?.destroy();
    this.#tokenLog.destroy();
    this.#savedRing.destroy();
  }
}

/**
 * Measures one generation for its {@link GenerationStats}: made when it
 * starts, told when the first token came, finished with the counts.
 */
export class StatsMeter {
  readonly #t0 = performance.now();
  #firstAt = 0;
  #gpuFirst;
  readonly #experts;
  readonly #stalls: number;

  /** Starts measuring on `model`. */
  constructor(readonly model: Model) {
    this.#gpuFirst = model.gpu.stats.snapshot();
    this.#experts = model.expertStats.snapshot();
    this.#stalls = model.stalls;
  }

  /** The first token came (the end of prefill). */
  firstToken(): void {
    if (this.#firstAt) return;
    this.#firstAt = performance.now();
    this.#gpuFirst = this.model.gpu.stats.snapshot();
  }

  /** The statistics of the generation, now over. */
  finish(o: {
    promptTokens: number;
    cachedTokens: number;
    completionTokens: number;
    /** Tokens generated, for the rates, when more than the completion (a stop string cut it); default completionTokens. */
    generatedTokens?: number;
    finishReason: FinishReason;
  }): GenerationStats {
    const end = performance.now();
    const first = this.#firstAt || end;
    const x = this.model.expertStats.snapshot();
    const b = this.#experts;
    const decode = this.model.gpu.stats.since(this.#gpuFirst);
    const lookups = x.lookups - b.lookups;
    const hits = x.hits - b.hits;
    const prefillMs = first - this.#t0;
    const decodeMs = end - first;
    const n = o.generatedTokens ?? o.completionTokens;
    const decoded = Math.max(1, n - 1);
    return {
      promptTokens: o.promptTokens,
      cachedTokens: o.cachedTokens,
      completionTokens: o.completionTokens,
      prefillMs,
      decodeMs,
      prefillTokensPerSecond: prefillMs > 0
        ? (o.promptTokens - o.cachedTokens) / (prefillMs / 1000)
        : 0,
      decodeTokensPerSecond: n > 1 && decodeMs > 0 ? (n - 1) / (decodeMs / 1000) : 0,
      syncsPerToken: n > 1 ? decode.syncs / decoded : 0,
      submitsPerToken: n > 1 ? decode.submits / decoded : 0,
      stalls: this.model.stalls - this.#stalls,
      expertLookups: lookups,
      expertHits: hits,
      expertMisses: x.misses - b.misses,
      cacheHitRate: lookups > 0 ? hits / lookups : 1,
      expertBytesUploaded: x.bytesUploaded - b.bytesUploaded,
      finishReason: o.finishReason,
    };
  }
}

/**
 * Generation after `prompt` (appended to the model's context) with a
 * greedy session made for the call: the simple call for tests and tools.
 *
 * ```ts ignore
 * const model = await loadModel({ model: "qwen3moe.gguf" });
 * const { tokens, stats } = await generate(model, [4, 5], { maxTokens: 8 });
 * ```
 */
export async function generate(
  model: Model,
  prompt: readonly number[],
  o: StepsOptions,
): Promise<SessionOutput> {
  const session = await Session.create(model, { sampler: o.sampling !== undefined });
  try {
    return await session.generate(prompt, o);
  } finally {
    session.destroy();
  }
}

/** As {@linkcode Session.steps} with a greedy session made for the iteration. */
export async function* generateSteps(
  model: Model,
  prompt: readonly number[],
  o: StepsOptions,
): AsyncGenerator<number[], StepsResult> {
  const session = await Session.create(model, { sampler: o.sampling !== undefined });
  try {
    return yield* session.steps(prompt, o);
  } finally {
    session.destroy();
  }
}
