import type { ChatMessage } from "../tokenizer/chat.ts";
import type { GrammarNode } from "./constrain.ts";

/**
 * The contract between the generation loop and its users (the CLI, the
 * server, the JSR API): what a request asks for, what a stream yields, and
 * the statistics a generation reports.
 *
 * @module
 */

/** How the next token is chosen. `temperature: 0` (or `greedy`) = argmax. */
export interface SamplingParams {
  /** Softmax temperature; 0 = greedy. Default 0.8. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). Default 40. */
  topK?: number;
  /** Nucleus sampling: smallest set with cumulative probability ≥ p (1 = off). Default 0.95. */
  topP?: number;
  /** Drop tokens whose probability is below minP × the top one's (0 = off). Default 0.05. */
  minP?: number;
  /** Repetition penalty over the last `penaltyLastN` tokens (1 = off). Default 1. */
  repeatPenalty?: number;
  /** Presence penalty (0 = off). */
  presencePenalty?: number;
  /** Frequency penalty (0 = off). */
  frequencyPenalty?: number;
  /** Tokens the penalties look back over. Default 64. */
  penaltyLastN?: number;
  /** Random seed: the same seed and parameters give the same text. Default random. */
  seed?: number;
}

/** One chat message (`role`, `content`, and whatever else the template reads). */
export type { ChatMessage } from "../tokenizer/chat.ts";

/** What to generate. */
export interface GenerateRequest {
  /** Raw text (tokenised with the model's tokenizer) or token ids. */
  prompt?: string | number[];
  /** Chat messages, rendered with the model's chat template (instead of `prompt`). */
  messages?: ChatMessage[];
  /** Tokens to generate at most. */
  maxTokens: number;
  /** Sampling. */
  sampling?: SamplingParams;
  /** Strings that end generation (not included in the text). */
  stop?: string[];
  /** Extra token ids that end generation (end-of-generation tokens always do). */
  stopTokens?: number[];
  /** Cancels the generation: the stream ends with finish reason "cancelled". */
  signal?: AbortSignal;
  /**
   * Reuse the KV cache of the previous generation for the longest prefix
   * this prompt shares with it (llama.cpp server's `cache_prompt`). Default
   * true; the tokens are the same either way.
   */
  cachePrompt?: boolean;
  /**
   * A grammar the output must follow (constrained decoding,
   * `./constrain.ts`): JSON of a schema, a tool call. Such requests take
   * the slower readback path (`./readback.ts`).
   */
  grammar?: GrammarNode;
  /**
   * Log probabilities of each generated token and of this many most likely
   * alternatives (0…20; 0 = the chosen token's only); omitted = none. Such
   * requests take the slower readback path.
   */
  logprobs?: number;
  /**
   * Control tokens whose text stays in the output (a chat format's
   * markers, e.g. `<|channel|>`, that its parser reads); others are dropped.
   */
  keepTokens?: ReadonlySet<number>;
}

/** A generated token's log probability, with the most likely alternatives. */
export interface TokenLogprob {
  /** Token id. */
  token: number;
  /** Its natural-log probability under the model (log-softmax of the raw logits). */
  logprob: number;
  /** The most likely tokens, most likely first. */
  top: { token: number; logprob: number }[];
}

/** Why a generation ended. */
export type FinishReason = "stop" | "length" | "cancelled";

/** A piece of streamed output. */
export interface StreamChunk {
  /** New text (whole UTF-8 characters only). */
  text: string;
  /** The token ids this text came from. */
  tokens: number[];
  /** Their log probabilities (when the request asked for them). */
  logprobs?: TokenLogprob[];
}

/** Statistics of one generation. */
export interface GenerationStats {
  /** Prompt tokens. */
  promptTokens: number;
  /** Prompt tokens whose KV cache was kept from the previous generation (not processed again). */
  cachedTokens: number;
  /** Generated tokens. */
  completionTokens: number;
  /** Prompt processing time, ms. */
  prefillMs: number;
  /** Generation time after the first token, ms. */
  decodeMs: number;
  /** Prompt tokens processed (not cached) per second. */
  prefillTokensPerSecond: number;
  /** Generated tokens per second (after the first). */
  decodeTokensPerSecond: number;
  /** GPU→CPU readbacks per generated token after the first (decode; 0 with one token). */
  syncsPerToken: number;
  /** Submits per generated token after the first (decode; 0 with one token). */
  submitsPerToken: number;
  /** Batches that stalled on a missing expert and were repaired. */
  stalls: number;
  /** Expert lookups (token × layer × chosen expert). */
  expertLookups: number;
  /** Lookups that found the expert resident. */
  expertHits: number;
  /** Lookups that had to load the expert. */
  expertMisses: number;
  /** hits / lookups (1 when every expert is resident). */
  cacheHitRate: number;
  /** Bytes of experts uploaded. */
  expertBytesUploaded: number;
  /** Why it ended. */
  finishReason: FinishReason;
}
