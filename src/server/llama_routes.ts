/**
 * llama.cpp server's helper endpoints, with its request and response
 * shapes: `POST /tokenize`, `POST /detokenize`, `POST /apply-template`,
 * `GET /props`. Each takes the engine and the request's JSON body and
 * returns the response's JSON body; errors are `HttpError`s naming the
 * field (a chat template's refusal is a `ChatTemplateError`, a 400 on
 * `messages`).
 *
 * @module
 */

import type { Engine } from "../generate/engine.ts";
import { DEFAULT_SAMPLING } from "../generate/sampler_cpu.ts";
import { renderChat } from "../tokenizer/chat.ts";
import { badRequest, Fields, type ModelLimits, readMessages, readTokenIds } from "./validate.ts";
import { readToolRequest, templateTools } from "./openai/tools.ts";

const TOKENIZE_FIELDS = ["content", "add_special", "parse_special", "with_pieces"] as const;

/** `POST /tokenize`: `content` → `tokens` (ids, or `{id, piece}` with `with_pieces`). */
export function tokenize(e: Engine, body: Record<string, unknown>): unknown {
  const f = new Fields(body, TOKENIZE_FIELDS);
  const content = f.string("content");
  if (content === undefined) throw badRequest("content", "'content' (the text) is required");
  // llama.cpp's defaults: no BOS, control-token text parsed
  const ids = e.tokenizer.encode(content, {
    addSpecial: f.boolean("add_special") ?? false,
    parseSpecial: f.boolean("parse_special") ?? true,
  });
  if (!(f.boolean("with_pieces") ?? false)) return { tokens: ids };
  const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  return {
    tokens: ids.map((id) => {
      const bytes = e.tokenizer.tokenToBytes(id);
      let piece: string | number[];
      try {
        piece = utf8.decode(bytes);
      } catch {
        piece = [...bytes]; // not whole UTF-8 characters: the bytes, as llama.cpp does
      }
      return { id, piece };
    }),
  };
}

/** `POST /detokenize`: `tokens` → `content` (control tokens as their text). */
export function detokenize(e: Engine, body: Record<string, unknown>, limits: ModelLimits): unknown {
  const f = new Fields(body, ["tokens"]);
  const ids = readTokenIds(f, "tokens", limits);
  if (ids === undefined) {
    throw badRequest("tokens", "'tokens' (an array of token ids) is required");
  }
  return { content: e.tokenizer.decode(ids) };
}

/**
 * `POST /apply-template`: `messages` (and `tools`, `tool_choice`, as a chat
 * request sends them) → `prompt`, the text the model would be given.
 */
export function applyTemplate(e: Engine, body: Record<string, unknown>): unknown {
  const f = new Fields(body, ["messages", "tools", "tool_choice", "parallel_tool_calls"]);
  const messages = readMessages(f, "messages");
  if (!messages) throw badRequest("messages", "'messages' is required");
  const tools = templateTools(readToolRequest(f));
  return { prompt: renderChat(e.tokenizer, messages, tools ? { tools } : {}) };
}

/** `GET /props`: default generation settings, slots, model, template. */
export function props(e: Engine, modelPath: string | undefined): unknown {
  const d = DEFAULT_SAMPLING;
  const tok = (id: number | null) => id === null ? null : e.tokenizer.decode([id]);
  return {
    default_generation_settings: {
      n_ctx: e.info.contextLength,
      params: {
        n_predict: -1,
        temperature: d.temperature,
        top_k: d.topK,
        top_p: d.topP,
        min_p: d.minP,
        repeat_last_n: d.penaltyLastN,
        repeat_penalty: d.repeatPenalty,
        presence_penalty: d.presencePenalty,
        frequency_penalty: d.frequencyPenalty,
        seed: 0xffffffff, // llama.cpp's "random"
        stop: [],
        cache_prompt: true,
      },
    },
    total_slots: e.parallel,
    model_alias: e.info.name,
    model_path: modelPath ?? null,
    architecture: e.info.architecture,
    modalities: { vision: false, audio: false },
    chat_template: e.tokenizer.chatTemplate ?? "",
    bos_token: tok(e.tokenizer.bos),
    eos_token: tok(e.tokenizer.eos),
    endpoint_metrics: true,
    endpoint_props: false,
    build_info: "od-moe",
    is_sleeping: false,
  };
}
