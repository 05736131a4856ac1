/**
 * The chat output formats of the model families served, told apart by their
 * chat template as llama.cpp's `common/chat.cpp` does, and what the server
 * needs from each: the reasoning (`<think>…</think>`, harmony's analysis
 * channel) and the tool calls parsed out of the generated text, the
 * grammar that forces a tool call (`tool_choice` "required" or a named
 * function), and the control tokens whose text the parser must see.
 *
 * | format | tool call |
 * |---|---|
 * | `hermes` (Qwen 2.5/3, Hermes, ChatML fallback) | `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` |
 * | `deepseek` (V3, R1, V3.1) | `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜><｜tool▁calls▁end｜>` (V3/R1: `function<｜tool▁sep｜>NAME\n```json\n{…}\n```) |
 * | `kimi` (Kimi-K2) | `<\|tool_calls_section_begin\|><\|tool_call_begin\|>functions.NAME:0<\|tool_call_argument_begin\|>{…}<\|tool_call_end\|><\|tool_calls_section_end\|>` |
 * | `harmony` (gpt-oss) | `<\|channel\|>commentary to=functions.NAME <\|constrain\|>json<\|message\|>{…}<\|call\|>` |
 *
 * @module
 */

import { alt, type GrammarNode, jsonSchema, lit, seq } from "../../generate/constrain.ts";
import type { Tokenizer } from "../../tokenizer/tokenizer.ts";

/** One parsed tool call. */
export interface ParsedToolCall {
  /** The function's name. */
  name: string;
  /** Its arguments, as a JSON text. */
  arguments: string;
  /** The id the model wrote (Kimi-K2: `functions.NAME:0`), if any. */
  id?: string;
}

/** A generated message split into its parts. */
export interface ParsedMessage {
  /** The reasoning (thinking) text. */
  reasoning: string;
  /** The answer's text. */
  content: string;
  /** Complete tool calls, in order. */
  toolCalls: ParsedToolCall[];
}

/** A function the model may call (OpenAI's `tools[].function`). */
export interface ToolFunction {
  /** Name. */
  name: string;
  /** JSON schema of the arguments (default: any object). */
  parameters?: unknown;
}

/** The kinds of output format. */
export type ChatFormatName = "hermes" | "deepseek" | "kimi" | "harmony";

/** A model family's chat output format. */
export interface ChatFormat {
  /** Which. */
  readonly name: ChatFormatName;
  /** Whether the template knows `<think>` blocks. */
  readonly thinking: boolean;
  /** Control-token texts the parser reads (kept in the decoded output). */
  readonly markers: readonly string[];
  /**
   * Splits generated text. `partial`: more text may follow, so anything
   * that could be the start of a marker or an unfinished call is held back
   * (the result is then a prefix of the final one). `inThinking`: the
   * prompt ended inside a `<think>` block. `tools`: tools were offered, so
   * call-shaped text is a call (otherwise it stays in the content).
   */
  parse(text: string, partial: boolean, inThinking: boolean, tools?: boolean): ParsedMessage;
  /** The grammar of one call to any of `tools` (for a forced call). */
  callGrammar(tools: readonly ToolFunction[]): GrammarNode;
  /** What the output must start with before a JSON answer (`response_format`). */
  readonly answerPrefix: string;
  /**
   * How a reasoning block opens and closes, and what follows its close
   * before the answer, when the family has one (a constrained answer may
   * come after it).
   */
  readonly reasoning?: { open: string; close: string; then: string };
}

const THINK = { open: "<think>", close: "</think>", then: "" } as const;

/** The format of a chat template (llama.cpp's detection by the template's text). */
export function chatFormat(template: string | null): ChatFormat {
  const src = template ?? "";
  const thinking = src.includes("<think>");
  if (src.includes("<|channel|>")) return harmony;
  if (src.includes("<|tool_calls_section_begin|>")) return kimi(thinking);
  if (src.includes("tool▁calls▁begin")) return deepseek(thinking, src.includes("```json"));
  return hermes(thinking);
}

/**
 * The control tokens that spell a format's markers: kept in the decoded
 * output (which drops control tokens) so that the parser sees them.
 */
export function markerTokens(tok: Tokenizer, format: ChatFormat): Set<number> {
  const out = new Set<number>();
  for (const m of format.markers) {
    const ids = tok.encode(m, { addSpecial: false, parseSpecial: true });
    if (ids.length === 1 && tok.isControl(ids[0]!)) out.add(ids[0]!);
  }
  return out;
}

const argsSchema = (t: ToolFunction) => jsonSchema(t.parameters ?? { type: "object" });

