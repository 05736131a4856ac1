/**
 * The slow generation path: one token at a time, its logits read back and
 * the token chosen on the CPU ({@linkcode sampleWith}, the GPU sampler's
 * reference: the same token for the same logits, seed and position). Used
 * when a request needs what the GPU sampler cannot give without a readback
 * per token anyway: a grammar mask (constrained decoding) or log
 * probabilities.
 *
 * Cost per token: one forward pass submitted alone (no window of tokens in
 * flight), a readback of the logits (4 × nVocab bytes, ~0.6 MB at 152k
 * tokens) and the CPU sampler (~10 ms at 152k with top-k 40). A grammar
 * first checks the token sampled without a mask (a few byte steps); only
 * when it is refused is the whole vocabulary masked (a walk over the
 * tokens in byte order) and the token drawn again from the masked logits,
 * as llama.cpp does, which for greedy decoding is exactly the argmax of the
 * masked logits.
 *
 * @module
 */

import { deriveSampler, type SamplerConstants, type SamplerParams } from "../gpu/ops/sample.ts";
import { resolveSampling, sampleWith } from "./sampler_cpu.ts";
import type { Constraint } from "./constrain.ts";
import { checkRequest, type ContextMode, type Session, type StepsResult } from "./session.ts";
import type { FinishReason, SamplingParams, TokenLogprob } from "./types.ts";

/**
 * What the readback path drives: one sequence's context on a model — the
 * session's (the model's whole cache, {@linkcode sessionContext}) or a slot
 * of a batched model (`./batch.ts`).
 */
export interface TokenContext {
  /** Context length (positions). */
  readonly nCtx: number;
  /** Vocabulary size (logits per token). */
  readonly nVocab: number;
  /** Tokens in the context. */
  readonly nPast: number;
  /** Throws a RangeError naming the first id outside the vocabulary. */
  checkIds(tokens: readonly number[]): void;
  /** Readies the context for `prompt`: keeps the longest known prefix ("reuse") or none; returns it. */
  begin(prompt: readonly number[], mode: "reuse" | "reset"): Promise<number>;
  /** Appends `tokens`; the logits after the last (f32 [nVocab]). */
  forward(tokens: readonly number[]): Promise<Float32Array>;
  /** The generation is over: the context holds `tokens` (its first nPast), or anything (`undefined`: forget it). */
  end(tokens: readonly number[] | undefined): void;
}

/** The session's context (the model's single sequence) as a {@link TokenContext}. */
export function sessionContext(session: Session): TokenContext {
  const model = session.model;
  return {
    get nCtx() {
      return model.nCtx;
    },
    nVocab: model.config.nVocab,
    get nPast() {
      return model.nPast;
    },
    checkIds: (tokens) => model.checkIds(tokens),
    begin: (prompt, mode) => session.beginContext(prompt, mode),
    forward: (tokens) => model.forward(tokens),
    end(tokens) {
      if (tokens === undefined) {
        // the cache may hold anything beyond the kept prefix: forget it all
        model.reset();
        session.adopt([]);
      } else {
        session.adopt(tokens);
      }
    },
  };
}

/** Options of {@linkcode readbackSteps}. */
export interface ReadbackOptions {
  /** Tokens to generate at most (cut to the room left in the context). */
  maxTokens: number;
  /** Tokens that end generation (included in the output). */
  stopTokens: Iterable<number>;
  /** Sampling parameters. */
  sampling: SamplingParams;
  /** How the prompt meets the context: "reuse" keeps the prefix shared with the session's last tokens. */
  context: Exclude<ContextMode, "append">;
  /** Penalty history capacity (the GPU sampler's), bounding `penaltyLastN = −1`. */
  historyCapacity: number;
  /** The grammar the output must follow. */
  constraint?: Constraint;
  /** Log probabilities: how many alternatives per token (0 = the chosen token's only); omitted = none. */
  logprobs?: number;
  /** Receives each token's log probabilities, in order. */
  onLogprob?: (lp: TokenLogprob) => void;
  /** Told how many prompt tokens the context already held, before any is run. */
  onContext?: (cachedTokens: number) => void;
  /**
   * The request's cancellation: in a batched slot (`./batch.ts`) the prompt
   * chunks not yet run when it aborts are dropped and the generation ends
   * "cancelled" before its first token.
   */
  signal?: AbortSignal;
}

/**
 * Generation after `prompt` in a context (a session's model, or a slot of a
 * batched one), a token at a time, as {@linkcode Session.steps} does it (the
 * same checks, prefix reuse and context left behind: every generated token
 * but the last fed in).
 */
