/**
 * What the OpenAI-compatible endpoints share: the server hooks they run
 * through ({@linkcode OpenAIContext}), the fields every endpoint reads the
 * same way, usage and finish reasons, and the error body.
 *
 * @module
 */

import type { Engine } from "../../generate/engine.ts";
import type {
  ChatMessage,
  GenerateRequest,
  GenerationStats,
  StreamChunk,
  TokenLogprob,
} from "../../generate/types.ts";
import { badRequest, Fields, HttpError, type ModelLimits, SAMPLING_FIELDS } from "../validate.ts";

/** Server-sent events: `[data, event name]` pairs. */
export type SseEvents = [string, string | undefined][];

/** A finished generation. */
export interface GenerationOutput {
  /** The text. */
  text: string;
  /** The token ids. */
  tokens: number[];
  /** Their log probabilities (when asked for). */
  logprobs?: TokenLogprob[];
  /** Statistics. */
  stats: GenerationStats;
}

/** How a generation's answer is shaped: as one JSON body, or as SSE events. */
export interface ServeShape {
  /** The events sent before the first chunk. */
  start?: () => SseEvents;
  /** The events of a streamed piece. */
  chunk: (c: StreamChunk) => SseEvents;
  /** The events after the last piece. */
  finish: (out: GenerationOutput) => SseEvents;
  /** The JSON body of a request that did not stream. */
  body: (out: GenerationOutput) => unknown;
  /** The events of an error after the headers went out. */
  fail: (e: HttpError) => SseEvents;
}

/** {@linkcode ServeShape} for several choices (OpenAI's `n`), run one after another. */
export interface ServeShapeN {
  /** The events sent before the first chunk. */
  start?: () => SseEvents;
  /** The events of a streamed piece of choice `index`. */
  chunk: (c: StreamChunk, index: number) => SseEvents;
  /** The events after the last piece of the last choice. */
  finish: (outs: GenerationOutput[]) => SseEvents;
  /** The JSON body of a request that did not stream. */
  body: (outs: GenerationOutput[]) => unknown;
  /** The events of an error after the headers went out. */
  fail: (e: HttpError) => SseEvents;
}

/** The server's hooks an endpoint runs through. */
export interface OpenAIContext {
  /** The engine (the model is loaded). */
  readonly engine: Engine;
  /** Its limits, for validation. */
  readonly limits: ModelLimits;
  /**
   * Tokenises a prompt before queueing (400 for one that cannot be served,
   * naming `messages` when the prompt was rendered from them).
   */
  prepare(
    p: { prompt?: string | number[]; messages?: ChatMessage[] },
    fromMessages?: boolean,
  ): number[];
  /** Queues the generations (one per choice) and answers as `shape` says. */
  serve(
    req: Request,
    gs: readonly GenerateRequest[],
    stream: boolean,
    shape: ServeShapeN,
  ): Promise<Response> | Response;
}

/** Fields every OpenAI endpoint accepts. */
export const OPENAI_COMMON = [
  "model",
  "max_tokens",
  "stop",
  "stream",
  "stream_options",
  "n",
  "logprobs",
  "logit_bias",
  "user",
  "cache_prompt",
  ...SAMPLING_FIELDS,
] as const;

/** Reads the fields every OpenAI endpoint reads the same way. */
export function openaiCommon(f: Fields): { stream: boolean; includeUsage: boolean; n: number } {
  f.string("model", 1000);
  f.string("user", 1000);
  const n = f.integer("n", { min: 1, max: MAX_CHOICES }) ?? 1;
  const bias = f.object("logit_bias");
  if (bias && Object.keys(bias).length > 0) {
    throw badRequest("logit_bias", "'logit_bias' is not supported");
  }
  const stream = f.boolean("stream") ?? false;
  let includeUsage = false;
  const so = f.object("stream_options");
  if (so) {
    if (!stream) throw badRequest("stream_options", "'stream_options' needs 'stream': true");
    includeUsage = new Fields(so, ["include_usage"], "stream_options.").boolean("include_usage") ??
      false;
  }
  return { stream, includeUsage, n };
}

/** The most choices (`n`) a request may ask for: they are generated one after another. */
export const MAX_CHOICES = 8;

/**
 * The requests of `n` choices: the same but for the seed, which goes up by
 * one per choice when given (without one, each draws its own).
 */
export function choiceRequests(g: GenerateRequest, n: number): GenerateRequest[] {
  const seed = g.sampling?.seed;
  return Array.from(
    { length: n },
    (_, i) =>
      i === 0 || seed === undefined
        ? g
        : { ...g, sampling: { ...g.sampling, seed: (seed + i) >>> 0 } },
  );
}

/** OpenAI's error body. */
export function errorBody(e: HttpError): Record<string, unknown> {
  return {
    error: {
      message: e.message,
      type: e.type,
      param: e.field ?? null,
      code: e.status === 413 ? "body_too_large" : e.status === 401 ? "invalid_api_key" : null,
    },
  };
}

/** A random id with a prefix (`chatcmpl-…`). */
export function randomId(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return prefix + Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
}

/**
 * The OpenAI finish reason of a generation; a generation the server cut
 * short (shutdown) has none in OpenAI's set, so it is reported as an error.
 */
export function openaiFinish(s: GenerationStats): "stop" | "length" {
  if (s.finishReason === "cancelled") {
    throw new HttpError(
      503,
      `the server is shutting down; the generation stopped after ${s.completionTokens} tokens`,
      { type: "server_shutting_down" },
    );
  }
  return s.finishReason;
}

/** The statistics of several choices as one: the prompt once, the completions summed. */
export function combinedStats(outs: readonly GenerationOutput[]): GenerationStats {
  const first = outs[0]!.stats;
  return {
    ...first,
    completionTokens: outs.reduce((a, o) => a + o.stats.completionTokens, 0),
    finishReason: outs.some((o) => o.stats.finishReason === "cancelled")
      ? "cancelled"
      : first.finishReason,
  };
}

/** The `usage` object. */
export function usage(s: GenerationStats): Record<string, unknown> {
  return {
    prompt_tokens: s.promptTokens,
    completion_tokens: s.completionTokens,
    total_tokens: s.promptTokens + s.completionTokens,
    // prompt tokens whose KV cache was kept from the previous request (prefix reuse)
    prompt_tokens_details: { cached_tokens: s.cachedTokens },
  };
}

/** The usage event at the end of a stream (`stream_options.include_usage`). */
export function usageChunk(
  include: boolean,
  head: Record<string, unknown>,
  s: GenerationStats,
): SseEvents {
  return include ? [[JSON.stringify({ ...head, choices: [], usage: usage(s) }), undefined]] : [];
}
