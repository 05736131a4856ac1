/**
 * Text in, text out: a model, its tokenizer and chat template, and the GPU
 * sampler, behind the generation layers (mlx-lm style):
 * `generateStep` (token ids as they are accepted) → `streamGenerate` (text
 * pieces that never split a character, stop strings, statistics) →
 * `generate` (one call). One generation runs at a time, or with
 * `parallel` N up to N, batched together (continuous batching,
 * `./batch.ts`); requests wait in order. The KV cache of the last
 * generation (of each sequence slot) is kept: a prompt that starts with the
 * same tokens processes only the rest (prefix reuse).
 *
 * @module
 */

import { type LoadModelOptions, Model } from "../model/model.ts";
import { Tokenizer } from "../tokenizer/tokenizer.ts";
import { renderChat } from "../tokenizer/chat.ts";
import type { GpuSampler } from "../gpu/ops/sample.ts";
import { checkPrompt, RequestError, Session, StatsMeter, type StepsResult } from "./session.ts";
import { readbackSteps } from "./readback.ts";
import { Batcher, batchSteps } from "./batch.ts";
import { Constraint } from "./constrain.ts";
import type { GenerateRequest, GenerationStats, StreamChunk, TokenLogprob } from "./types.ts";

export { RequestError } from "./session.ts";

/** Options of {@linkcode Engine.load}: the model's, plus a display name. */
export interface EngineOptions extends LoadModelOptions {
  /** Name reported by the server (default: `general.name` or the file name). */
  name?: string;
  /**
   * CPU memory for copies of earlier sequences' KV caches, MiB (llama.cpp
   * server's `--cache-ram`; default 1024, 0 = off): a request that shares a
   * longer prefix with one of them than with the last sequence gets it
   * uploaded instead of computed.
   */
  promptCacheMiB?: number;
  /**
   * Generations run at once (llama.cpp server's `--parallel`; default 1):
   * with more than one, each gets a sequence slot of `nCtx` positions and
   * their tokens are computed in shared batches (continuous batching); every
   * token is then read back and chosen on the CPU.
   * `"auto"` sizes it from memory (see `LoadModelOptions.maxSequences`).
   */
  parallel?: number | "auto";
}

/** What one generation's steps report back to the layers above (per request, so several can run). */
export interface StepState {
  /** Its tokens' log probabilities, when asked for. */
  readonly logprobs: TokenLogprob[];
  /** Prompt tokens found in the KV cache, once known. */
  cachedTokens?: number;
}

/** The default of {@linkcode EngineOptions.promptCacheMiB}. */
export const DEFAULT_PROMPT_CACHE_MIB = 1024;

/** What {@linkcode Engine.generate} returns. */
export interface GenerateOutput {
  /** The generated text (stop string excluded). */
  text: string;
  /** The generated token ids. */
  tokens: number[];
  /** Their log probabilities (when the request asked for them). */
  logprobs?: TokenLogprob[];
  /** Statistics. */
  stats: GenerationStats;
}

/** A loaded model ready to turn text into text. */
export class Engine {
  #pending = 0;
  #active = 0;
  readonly #waiters: (() => void)[] = [];

  private constructor(
    /** The model on the GPU. */
    readonly model: Model,
    /** Its tokenizer. */
    readonly tokenizer: Tokenizer,
    /** The generation session: prefill, decode windows, the sampler, the KV cache's tokens. */
    readonly session: Session,
    /** Display name. */
    readonly name: string,
    /** The sequence slots when generations run in parallel. */
    readonly batcher: Batcher | undefined,
  ) {}

  /** Generations that run at once (see {@linkcode EngineOptions.parallel}). */
  get parallel(): number {
    return this.batcher?.slots.length ?? 1;
  }

  /** The GPU sampler (temperature, top-k/p, min-p, penalties, seed). */
  get sampler(): GpuSampler {
    return this.session.sampler!;
  }

  /** Loads a model, its tokenizer and the sampler. */
  static async load(o: EngineOptions): Promise<Engine> {
    const parallel = o.parallel ?? 1;
    if (parallel !== "auto" && !(Number.isInteger(parallel) && parallel >= 1 && parallel <= 64)) {
      throw new RangeError(`parallel must be an integer in 1…64 or "auto", got ${o.parallel}`);
    }
    const model = await Model.load({
      ...o,
      maxSequences: parallel,
      maxBatch: Math.max(o.maxBatch ?? 64, parallel === "auto" ? 4 : parallel),
    });
    try {
      const tokenizer = Tokenizer.fromGguf(model.file.metadata);
      const mib = o.promptCacheMiB ?? DEFAULT_PROMPT_CACHE_MIB;
      if (!(mib >= 0)) throw new RangeError(`promptCacheMiB must be ≥ 0, got ${mib}`);
      // with sequence slots, each keeps its last conversation instead of CPU copies
      const session = await Session.create(model, {
        promptCacheBytes: model.maxSequences > 1 ? 0 : mib * 2 ** 20,
      });
      const name = o.name ?? model.file.metadata.string("general.name", null) ??
        (o.model ?? o.baseWeights ?? "model").split("/").pop()!.replace(/\.gguf$/, "");
      const batcher = model.maxSequences > 1 ? await Batcher.create(model) : undefined;
      return new Engine(model, tokenizer, session, name, batcher);
    } catch (e) {
      model.close();
      throw e;
    }
  }

