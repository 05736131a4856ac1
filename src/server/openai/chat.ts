/**
 * `POST /v1/chat/completions`: the messages rendered with the model's chat
 * template (with the tools when given), the output split into
 * `reasoning_content`, `content` and `tool_calls` by the model family's
 * format (`chat_format.ts`), constrained decoding for forced tool calls and
 * `response_format`, and log probabilities; as one JSON body or as SSE
 * deltas.
 *
 * @module
 */

import type { GenerateRequest } from "../../generate/types.ts";
import { renderChat } from "../../tokenizer/chat.ts";
import { ChatTemplateError } from "../../tokenizer/chat.ts";
import { badRequest, Fields, readMaxTokens, readMessages, readSampling } from "../validate.ts";
import { type ChatDelta, chatFormat, ChatStreamParser, markerTokens } from "./chat_format.ts";
import { chatLogprobs } from "./logprobs.ts";
import {
  choiceRequests,
  combinedStats,
  errorBody,
  OPENAI_COMMON,
  openaiCommon,
  type OpenAIContext,
  openaiFinish,
  randomId,
  type SseEvents,
  usage,
  usageChunk,
} from "./shared.ts";
import { readToolRequest, requestGrammar, templateTools, toolCallsJson } from "./tools.ts";

/** The fields `/v1/chat/completions` accepts. */
export const CHAT_FIELDS = [
  ...OPENAI_COMMON,
  "messages",
  "max_completion_tokens",
  "top_logprobs",
  "response_format",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
] as const;

const DEFAULT_MAX_TOKENS = 256;

/** Serves a chat completion request (`body` already read as a JSON object). */
export function chatCompletions(
  ctx: OpenAIContext,
  req: Request,
  body: Record<string, unknown>,
): Promise<Response> | Response {
  const e = ctx.engine;
  const tok = e.tokenizer;
  const f = new Fields(body, CHAT_FIELDS);
  const { stream, includeUsage, n } = openaiCommon(f);
  const wantLogprobs = f.boolean("logprobs") ?? false;
  const top = f.integer("top_logprobs", { min: 0, max: 20 });
  if (top !== undefined && !wantLogprobs) {
    throw badRequest("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  }
  const tools = readToolRequest(f);
  const messages = readMessages(f, "messages");
  if (!messages) throw badRequest("messages", "'messages' is required");
  if (f.has("max_tokens") && f.has("max_completion_tokens")) {
    throw badRequest(
      "max_completion_tokens",
      "send 'max_tokens' or 'max_completion_tokens', not both",
    );
  }
  const maxKey = f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const g: GenerateRequest = {
    maxTokens: readMaxTokens(f, maxKey, ctx.limits, DEFAULT_MAX_TOKENS),
    sampling: readSampling(f, ctx.limits),
    stop: f.stop("stop"),
    cachePrompt: f.boolean("cache_prompt"),
  };
  if (wantLogprobs) g.logprobs = top ?? 0;
  const format = chatFormat(tok.chatTemplate);
  const useTools = tools.tools.length > 0 && tools.choice !== "none";
  let rendered: string;
  try {
    const forTemplate = templateTools(tools);
    rendered = renderChat(tok, messages, forTemplate ? { tools: forTemplate } : {});
  } catch (err) {
    if (err instanceof ChatTemplateError) throw badRequest("messages", err.message);
    throw err;
  }
  g.prompt = ctx.prepare({ prompt: rendered }, true);
  const inThinking = format.thinking &&
    rendered.lastIndexOf("<think>") > rendered.lastIndexOf("</think>");
  g.grammar = requestGrammar(tools, format, inThinking);
  // the output is parsed when the format has parts to tell apart: reasoning, tool calls, channels
  const parse = format.thinking || useTools;
  if (parse) g.keepTokens = markerTokens(tok, format);

  const id = randomId("chatcmpl-");
  const created = Math.floor(Date.now() / 1000);
  const model = e.info.name;
  const head = { id, object: "chat.completion.chunk", created, model, system_fingerprint: null };
  const chunk = (
    index: number,
    delta: Record<string, unknown>,
    finish: string | null,
    logprobs: unknown = null,
  ) => JSON.stringify({ ...head, choices: [{ index, delta, logprobs, finish_reason: finish }] });
  const parsers = Array.from(
    { length: n },
    () => new ChatStreamParser(format, inThinking, useTools),
  );
  const deltaEvents = (index: number, deltas: ChatDelta[], logprobs: unknown): SseEvents => {
    const out: SseEvents = deltas.map((d, i) => {
      const lp = i === 0 ? logprobs : null;
      if (d.reasoning !== undefined) {
        return [chunk(index, { reasoning_content: d.reasoning }, null, lp), undefined];
      }
      if (d.content !== undefined) {
        return [chunk(index, { content: d.content }, null, lp), undefined];
      }
      // a call's first delta names it (with `arguments: ""`); the next ones carry its arguments
      const c = d.toolCall!;
      const call = c.name === undefined
        ? { index: c.index, function: { arguments: c.arguments } }
        : {
          index: c.index,
          id: c.id ?? randomId("call_"),
          type: "function",
          function: { name: c.name, arguments: c.arguments },
        };
      return [chunk(index, { tool_calls: [call] }, null, lp), undefined];
    });
    if (out.length === 0 && logprobs !== null) {
      out.push([chunk(index, {}, null, logprobs), undefined]);
    }
    return out;
  };
  const finishReason = (calls: number, stats: Parameters<typeof openaiFinish>[0]) => {
    const r = openaiFinish(stats);
    return calls > 0 && r === "stop" ? "tool_calls" : r;
  };
  return ctx.serve(req, choiceRequests(g, n), stream, {
    start: () =>
      parsers.map((_, i) => [chunk(i, { role: "assistant", content: "" }, null), undefined]),
    chunk: (c, i) => {
      const lp = c.logprobs ? { content: chatLogprobs(tok, c.logprobs), refusal: null } : null;
      if (!parse) {
        return c.text || lp ? [[chunk(i, { content: c.text }, null, lp), undefined]] : [];
      }
      return deltaEvents(i, parsers[i]!.push(c.text), lp);
    },
    finish: (outs) => [
      ...outs.flatMap((out, i): SseEvents => [
        ...(parse ? deltaEvents(i, parsers[i]!.finish(), null) : []),
        [chunk(i, {}, finishReason(parsers[i]!.message.toolCalls.length, out.stats)), undefined],
      ]),
      ...usageChunk(includeUsage, head, combinedStats(outs)),
      ["[DONE]", undefined],
    ],
    body: (outs) => ({
      id,
      object: "chat.completion",
      created,
      model,
      system_fingerprint: null,
      choices: outs.map((out, index) => {
        const m = parse
          ? format.parse(out.text, false, inThinking, useTools)
          : { reasoning: "", content: out.text, toolCalls: [] };
        const message: Record<string, unknown> = {
          role: "assistant",
          content: m.content === "" && m.toolCalls.length > 0 ? null : m.content,
          refusal: null,
        };
        if (m.reasoning) message.reasoning_content = m.reasoning;
        if (m.toolCalls.length > 0) message.tool_calls = toolCallsJson(m.toolCalls, []);
        return {
          index,
          message,
          logprobs: g.logprobs === undefined
            ? null
            : { content: chatLogprobs(tok, out.logprobs ?? []), refusal: null },
          finish_reason: finishReason(m.toolCalls.length, out.stats),
        };
      }),
      usage: usage(combinedStats(outs)),
    }),
    fail: (h) => [[JSON.stringify(errorBody(h)), undefined], ["[DONE]", undefined]],
  });
}
