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

/**
 * A tool call still being written (partial parses only): its name, and as
 * much of its arguments as is sure to begin the final arguments text.
 */
export type OpenToolCall = ParsedToolCall;

/** A generated message split into its parts. */
export interface ParsedMessage {
  /** The reasoning (thinking) text. */
  reasoning: string;
  /** The answer's text. */
  content: string;
  /** Complete tool calls, in order. */
  toolCalls: ParsedToolCall[];
  /** The call after `toolCalls` that is still being written, once its name is known. */
  open?: OpenToolCall;
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
   * that could be the start of a marker is held back and a call being
   * written is `open` (the result is then a prefix of the final one, the
   * open call's arguments a prefix of that call's final arguments). A
   * call's arguments are the JSON object's text as the model wrote it,
   * without the whitespace around it. `inThinking`: the
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
  open?: (body: string) => OpenToolCall | null,
): { content: string; toolCalls: ParsedToolCall[]; open?: OpenToolCall } {
  let content = "";
  const toolCalls: ParsedToolCall[] = [];
  let rest = text;
  let opened: OpenToolCall | null = null;
  for (;;) {
    const i = rest.indexOf(begin);
    if (i < 0) {
      const tail = toolCalls.length > 0 && rest.trim() === "" ? "" : rest;
      if (partial) {
        // after a call, whitespace may still be followed by another call
        const safe = safePrefix(tail, openers);
        if (toolCalls.length > 0 && safe.trim() === "") break;
        content += safe;
      } else content += tail;
      break;
    }
    const before = rest.slice(0, i);
    content += toolCalls.length > 0 && before.trim() === "" ? "" : before;
    const after = rest.slice(i + begin.length);
    const j = after.indexOf(end);
    if (j < 0) {
      // the call is still being written
      if (partial) {
        opened = open?.(safePrefix(after, [end])) ?? null;
        break;
      }
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
  return opened ? { content, toolCalls, open: opened } : { content, toolCalls };
}

/** A JSON object's text without the whitespace around it (as written, not re-encoded), or null. */
function jsonObjectText(text: string): string | null {
  const t = text.trim();
  try {
    const v = JSON.parse(t);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? t : null;
  } catch {
    return null;
  }
}

/** A JSON object's text, re-encoded (arguments the model wrote as a JSON string), or null. */
function jsonObjectOfString(text: string): string | null {
  try {
    const v = JSON.parse(text);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? JSON.stringify(v) : null;
  } catch {
    return null;
  }
}

/**
 * The arguments so far of a call being written, from `text` (what follows
 * the arguments marker): from the object's `{` on, less a tail that may yet
 * turn out to be whitespace, a closing fence or the start of one of `ends`
 * (so that it begins the final `jsonObjectText`). Empty before the `{`, or
 * when something other than whitespace (or the opening fence) precedes it.
 */
function openArguments(text: string, ends: readonly string[], fence = false): string {
  const t = safePrefix(text, ends);
  const b = t.indexOf("{");
  if (b < 0 || !(fence ? /^\s*(```(json)?)?\s*$/ : /^\s*$/).test(t.slice(0, b))) return "";
  return t.slice(b).replace(fence ? /[\s`]+$/ : /\s+$/, "");
}

const isSpace = (c: string | undefined) => c === " " || c === "\n" || c === "\r" || c === "\t";

/**
 * Where the JSON value that starts at `s[i]` ends (the index after it), or
 * -1 when the text ends first. Only strings and nesting are followed: the
 * value is checked by `JSON.parse` once it is whole.
 */
function jsonValueEnd(s: string, i: number): number {
  let depth = 0;
  for (let k = i; k < s.length; k++) {
    const c = s[k]!;
    if (c === '"') {
      for (k++; k < s.length && s[k] !== '"'; k++) if (s[k] === "\\") k++;
      if (k >= s.length) return -1;
      if (depth === 0) return k + 1;
    } else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      if (depth === 0) return k;
      if (--depth === 0) return k + 1;
    } else if (depth === 0 && (c === "," || isSpace(c))) return k;
  }
  return -1;
}

/**
 * The top-level members of the JSON object `s` opens, as far as written:
 * each key's value as a span (`end` -1: still being written).
 */
function objectMembers(s: string): Map<string, { start: number; end: number }> {
  const out = new Map<string, { start: number; end: number }>();
  let i = 0;
  const ws = () => {
    while (isSpace(s[i])) i++;
  };
  ws();
  if (s[i++] !== "{") return out;
  for (;;) {
    ws();
    if (s[i] !== '"') return out;
    const keyEnd = jsonValueEnd(s, i);
    if (keyEnd < 0) return out;
    let key: string;
    try {
      key = JSON.parse(s.slice(i, keyEnd));
    } catch {
      return out;
    }
    i = keyEnd;
    ws();
    if (s[i++] !== ":") return out;
    ws();
    if (i >= s.length) return out;
    const end = jsonValueEnd(s, i);
    out.set(key, { start: i, end });
    if (end < 0) return out;
    i = end;
    ws();
    if (s[i++] !== ",") return out;
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
      const calls = splitCalls(
        t.rest,
        partial,
        BEGIN,
        END,
        (body) => {
          try {
            const v = JSON.parse(body.trim());
            if (typeof v?.name !== "string") return null;
            let args: string | null = "{}";
            if (typeof v.arguments === "string") args = jsonObjectOfString(v.arguments);
            else if (v.arguments !== undefined && v.arguments !== null) {
              const a = objectMembers(body).get("arguments");
              args = a && a.end > 0 ? jsonObjectText(body.slice(a.start, a.end)) : null;
            }
            return args === null ? null : { name: v.name, arguments: args };
          } catch {
            return null;
          }
        },
        [BEGIN],
        (body) => {
          // `{"name": …, "arguments": {…` : the object's text streams; a string waits to be whole
          const members = objectMembers(body);
          const n = members.get("name");
          if (!n || n.end < 0 || body[n.start] !== '"') return null;
          const a = members.get("arguments");
          const args = a && body[a.start] === "{"
            ? body.slice(a.start, a.end < 0 ? body.length : a.end).replace(/\s+$/, "")
            : "";
          try {
            return { name: JSON.parse(body.slice(n.start, n.end)), arguments: args };
          } catch {
            return null; // a broken escape: the whole call decides
          }
        },
      );
      return { reasoning: t.reasoning, ...calls };
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
  /** A call's name and the text of its arguments (`partial`: null while the name is unfinished). */
  const head = (body: string, partial = false) => {
    const k = body.indexOf(SEP);
    if (k < 0) return null;
    const name = body.slice(0, k).trim();
    const args = body.slice(k + SEP.length);
    if (name !== "function") return { name, args, fenced: false };
    // V3/R1: function<｜tool▁sep｜>NAME\n```json\n{…}\n```
    const nl = args.indexOf("\n");
    if (nl < 0 && partial) return null;
    return {
      name: (nl < 0 ? args : args.slice(0, nl)).trim(),
      args: nl < 0 ? "" : args.slice(nl + 1),
      fenced: true,
    };
  };
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
      const calls = splitCalls(
        rest,
        partial,
        BEGIN,
        END,
        (body) => {
          const c = head(body);
          if (!c) return null;
          const args = c.fenced
            ? c.args.replace(/^\s*```(?:json)?/, "").replace(/```\s*$/, "")
            : c.args;
          const a = jsonObjectText(args);
          return a === null || c.name === "" ? null : { name: c.name, arguments: a };
        },
        [SECTION, SECTION_END, BEGIN],
        (body) => {
          const c = head(body, true);
          return c && c.name !== ""
            ? { name: c.name, arguments: openArguments(c.args, [END, SECTION_END], c.fenced) }
            : null;
        },
      );
      return { reasoning: t.reasoning, ...calls };
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
      /** `functions.NAME:0<|tool_call_argument_begin|>…`: the id, the name and the arguments' text. */
      const head = (body: string) => {
        const k = body.indexOf(ARGS);
        if (k < 0) return null;
        const id = body.slice(0, k).trim();
        const m = /^(?:functions\.)?(.+?)(?::\d+)?$/.exec(id);
        return m ? { id, name: m[1]!, args: body.slice(k + ARGS.length) } : null;
      };
      const calls = splitCalls(
        rest,
        partial,
        BEGIN,
        END,
        (body) => {
          const c = head(body);
          const a = c && jsonObjectText(c.args);
          return !c || a === null ? null : { id: c.id, name: c.name, arguments: a };
        },
        [SECTION, SECTION_END, BEGIN],
        (body) => {
          const c = head(body);
          return c
            ? { id: c.id, name: c.name, arguments: openArguments(c.args, [END, SECTION_END]) }
            : null;
        },
      );
      return { reasoning: t.reasoning, ...calls };
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
          if (open) {
            out.open = { name: to, arguments: openArguments(body, [END, START]) };
            return;
          }
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
  /**
   * A tool call's start or more of its arguments: the first delta of a call
   * has its `name` (and the id the model wrote, if any) and empty
   * `arguments`; the next ones only `arguments` fragments, which joined
   * give the call's final arguments text.
   */
  toolCall?: { index: number; name?: string; id?: string; arguments: string };
}

/**
 * Parses a streamed output as it grows and hands out only what is new:
 * reasoning and content as text deltas; each tool call once its name is
 * known, then its arguments as the model writes them. A call whose text
 * turns out not to be one at the end (its JSON broken, or cut off by the
 * token limit) was announced already; its text then follows as content.
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

  /** Everything sent so far (after `finish`, the whole message; calls with the arguments sent). */
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
    s.reasoning += r;
    const c = grow(s.content, p.content);
    if (c) out.push({ content: c });
    s.content += c;
    const calls = p.open ? [...p.toolCalls, p.open] : p.toolCalls;
    calls.forEach((call, index) => {
      let sent = s.toolCalls[index];
      if (!sent) {
        sent = { name: call.name, arguments: "", ...(call.id ? { id: call.id } : {}) };
        s.toolCalls.push(sent);
        out.push({ toolCall: { index, ...sent } });
      }
      const a = grow(sent.arguments, call.arguments);
      if (a) out.push({ toolCall: { index, arguments: a } });
      sent.arguments += a;
    });
    return out;
  }
}