  /** Architecture, context size and vocabulary, for `/health` and `/v1/models`. */
  get info(): { name: string; architecture: string; contextLength: number; vocabSize: number } {
    return {
      name: this.name,
      architecture: this.model.config.arch,
      contextLength: this.model.nCtx,
      vocabSize: this.model.config.nVocab,
    };
  }

  /** Requests waiting for the model or running. */
  get pending(): number {
    return this.#pending;
  }

  /** The prompt's token ids: rendered chat, text (BOS as the file says) or ids as given. */
  promptTokens(req: Pick<GenerateRequest, "prompt" | "messages">): number[] {
    if (req.messages !== undefined) {
      return this.tokenizer.encode(renderChat(this.tokenizer, req.messages));
    }
    const p = req.prompt;
    if (p === undefined) throw new RequestError("prompt", "a prompt or messages are required");
    if (typeof p === "string") return this.tokenizer.encode(p);
    for (const id of p) {
      if (!Number.isInteger(id) || id < 0 || id >= this.model.config.nVocab) {
        throw new RequestError(
          "prompt",
          `token id ${id} is outside the vocabulary (0…${this.model.config.nVocab - 1})`,
        );
      }
    }
    return [...p];
  }

  /**
   * Runs `fn` when fewer than `parallel` requests run and those before it
   * have started. A request whose `signal` aborts while it waits leaves the
   * queue at once with `left()` (it never runs); those behind it keep their
   * order.
   */
  #exclusive<T>(fn: () => Promise<T>, signal?: AbortSignal, left?: () => T): Promise<T> {
    this.#pending++;
    return new Promise<T>((resolve, reject) => {
      let started = false;
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        this.#pending--;
        signal?.removeEventListener("abort", onAbort);
      };
      const start = () => {
        started = true;
        this.#active++;
        fn().then(resolve, reject).finally(() => {
          finish();
          this.#active--;
          this.#startWaiting();
        });
      };
      const onAbort = () => {
        if (started || !left) return;
        const i = this.#waiters.indexOf(start);
        if (i >= 0) this.#waiters.splice(i, 1);
        finish();
        resolve(left());
      };
      if (signal && left) {
        signal.addEventListener("abort", onAbort);
        if (signal.aborted) return onAbort();
      }
      this.#waiters.push(start);
      this.#startWaiting();
    });
  }

  #startWaiting(): void {
    while (this.#active < this.parallel && this.#waiters.length > 0) this.#waiters.shift()!();
  }

  /**
   * How many of `prompt`'s first tokens already have their keys and values
   * in the KV cache (left there by the previous generation); see
   * {@linkcode Session.cachedPrefix}.
   */
  cachedPrefix(prompt: readonly number[]): number {
    return this.batcher?.cachedPrefix(prompt) ?? this.session.cachedPrefix(prompt);
  }

  /**
   * Throws a {@link RequestError} naming `o.field` when `prompt` (token
   * ids) cannot be served: empty, or longer than the context (the same
   * check a generation makes, for refusing a request before it queues).
   */
  checkPrompt(prompt: readonly number[], o: { field?: string; what?: string } = {}): void {
    checkPrompt(prompt, this.model.nCtx, o);
  }

  /**
   * Token ids as the GPU produces them (a window at a time), for one
   * request. The context holds the prompt alone: with `cachePrompt` (the
   * default) the longest prefix it shares with the previous generation's
   * tokens keeps its KV cache and only the rest is processed. Ends at an
   * end-of-generation token, a stop token, `maxTokens` or cancellation.
   * Must be iterated to the end or returned early (for-await with break
   * does that). With `parallel` > 1 it runs in a free sequence slot (and
   * throws when every slot is held). `st` receives the log probabilities and
   * the cached prompt tokens as they are known.
   */
  async *generateStep(
    req: GenerateRequest,
    st: StepState = { logprobs: [] },
  ): AsyncGenerator<number[], StepsResult, void> {
    const prompt = this.promptTokens(req);
    let started = false;
    const cachedAtStart = req.cachePrompt === false ? 0 : this.cachedPrefix(prompt);
    const cancelled = (): StepsResult => ({
      promptTokens: prompt.length,
      // once started, the session or slot knows (the prompt cache may have given more)
      cachedTokens: started ? st.cachedTokens ?? cachedAtStart : cachedAtStart,
      finishReason: "cancelled",
    });
    const stopTokens = [...this.tokenizer.eogIds, ...(req.stopTokens ?? [])];
    const context = req.cachePrompt === false ? "reset" : "reuse";
    // before a slot is held: a grammar that cannot start throws here
    const constraint = req.grammar && new Constraint(req.grammar, this.tokenizer);
    // without prompt reuse nothing is kept: the least recently used slot, not a conversation's
    const slot = this.batcher?.acquire(context === "reuse" ? prompt : []);
    if (this.batcher && !slot) {
      throw new Error(`all ${this.parallel} sequence slots are running a generation`);
    }
    const readback = {
      maxTokens: req.maxTokens,
      stopTokens,
      sampling: req.sampling ?? {},
      context,
      historyCapacity: this.sampler.historyCapacity,
      constraint,
      logprobs: req.logprobs,
      onLogprob: (lp: TokenLogprob) => st.logprobs.push(lp),
      onContext: (n: number) => st.cachedTokens = n,
      signal: req.signal,
    } as const;
    // a grammar or log probabilities need each token's logits on the CPU
    const it = slot
      ? batchSteps(slot, prompt, readback)
      : req.grammar !== undefined || req.logprobs !== undefined
      ? readbackSteps(this.session, prompt, readback)
      : this.session.steps(prompt, {
        maxTokens: req.maxTokens,
        stopTokens,
        sampling: req.sampling ?? {},
        context,
      });
    try {
      for (;;) {
        if (req.signal?.aborted) return cancelled();
        started = true;
        const r = await it.next();
        if (!slot) st.cachedTokens = this.session.cachedTokens;
        if (r.done) return r.value;
        yield r.value;
      }
    } finally {
      try {
        await it.return(cancelled());
      } finally {
        if (slot) this.batcher!.release(slot);
      }
    }
  }

  /**
   * Text pieces as they are generated, with stop strings applied (text that
   * could be the start of a stop string is held back until it cannot), and
   * the statistics as the generator's return value.
   */
  async *streamGenerate(req: GenerateRequest): AsyncGenerator<StreamChunk, GenerationStats, void> {
    const meter = new StatsMeter(this.model);
    const decoder = this.tokenizer.createStreamDecoder({ skipSpecial: true, keep: req.keepTokens });
    const stops = (req.stop ?? []).filter((s) => s.length > 0);
    // tokenised once here, so every ending (a stop string, cancellation, an error) knows its length
    const prompt = this.promptTokens(req);
    const st: StepState = { logprobs: [] };
    const steps = this.generateStep({ ...req, prompt, messages: undefined }, st);
    let pending = ""; // decoded text not yet emitted (may hold a stop string's start)
    let pendingTokens: number[] = [];
    let pendingStarts: number[] = []; // where each pending token's text starts in `pending`
    let tokens = 0; // tokens generated
    let emittedTokens = 0; // tokens handed out in chunks
    let result: StepsResult | undefined;
    // known before the first step runs (the queue is ours), for the endings that have no result
    const cachedAtStart = req.cachePrompt === false ? 0 : this.cachedPrefix(prompt);
    let stoppedByString = false;
    /** Takes the first `n` characters of `pending` with the tokens whose text starts there. */
    const take = (n: number): StreamChunk => {
      let k = 0;
      while (k < pendingTokens.length && pendingStarts[k]! < n) k++;
      const chunk: StreamChunk = { text: pending.slice(0, n), tokens: pendingTokens.slice(0, k) };
      if (req.logprobs !== undefined) {
        chunk.logprobs = st.logprobs.slice(emittedTokens, emittedTokens + k);
      }
      pending = pending.slice(n);
      pendingTokens = pendingTokens.slice(k);
      pendingStarts = pendingStarts.slice(k).map((p) => p - n);
      emittedTokens += chunk.tokens.length;
      return chunk;
    };
    let failed = false;
    try {
      for (;;) {
        const r = await steps.next();
        if (r.done) {
          result = r.value;
          break;
        }
        if (tokens === 0) meter.firstToken();
        tokens += r.value.length;
        for (const id of r.value) {
          pendingStarts.push(pending.length);
          pending += this.tokenizer.eogIds.has(id) ? "" : decoder.push(id);
          pendingTokens.push(id);
        }
        const hit = firstStop(pending, stops);
        if (hit >= 0) {
          const chunk = take(hit);
          if (chunk.text || chunk.tokens.length) yield chunk;
          stoppedByString = true;
          break;
        }
        const keep = heldBack(pending, stops);
        if (pending.length - keep > 0) yield take(pending.length - keep);
      }
    } catch (e) {
      failed = true;
      throw withUsage(e, { promptTokens: prompt.length, completionTokens: tokens });
    } finally {
      if (!result) {
        // ends the model's generation (a no-op when it is what failed)
        await steps.return({
          promptTokens: prompt.length,
          cachedTokens: tokens > 0 ? st.cachedTokens ?? cachedAtStart : cachedAtStart,
          finishReason: "cancelled",
        });
        // ended here (a stop string, or the caller stopped reading): the prompt was processed
        if (!failed) {
          result = {
            promptTokens: prompt.length,
            cachedTokens: tokens > 0 ? st.cachedTokens ?? cachedAtStart : cachedAtStart,
            finishReason: req.signal?.aborted ? "cancelled" : "stop",
          };
        }
      }
    }
    if (!stoppedByString) {
      pending += decoder.flush();
      // tokens without text (an end-of-generation token) still belong to the output
      if (pending || pendingTokens.length) yield take(pending.length + 1);
    }
    return meter.finish({
      promptTokens: result?.promptTokens ?? prompt.length,
      cachedTokens: result?.cachedTokens ?? cachedAtStart,
      completionTokens: stoppedByString ? emittedTokens : tokens,
      generatedTokens: tokens,
      finishReason: stoppedByString ? "stop" : result?.finishReason ?? "cancelled",
    });
  }

  /**
   * Streams a request when the requests before it are done; `onChunk` sees
   * each piece. Resolves with the whole text and the statistics.
   */
  generate(req: GenerateRequest, onChunk?: (c: StreamChunk) => void): Promise<GenerateOutput> {
    const left = (): GenerateOutput => ({
      text: "",
      tokens: [],
      stats: cancelledStats(this.#promptLength(req)),
    });
    return this.#exclusive(
      async () => {
        const it = this.streamGenerate(req);
        let text = "";
        const tokens: number[] = [];
        const logprobs: TokenLogprob[] | undefined = req.logprobs === undefined ? undefined : [];
        let over = false;
        try {
          for (;;) {
            const r = await it.next();
            over = r.done === true;
            if (r.done) return { text, tokens, ...(logprobs ? { logprobs } : {}), stats: r.value };
            text += r.value.text;
            tokens.push(...r.value.tokens);
            logprobs?.push(...r.value.logprobs ?? []);
            onChunk?.(r.value);
          }
        } finally {
          // `onChunk` threw: end the generation (its sequence slot, its place in the batch)
          if (!over) await it.return(cancelledStats(0));
        }
      },
      req.signal,
      left,
    );
  }

  /** The prompt's length, or 0 when it cannot be tokenised (then nothing was processed). */
  #promptLength(req: GenerateRequest): number {
    try {
      return this.promptTokens(req).length;
    } catch {
      return 0;
    }
  }

  /** Frees the model. */
  close(): void {
    this.batcher?.destroy();
    this.session.destroy();
    this.model.close();
  }
}

