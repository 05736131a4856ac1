/**
 * The chat request's tool and output-shape fields: `tools`, `tool_choice`,
 * `parallel_tool_calls` and `response_format`, read and checked, and turned
 * into what the generation needs: the tools for the chat template, and the
 * grammar that forces a tool call (`tool_choice` "required" or a named
 * function) or a JSON answer (`response_format` json_object / json_schema).
 *
 * @module
 */

import {
  alt,
  type GrammarNode,
  jsonSchema,
  lit,
  SchemaError,
  seq,
  until,
} from "../../generate/constrain.ts";
import { badRequest, describe, Fields } from "../validate.ts";
import type { ChatFormat, ParsedToolCall, ToolFunction } from "./chat_format.ts";
import { randomId } from "./shared.ts";

/** A tool as OpenAI sends it. */
export interface Tool {
  /** Always "function". */
  type: "function";
  /** The function. */
  function: ToolFunction & { description?: string; strict?: boolean };
}

/** `tool_choice`. */
export type ToolChoice = "none" | "auto" | "required" | { name: string };

/** `response_format`. */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; name: string; schema: unknown; strict: boolean };

/** The chat request's tool fields. */
export interface ToolRequest {
  /** The tools (empty: none). */
  tools: Tool[];
  /** The choice (default "auto" with tools, "none" without). */
  choice: ToolChoice;
  /** `parallel_tool_calls` (default true). */
  parallel: boolean;
  /** `response_format` (default text). */
  responseFormat: ResponseFormat;
}

const NAME = /^[a-zA-Z0-9_.-]{1,64}$/;

/** Reads `tools`, `tool_choice`, `parallel_tool_calls` and `response_format`. */
export function readToolRequest(f: Fields): ToolRequest {
  const raw = f.raw("tools");
  const tools: Tool[] = [];
  if (raw !== undefined && raw !== null) {
    if (!Array.isArray(raw)) {
      throw badRequest("tools", `'tools' must be an array, got ${describe(raw)}`);
    }
    if (raw.length > 128) {
      throw badRequest("tools", `'tools' holds ${raw.length} tools; at most 128`);
    }
    raw.forEach((t, i) => {
      const at = `tools[${i}]`;
      if (typeof t !== "object" || t === null || Array.isArray(t)) {
        throw badRequest(at, `'${at}' must be an object, got ${describe(t)}`);
      }
      const tf = new Fields(t as Record<string, unknown>, ["type", "function"], `${at}.`);
      const type = tf.string("type");
      if (type !== "function") {
        throw badRequest(
          `${at}.type`,
          `'${at}.type' must be "function", got ${JSON.stringify(type)}`,
        );
      }
      const fn = tf.object("function");
      if (!fn) throw badRequest(`${at}.function`, `'${at}.function' is required`);
      const ff = new Fields(fn, ["name", "description", "parameters", "strict"], `${at}.function.`);
      const name = ff.string("name");
      if (name === undefined || !NAME.test(name)) {
        throw badRequest(
          `${at}.function.name`,
          `'${at}.function.name' must be 1–64 letters, digits, _, . or -, got ${
            JSON.stringify(name)
          }`,
        );
      }
      if (tools.some((x) => x.function.name === name)) {
        throw badRequest(`${at}.function.name`, `two tools are named '${name}'`);
      }
      const description = ff.string("description");
      const parameters = ff.object("parameters");
      const strict = ff.boolean("strict");
      tools.push({
        type: "function",
        function: {
          name,
          ...(description === undefined ? {} : { description }),
          ...(parameters === undefined ? {} : { parameters }),
          ...(strict === undefined ? {} : { strict }),
        },
      });
    });
  }
  const choice = readToolChoice(f, tools);
  const parallel = f.boolean("parallel_tool_calls") ?? true;
  return { tools, choice, parallel, responseFormat: readResponseFormat(f) };
}

function readToolChoice(f: Fields, tools: readonly Tool[]): ToolChoice {
  const v = f.raw("tool_choice");
  if (v === undefined || v === null) return tools.length > 0 ? "auto" : "none";
  if (v === "none" || v === "auto" || v === "required") {
    if (v !== "none" && tools.length === 0) {
      throw badRequest("tool_choice", `'tool_choice' = "${v}" needs 'tools'`);
    }
    return v;
  }
  if (typeof v === "object" && !Array.isArray(v)) {
    const cf = new Fields(v as Record<string, unknown>, ["type", "function"], "tool_choice.");
    if (cf.string("type") !== "function") {
      throw badRequest("tool_choice.type", "'tool_choice.type' must be \"function\"");
    }
    const fn = cf.object("function");
    const name = fn && new Fields(fn, ["name"], "tool_choice.function.").string("name");
    if (!name) {
      throw badRequest("tool_choice.function.name", "'tool_choice.function.name' is required");
    }
    if (!tools.some((t) => t.function.name === name)) {
      throw badRequest(
        "tool_choice.function.name",
        `'tool_choice' names '${name}', which is not among the tools (${
          tools.map((t) => t.function.name).join(", ") || "none given"
        })`,
      );
    }
    return { name };
  }
  throw badRequest(
    "tool_choice",
    `'tool_choice' must be "none", "auto", "required" or {"type": "function", "function": {"name": …}}, got ${
      describe(v)
    }`,
  );
}

