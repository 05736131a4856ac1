/**
 * `POST /v1/completions`: text in, text out, with log probabilities
 * (`logprobs`: how many alternatives per token, 0…5) when asked.
 *
 * @module
 */

import type { GenerateRequest } from "../../generate/types.ts";
import { badRequest, Fields, readMaxTokens, readPrompt, readSampling } from "../validate.ts";
import { completionLogprobs } from "./logprobs.ts";
import {
  choiceRequests,
  combinedStats,
  errorBody,
  OPENAI_COMMON,
  openaiCommon,
  type OpenAIContext,
  openaiFinish,
  randomId,
  usage,
  usageChunk,
} from "./shared.ts";

/** The fields `/v1/completions` accepts. */
export const COMPLETION_FIELDS = [...OPENAI_COMMON, "prompt", "echo", "best_of", "suffix"] as const;

const DEFAULT_MAX_TOKENS = 16;

/** Serves a completion request (`body` already read as a JSON object). */
export function completions(
  ctx: OpenAIContext,
  req: Request,
  body: Record<string, unknown>,
): Promise<Response> | Response {
  const e = ctx.engine;
  const f = new Fields(body, COMPLETION_FIELDS);
  const { stream, includeUsage, n } = openaiCommon(f);
  f.only("echo", [false], "is not supported");
  f.only("best_of", [1], "is not supported (n choices are; best_of would rank them)");
  f.only("suffix", [""], "is not supported (no fill-in-the-middle)");
  // OpenAI's legacy endpoint: logprobs is the number of alternatives (0…5), null = none
  const logprobs = f.raw("logprobs") === null
    ? undefined
    : f.integer("logprobs", { min: 0, max: 5 });
  let raw = f.raw("prompt");
  // a batch of one prompt is accepted as that prompt
  if (Array.isArray(raw) && raw.length === 1 && typeof raw[0] !== "number") raw = raw[0];
  if (Array.isArray(raw) && raw.length > 1 && typeof raw[0] !== "number") {
    throw badRequest("prompt", "'prompt' holds several prompts; send one per request");
  }
  if (raw === undefined) throw badRequest("prompt", "'prompt' is required");
  const prompt = readPrompt(new Fields({ prompt: raw }, ["prompt"]), "prompt", ctx.limits)!;
  const g: GenerateRequest = {
    maxTokens: readMaxTokens(f, "max_tokens", ctx.limits, DEFAULT_MAX_TOKENS),
    sampling: readSampling(f, ctx.limits),
    stop: f.stop("stop"),
    cachePrompt: f.boolean("cache_prompt"),
  };
  if (logprobs !== undefined) g.logprobs = logprobs;
  g.prompt = ctx.prepare({ prompt });
  const id = randomId("cmpl-");
  const created = Math.floor(Date.now() / 1000);
  const model = e.info.name;
  const offsets = new Array<number>(n).fill(0); // characters streamed per choice (text_offset)
  const chunk = (index: number, text: string, finish: string | null, lp: unknown = null) =>
    JSON.stringify({
      id,
      object: "text_completion",
      created,
      model,
      choices: [{ text, index, logprobs: lp, finish_reason: finish }],
    });
  return ctx.serve(req, choiceRequests(g, n), stream, {
    chunk: (c, i) => {
      const lp = c.logprobs ? completionLogprobs(e.tokenizer, c.logprobs, offsets[i]) : null;
      offsets[i]! += c.text.length;
      return [[chunk(i, c.text, null, lp), undefined]];
    },
    finish: (outs) => [
      ...outs.map((out, i): [string, undefined] => [
        chunk(i, "", openaiFinish(out.stats)),
        undefined,
      ]),
      ...usageChunk(
        includeUsage,
        { id, object: "text_completion", created, model },
        combinedStats(outs),
      ),
      ["[DONE]", undefined],
    ],
    body: (outs) => ({
      id,
      object: "text_completion",
      created,
      model,
      choices: outs.map((out, index) => ({
        text: out.text,
        index,
        logprobs: out.logprobs ? completionLogprobs(e.tokenizer, out.logprobs) : null,
        finish_reason: openaiFinish(out.stats),
      })),
      usage: usage(combinedStats(outs)),
    }),
    fail: (h) => [[JSON.stringify(errorBody(h)), undefined], ["[DONE]", undefined]],
  });
}