/** Drops a suffix of `text` that could be the start of one of `markers`; returns what is safe. */
function safePrefix(text: string, markers: readonly string[]): string {
  let keep = 0;
  for (const m of markers) {
    for (let n = Math.min(m.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(m.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return text.slice(0, text.length - keep);
}

/**
 * Reasoning first: `<think>…</think>` at the start (or the whole text when
 * the prompt opened the block), then the rest with its leading whitespace
 * removed.
 */
function splitThinking(
  text: string,
  partial: boolean,
  inThinking: boolean,
  ends: readonly string[] = ["</think>"],
): { reasoning: string; rest: string; held: boolean } {
  let t = text;
  let inside = inThinking;
  if (!inside) {
    const s = t.trimStart();
    if (s.startsWith("<think>")) {
      inside = true;
      t = s.slice("<think>".length);
    } else if (partial && s.length > 0 && "<think>".startsWith(s)) {
      return { reasoning: "", rest: "", held: true };
    } else if (partial && s.length === 0) {
      return { reasoning: "", rest: "", held: true };
    } else {
      return { reasoning: "", rest: t, held: false };
    }
  }
  let at = -1;
  let endLen = 0;
  for (const e of ends) {
    const i = t.indexOf(e);
    if (i >= 0 && (at < 0 || i < at)) {
      at = i;
      endLen = e === "</think>" ? e.length : 0; // another end (a tool call) stays in the rest
    }
  }
  if (at < 0) {
    if (!partial) return { reasoning: t.trim(), rest: "", held: false };
    return { reasoning: safePrefix(t, ends).trimStart().trimEnd(), rest: "", held: true };
  }
  const rest = t.slice(at + endLen).trimStart();
  return { reasoning: t.slice(0, at).trim(), rest, held: partial && rest.length === 0 };
}

/**
 * Content with tool calls cut out: `begin` opens a call, `end` closes it,
 * `call` reads its body (null: not a call, kept as text). Whitespace
 * between and after calls is dropped.
 */
function splitCalls(
  text: string,
  partial: boolean,
  begin: string,
  end: string,
  call: (body: string) => ParsedToolCall | null,
  openers: readonly string[] = [begin],
): { content: string; toolCalls: ParsedToolCall[] } {
  let content = "";
  const toolCalls: ParsedToolCall[] = [];
  let rest = text;
  for (;;) {
    const i = rest.indexOf(begin);
    if (i < 0) {
      const tail = toolCalls.length > 0 && rest.trim() === "" ? "" : rest;
      if (partial) {
        // after a call, whitespace may still be followed by another call
        if (toolCalls.length > 0 && rest.trim() === "") break;
        content += safePrefix(tail, openers);
      } else content += tail;
      break;
    }
    const before = rest.slice(0, i);
    content += toolCalls.length > 0 && before.trim() === "" ? "" : before;
    const after = rest.slice(i + begin.length);
    const j = after.indexOf(end);
    if (j < 0) {
      if (partial) break; // the call is still being written
      const c = call(after); // cut off at the end (or its closing tag never came)
      if (c) toolCalls.push(c);
      else content += rest.slice(i);
      break;
    }
    const c = call(after.slice(0, j));
    if (c) toolCalls.push(c);
    else content += rest.slice(i, i + begin.length + j + end.length);
    rest = after.slice(j + end.length);
  }
  return { content, toolCalls };
}

/** A JSON object's text, normalised, or null. */
function jsonObjectText(text: string): string | null {
  try {
    const v = JSON.parse(text.trim());
    return typeof v === "object" && v !== null && !Array.isArray(v) ? JSON.stringify(v) : null;
  } catch {
    return null;
  }
}

function hermes(thinking: boolean): ChatFormat {
  const BEGIN = "<tool_call>";
  const END = "</tool_call>";
  return {
    name: "hermes",
    thinking,
    ...(thinking ? { reasoning: THINK } : {}),
    markers: [BEGIN, END, "<think>", "</think>"],
    answerPrefix: "",
    parse(text, partial, inThinking, tools = true) {
      const t = thinking
        ? splitThinking(text, partial, inThinking)
        : { reasoning: "", rest: text, held: false };
      if (!tools) return { reasoning: t.reasoning, content: t.rest, toolCalls: [] };
      const { content, toolCalls } = splitCalls(t.rest, partial, BEGIN, END, (body) => {
        try {
          const v = JSON.parse(body.trim());
          if (typeof v?.name !== "string") return null;
          const args = typeof v.arguments === "string"
            ? jsonObjectText(v.arguments)
            : JSON.stringify(v.arguments ?? {});
          return args === null ? null : { name: v.name, arguments: args };
        } catch {
          return null;
        }
      });
      return { reasoning: t.reasoning, content, toolCalls };
    },
    callGrammar(tools) {
      return seq(
        lit(`${BEGIN}\n`),
        alt(
          ...tools.map((t) =>
            seq(lit(`{"name": ${JSON.stringify(t.name)}, "arguments": `), argsSchema(t), lit("}"))
          ),
        ),
        lit(`\n${END}`),
      );
    },
  };
}

function deepseek(thinking: boolean, fenced: boolean): ChatFormat {
  const SECTION = "<｜tool▁calls▁begin｜>";
  const SECTION_END = "<｜tool▁calls▁end｜>";
  const BEGIN = "<｜tool▁call▁begin｜>";
  const END = "<｜tool▁call▁end｜>";
  const SEP = "<｜tool▁sep｜>";
  return {
    name: "deepseek",
    thinking,
    ...(thinking ? { reasoning: THINK } : {}),
    markers: [SECTION, SECTION_END, BEGIN, END, SEP, "<think>", "</think>"],
    answerPrefix: "",
    parse(text, partial, inThinking, tools = true) {
      const t = thinking
        ? splitThinking(text, partial, inThinking)
        : { reasoning: "", rest: text, held: false };
      if (!tools) return { reasoning: t.reasoning, content: t.rest, toolCalls: [] };
      const rest = t.rest.replaceAll(SECTION, "").replaceAll(SECTION_END, "");
      const { content, toolCalls } = splitCalls(
        rest,
        partial,
        BEGIN,
        END,
        (body) => {
          const k = body.indexOf(SEP);
          if (k < 0) return null;
          let name = body.slice(0, k).trim();
          let args = body.slice(k + SEP.length);
          if (name === "function") {
            const nl = args.indexOf("\n");
            name = (nl < 0 ? args : args.slice(0, nl)).trim();
            args = (nl < 0 ? "" : args.slice(nl + 1)).replace(/^\s*```(?:json)?/, "")
              .replace(/```\s*$/, "");
          }
          const a = jsonObjectText(args);
          return a === null || name === "" ? null : { name, arguments: a };
        },
        [SECTION, SECTION_END, BEGIN],
      );
      return { reasoning: t.reasoning, content, toolCalls };
    },
    callGrammar(tools) {
      return seq(
        lit(SECTION + BEGIN),
        alt(
          ...tools.map((t) =>
            fenced
              ? seq(lit(`function${SEP}${t.name}\n\`\`\`json\n`), argsSchema(t), lit("\n```"))
              : seq(lit(`${t.name}${SEP}`), argsSchema(t))
          ),
        ),
        lit(END + SECTION_END),
      );
    },
  };
}

function kimi(thinking: boolean): ChatFormat {
  const SECTION = "<|tool_calls_section_begin|>";
  const SECTION_END = "<|tool_calls_section_end|>";
  const BEGIN = "<|tool_call_begin|>";
  const ARGS = "<|tool_call_argument_begin|>";
  const END = "<|tool_call_end|>";
  return {
    name: "kimi",
    thinking,
    ...(thinking ? { reasoning: THINK } : {}),
    markers: [SECTION, SECTION_END, BEGIN, ARGS, END, "<think>", "</think>"],
    answerPrefix: "",
    parse(text, partial, inThinking, tools = true) {
      const t = thinking
        ? splitThinking(text, partial, inThinking, ["</think>", SECTION, BEGIN])
        : { reasoning: "", rest: text, held: false };
      if (!tools) return { reasoning: t.reasoning, content: t.rest, toolCalls: [] };
      const rest = t.rest.replaceAll(SECTION, "").replaceAll(SECTION_END, "");
      const { content, toolCalls } = splitCalls(
        rest,
        partial,
        BEGIN,
        END,
        (body) => {
          const k = body.indexOf(ARGS);
          if (k < 0) return null;
          const id = body.slice(0, k).trim();
          const m = /^(?:functions\.)?(.+?)(?::\d+)?$/.exec(id);
          const a = jsonObjectText(body.slice(k + ARGS.length));
          return !m || a === null ? null : { id, name: m[1]!, arguments: a };
        },
        [SECTION, SECTION_END, BEGIN],
      );
      return { reasoning: t.reasoning, content, toolCalls };
    },
    callGrammar(tools) {
      return seq(
        lit(SECTION + BEGIN),
        alt(...tools.map((t) => seq(lit(`functions.${t.name}:0${ARGS}`), argsSchema(t)))),
        lit(END + SECTION_END),
      );
    },
  };
}

const harmony: ChatFormat = (() => {
  const START = "<|start|>";
  const CHANNEL = "<|channel|>";
  const MESSAGE = "<|message|>";
  const END = "<|end|>";
  const CONSTRAIN = "<|constrain|>";
  return {
    name: "harmony",
    thinking: true,
    reasoning: { open: `${CHANNEL}analysis${MESSAGE}`, close: END, then: `${START}assistant` },
    markers: [START, CHANNEL, MESSAGE, END, CONSTRAIN],
    answerPrefix: `${CHANNEL}final${MESSAGE}`,
    parse(text, partial) {
      // the generation prompt opened the first message (`<|start|>assistant`)
      const out: ParsedMessage = { reasoning: "", content: "", toolCalls: [] };
      const messages = text.split(START);
      messages.forEach((m, idx) => {
        const last = idx === messages.length - 1;
        const h = m.indexOf(MESSAGE);
        if (h < 0) {
          // a header still being written, or text with no header at all
          if (!partial || !last) out.content += m.includes(CHANNEL) ? "" : m;
          return;
        }
        const header = m.slice(0, h);
        let body = m.slice(h + MESSAGE.length);
        const e = body.indexOf(END);
        const closed = e >= 0;
        if (closed) body = body.slice(0, e);
        const open = last && !closed && partial;
        const channel = /<\|channel\|>(\w+)/.exec(header)?.[1] ?? "final";
        const to = /to=functions\.([^\s<]+)/.exec(header)?.[1];
        if (to !== undefined) {
          if (open) return; // arguments still coming
          const a = jsonObjectText(body);
          if (a !== null) out.toolCalls.push({ name: to, arguments: a });
          else out.content += body;
          return;
        }
        const safe = open ? safePrefix(body, [END, START]) : body;
        if (channel === "analysis") out.reasoning += safe;
        else out.content += safe;
      });
      return out;
    },
    callGrammar(tools) {
      return alt(...tools.map((t) =>
        seq(
          lit(`${CHANNEL}commentary to=functions.${t.name} ${CONSTRAIN}json${MESSAGE}`),
          argsSchema(t),
        )
      ));
    },
  };
})();

/** What changed between two parses of a growing output, as OpenAI stream deltas. */
export interface ChatDelta {
  /** New reasoning text. */
  reasoning?: string;
  /** New content text. */
  content?: string;
  /** A complete new tool call and its index among the calls. */
  toolCall?: ParsedToolCall & { index: number };
}

/**
 * Parses a streamed output as it grows and hands out only what is new:
 * reasoning and content as text deltas, each tool call once it is whole.
 */
export class ChatStreamParser {
  #text = "";
  #sent: ParsedMessage = { reasoning: "", content: "", toolCalls: [] };

  /** Parses with `format`; `inThinking`: the prompt opened a `<think>` block; `tools`: tools were offered. */
  constructor(
    readonly format: ChatFormat,
    readonly inThinking: boolean,
    readonly tools = true,
  ) {}

  /** Adds generated text; returns the deltas it completes. */
  push(text: string): ChatDelta[] {
    this.#text += text;
    return this.#diff(this.format.parse(this.#text, true, this.inThinking, this.tools));
  }

  /** The output is complete: the last deltas. */
  finish(): ChatDelta[] {
    return this.#diff(this.format.parse(this.#text, false, this.inThinking, this.tools));
  }

  /** Everything parsed so far (after `finish`, the whole message). */
  get message(): ParsedMessage {
    return this.#sent;
  }

  #diff(p: ParsedMessage): ChatDelta[] {
    const out: ChatDelta[] = [];
    const s = this.#sent;
    // a later parse extends the earlier one; text sent cannot be taken back,
    // so should one not, nothing more of that part is sent
    const grow = (was: string, now: string) => now.startsWith(was) ? now.slice(was.length) : "";
    const r = grow(s.reasoning, p.reasoning);
    if (r) out.push({ reasoning: r });
    const c = grow(s.content, p.content);
    if (c) out.push({ content: c });
    for (let i = s.toolCalls.length; i < p.toolCalls.length; i++) {
      out.push({ toolCall: { ...p.toolCalls[i]!, index: i } });
    }
    this.#sent = {
      reasoning: s.reasoning + r,
      content: s.content + c,
      toolCalls: [...s.toolCalls, ...p.toolCalls.slice(s.toolCalls.length)],
    };
    return out;
  }
}