function readResponseFormat(f: Fields): ResponseFormat {
  const rf = f.object("response_format");
  if (!rf) return { type: "text" };
  const rff = new Fields(rf, ["type", "json_schema"], "response_format.");
  const type = rff.string("type");
  if (type === "text") return { type };
  if (type === "json_object") return { type };
  if (type === "json_schema") {
    const js = rff.object("json_schema");
    if (!js) {
      throw badRequest("response_format.json_schema", "'response_format.json_schema' is required");
    }
    const jf = new Fields(
      js,
      ["name", "description", "schema", "strict"],
      "response_format.json_schema.",
    );
    const name = jf.string("name", 64) ?? "response";
    jf.string("description");
    const schema = jf.raw("schema") ?? {};
    const strict = jf.boolean("strict") ?? false;
    return { type, name, schema, strict };
  }
  throw badRequest(
    "response_format.type",
    `'response_format.type' must be "text", "json_object" or "json_schema", got ${
      JSON.stringify(type)
    }`,
  );
}

/**
 * The grammar the request's output must follow, or undefined: a tool call
 * when `tool_choice` forces one, JSON when `response_format` asks for it.
 *
 * @throws a 400 naming the schema keyword that cannot be enforced.
 */
export function requestGrammar(
  r: ToolRequest,
  format: ChatFormat,
  inThinking = false,
): GrammarNode | undefined {
  const forced = r.choice === "required"
    ? r.tools
    : typeof r.choice === "object"
    ? r.tools.filter((t) => t.function.name === (r.choice as { name: string }).name)
    : [];
  if (forced.length > 0 && r.responseFormat.type !== "text") {
    throw badRequest(
      "response_format",
      "'response_format' cannot be combined with a forced tool call ('tool_choice')",
    );
  }
  try {
    if (forced.length > 0) {
      return withReasoning(format, inThinking, format.callGrammar(forced.map((t) => t.function)));
    }
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    const i = r.tools.findIndex((t) => forced.includes(t));
    const field = `tools[${i}].function.parameters${e.path ? `.${e.path}` : ""}`;
    throw badRequest(field, `${field}: ${e.message}`);
  }
  const rf = r.responseFormat;
  if (rf.type === "text") return undefined;
  try {
    const json = jsonSchema(rf.type === "json_object" ? { type: "object" } : rf.schema);
    const answer = format.answerPrefix ? seq(lit(format.answerPrefix), json) : json;
    return withReasoning(format, inThinking, answer);
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    const field = `response_format.json_schema.schema${e.path ? `.${e.path}` : ""}`;
    throw badRequest(field, `${field}: ${e.message}`);
  }
}

/**
 * The tools as the chat template is given them: a description and
 * parameters always present (DeepSeek's and Kimi's templates print them
 * unguarded); none when `tool_choice` is "none".
 */
export function templateTools(r: ToolRequest): unknown[] | undefined {
  if (r.tools.length === 0 || r.choice === "none") return undefined;
  return r.tools.map((t) => ({
    ...t,
    function: { description: "", parameters: { type: "object" }, ...t.function },
  }));
}

/**
 * `body` after an optional reasoning block (required to be closed when the
 * prompt already opened it), as llama.cpp lets thinking models think before
 * a constrained answer.
 */
function withReasoning(format: ChatFormat, inThinking: boolean, body: GrammarNode): GrammarNode {
  const r = format.reasoning;
  if (!r) return body;
  const newline = alt(lit("\n"), seq());
  const gap = r.then ? lit(r.then) : seq(newline, newline);
  const after = seq(until(r.close), gap, body);
  return inThinking ? after : alt(seq(lit(r.open), after), body);
}

/** OpenAI's `tool_calls` entries of parsed calls (ids made here unless the model wrote one). */
export function toolCallsJson(
  calls: readonly ParsedToolCall[],
  ids: string[],
): { id: string; type: "function"; function: { name: string; arguments: string } }[] {
  return calls.map((c, i) => {
    ids[i] ??= c.id ?? randomId("call_");
    return { id: ids[i]!, type: "function", function: { name: c.name, arguments: c.arguments } };
  });
}