export async function* readbackSteps(
  target: Session | TokenContext,
  prompt: readonly number[],
  o: ReadbackOptions,
): AsyncGenerator<number[], StepsResult, void> {
  const model = "model" in target ? sessionContext(target) : target;
  checkRequest(prompt, model.nCtx, model, o.maxTokens);
  // the last generated token is never fed back, so it needs no cache room
  const maxTokens = Math.min(o.maxTokens, model.nCtx - prompt.length + 1);
  const stop = new Set(o.stopTokens);
  const chooser = new TokenChooser(o, model.nVocab, prompt);
  const generated: number[] = [];
  let finishReason: FinishReason = "length";
  let failed = false;
  const cached = await model.begin(prompt, o.context);
  o.onContext?.(cached);
  try {
    let logits = await model.forward(prompt.slice(cached));
    for (;;) {
      // the RNG counter: the logits' token's position, as on the GPU
      const id = chooser.choose(logits, model.nPast - 1, maxTokens - generated.length);
      generated.push(id);
      yield [id];
      if (stop.has(id)) {
        finishReason = "stop";
        break;
      }
      if (generated.length >= maxTokens) break;
      logits = await model.forward([id]);
    }
    return { promptTokens: prompt.length, cachedTokens: cached, finishReason };
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    model.end(failed ? undefined : [...prompt, ...generated]);
  }
}

/**
 * A request's token choice on the CPU (the GPU sampler's reference): its
 * sampling parameters, penalty history (the prompt and what was chosen),
 * grammar and log probabilities.
 */
export class TokenChooser {
  /** The resolved sampler constants (seed drawn once when the request had none). */
  readonly constants: SamplerConstants;
  /** The resolved parameters. */
  readonly params: SamplerParams;
  /** The prompt and every token chosen (or accepted) since. */
  readonly history: number[];

  constructor(
    readonly o: Pick<
      ReadbackOptions,
      "sampling" | "historyCapacity" | "constraint" | "logprobs" | "onLogprob"
    >,
    nVocab: number,
    prompt: readonly number[],
  ) {
    this.params = resolveSampling(o.sampling);
    this.constants = deriveSampler(this.params, nVocab, o.historyCapacity);
    this.history = [...prompt];
  }

  /** Whether every choice can be made by the GPU sampler (no grammar, no log probabilities). */
  get gpuSamplable(): boolean {
    return this.o.constraint === undefined && this.o.logprobs === undefined;
  }

  /**
   * The token after `logits` (of the token at position `pos`), with `room`
   * tokens left to generate (a grammar must finish within it).
   */
  choose(logits: Float32Array, pos: number, room: number): number {
    const c = this.constants;
    const window = c.penaltyLastN > 0 ? this.history.slice(-c.penaltyLastN) : [];
    let id = sampleWith(logits, c, window, pos).token;
    const g = this.o.constraint;
    if (g && !g.allows(id, room)) {
      const mask = g.mask(room);
      const masked = new Float32Array(logits);
      for (let i = 0; i < masked.length; i++) if (mask[i] === 0) masked[i] = -Infinity;
      id = sampleWith(masked, c, window, pos).token;
      // every allowed logit −∞ (or NaN): the first allowed token
      if (mask[id] === 0) id = mask.indexOf(1);
    }
    g?.accept(id);
    if (this.o.logprobs !== undefined) this.o.onLogprob?.(logprobsOf(logits, id, this.o.logprobs));
    this.history.push(id);
    return id;
  }

  /** Records tokens the GPU sampler chose (only when {@linkcode gpuSamplable}). */
  accept(ids: readonly number[]): void {
    this.history.push(...ids);
  }
}

/**
 * The log probability of `id` and of the `top` most likely tokens under the
 * model's distribution (log-softmax of the raw logits: before penalties,
 * temperature, truncation and any grammar).
 */
export function logprobsOf(logits: Float32Array, id: number, top: number): TokenLogprob {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  const best: number[] = [];
  if (top > 0) {
    // a sorted list of the best `top` so far (top ≤ 20)
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i]!;
      if (best.length === top && !(v > logits[best[top - 1]!]!)) continue;
      let j = best.length < top ? best.length : top - 1;
      while (j > 0 && logits[best[j - 1]!]! < v) {
        if (j < top) best[j] = best[j - 1]!;
        j--;
      }
      best[j] = i;
    }
  }
  return {
    token: id,
    logprob: logits[id]! - logZ,
    top: best.map((t) => ({ token: t, logprob: logits[t]! - logZ })),
  };
}