/** Token counts of a generation that failed part way. */
export interface PartialUsage {
  /** Prompt tokens (processed or not: the failure may have come during prefill). */
  readonly promptTokens: number;
  /** Tokens generated before the failure. */
  readonly completionTokens: number;
}

const usageOfFailure = new WeakMap<object, PartialUsage>();

function withUsage(e: unknown, u: PartialUsage): unknown {
  if (typeof e === "object" && e !== null && !usageOfFailure.has(e)) usageOfFailure.set(e, u);
  return e;
}

/**
 * The token counts of a generation that ended with `error` (thrown by
 * {@linkcode Engine.streamGenerate} or {@linkcode Engine.generate}), or
 * undefined for an error from elsewhere.
 */
export function failureUsage(error: unknown): PartialUsage | undefined {
  return typeof error === "object" && error !== null ? usageOfFailure.get(error) : undefined;
}

/** The statistics of a request that left the queue before it ran. */
function cancelledStats(promptTokens: number): GenerationStats {
  return {
    promptTokens,
    cachedTokens: 0,
    completionTokens: 0,
    prefillMs: 0,
    decodeMs: 0,
    prefillTokensPerSecond: 0,
    decodeTokensPerSecond: 0,
    syncsPerToken: 0,
    submitsPerToken: 0,
    stalls: 0,
    expertLookups: 0,
    expertHits: 0,
    expertMisses: 0,
    cacheHitRate: 1,
    expertBytesUploaded: 0,
    finishReason: "cancelled",
  };
}

/** Index of the earliest stop string in `text`, or −1. */
function firstStop(text: string, stops: readonly string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of a stop string. */
function heldBack(text: string, stops: readonly string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}
