/**
 * Log probabilities in OpenAI's shapes: chat's `logprobs.content` entries
 * (`{token, logprob, bytes, top_logprobs}`) and the completions endpoint's
 * columns (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
 *
 * @module
 */

import type { Tokenizer } from "../../tokenizer/tokenizer.ts";
import type { TokenLogprob } from "../../generate/types.ts";

const text = new TextDecoder();

/** One token's text (a piece that is not whole UTF-8 characters shows U+FFFD) and bytes. */
function piece(tok: Tokenizer, id: number): { token: string; bytes: number[] } {
  const b = tok.tokenToBytes(id);
  return { token: text.decode(b), bytes: [...b] };
}

/** Chat's `logprobs.content` entries of some tokens. */
export function chatLogprobs(tok: Tokenizer, lps: readonly TokenLogprob[]): unknown[] {
  return lps.map((lp) => ({
    ...piece(tok, lp.token),
    logprob: lp.logprob,
    top_logprobs: lp.top.map((t) => ({ ...piece(tok, t.token), logprob: t.logprob })),
  }));
}

/**
 * The completions endpoint's `logprobs` object of some tokens; `offset` is
 * where the first token's text starts in the whole completion.
 */
export function completionLogprobs(
  tok: Tokenizer,
  lps: readonly TokenLogprob[],
  offset = 0,
): {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
} {
  const tokens: string[] = [];
  const textOffset: number[] = [];
  let at = offset;
  for (const lp of lps) {
    const t = piece(tok, lp.token).token;
    tokens.push(t);
    textOffset.push(at);
    at += t.length;
  }
  return {
    tokens,
    token_logprobs: lps.map((lp) => lp.logprob),
    top_logprobs: lps.map((lp) =>
      Object.fromEntries(lp.top.map((t) => [piece(tok, t.token).token, t.logprob]))
    ),
    text_offset: textOffset,
  };
}
