/**
 * Chat templates: the Jinja template a GGUF carries in
 * `tokenizer.chat_template`, rendered with `@huggingface/jinja` (the Jinja
 * implementation transformers.js uses), and a ChatML fallback for files
 * without one.
 *
 * @example
 * ```ts ignore
 * import { applyChatTemplate } from "./chat.ts";
 * const prompt = applyChatTemplate(tok.chatTemplate, [
 *   { role: "user", content: "Hello!" },
 * ]);
 * ```
 *
 * @module
 */

import { Environment, Template } from "@huggingface/jinja";
import type { Tokenizer } from "./tokenizer.ts";

/** One chat message. Extra fields (`tool_calls`, `reasoning_content`, …) reach the template as they are. */
export interface ChatMessage {
  /** `system`, `user`, `assistant`, `tool`, … */
  role: string;
  /** The message text. */
  content: string;
  /** Anything else the template reads. */
  [key: string]: unknown;
}

/** Options of {@linkcode applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn (`add_generation_prompt`). Default true. */
  addGenerationPrompt?: boolean;
  /** The text of the BOS token (`bos_token`). Default `""`. */
  bosToken?: string;
  /** The text of the EOS token (`eos_token`). Default `""`. */
  eosToken?: string;
  /** Tool definitions (`tools`), passed only when given. */
  tools?: readonly unknown[];
  /** More template variables, e.g. `{ enable_thinking: false }` or `{ reasoning_effort: "low" }`. */
  variables?: Readonly<Record<string, unknown>>;
}

/**
 * The template used when a file has none: ChatML
 * (`<|im_start|>role\ncontent<|im_end|>\n` per message, then
 * `<|im_start|>assistant\n`), the same default llama.cpp falls back to.
 * It does not add `bos_token`.
 */
export const CHATML_TEMPLATE: string = "{%- for message in messages -%}\n" +
  "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n" +
  "{%- endfor -%}\n" +
  "{%- if add_generation_prompt -%}\n" +
  "  {{- '<|im_start|>assistant\\n' -}}\n" +
  "{%- endif -%}";

/** A chat template that cannot be parsed, or that failed or refused to render. */
export class ChatTemplateError extends Error {
  /** Whether parsing or rendering failed. */
  readonly stage: "parse" | "render";

  /** An error at `stage` with a message that says what went wrong. */
  constructor(stage: "parse" | "render", message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ChatTemplateError";
    this.stage = stage;
  }
}

/**
 * Python's list methods that real templates call and `@huggingface/jinja`
 * (0.5.11, also 0.5.13) lacks: Kimi-K2-Instruct and Kimi-K2-Thinking keep a
 * queue of tool-call ids with `ids.append(x)` and `ids.pop(0)`, and fail
 * with "Cannot call something that is not a function" without them. The
 * library does not export its value classes, so they are taken from the
 * values its own `Environment` creates, and the array prototype's
 * `builtins` gains `append`, `pop`, `insert` and `extend` (Python's
 * semantics: in place, `pop()` takes the last, negative indices count from
 * the end). `length` is recomputed on each access, since a list can now
 * change length. Reported upstream in issue 18's note.
 */
function addListMethods(): void {
  const env = new Environment();
  type Value = { type: string; value: unknown };
  const probe = env.set("a", []) as unknown as { value: Value[] };
  const arrayProto = Object.getPrototypeOf(probe) as object;
  if (Object.getOwnPropertyDescriptor(arrayProto, "__odmoeListMethods") !== undefined) return;
  const ctor = (v: unknown) =>
    (env.set(`probe${String(v)}`, v) as unknown as { constructor: unknown })
      .constructor as new (v?: unknown) => Value;
  const NullValue = ctor(null);
  const UndefinedValue = ctor(undefined);
  const IntegerValue = ctor(1);
  const FunctionValue = (env.variables.get("namespace") as unknown as { constructor: unknown })
    .constructor as new (fn: (args: Value[]) => Value) => Value;
  const original = Object.getOwnPropertyDescriptor(arrayProto, "builtins")?.get;
  if (original === undefined) return; // a library version without it: leave it alone
  const index = (items: Value[], at: Value | undefined, what: string, insert = false): number => {
    const i = at === undefined ? (insert ? items.length : -1) : Number(at.value);
    if (!Number.isInteger(i)) throw new Error(`list.${what}: index must be an integer`);
    const j = i < 0 ? items.length + i : i;
    if (insert) return Math.max(0, Math.min(items.length, j));
    if (j < 0 || j >= items.length) {
      throw new Error(`list.${what}: index ${i} out of range (length ${items.length})`);
    }
    return j;
  };
  Object.defineProperty(arrayProto, "__odmoeListMethods", { value: true });
  Object.defineProperty(arrayProto, "builtins", {
    configurable: true,
    get(this: { value: Value[] }) {
      const items = this.value;
      const none = () => new NullValue(null);
      return new Map<string, unknown>([
        ["length", new IntegerValue(items.length)],
        ["append", new FunctionValue(([x]) => (items.push(x ?? new UndefinedValue()), none()))],
        [
          "extend",
          new FunctionValue(([xs]) => {
            if (!Array.isArray(xs?.value)) throw new Error("list.extend: argument is not a list");
            items.push(...(xs.value as Value[]));
            return none();
          }),
        ],
        [
          "insert",
          new FunctionValue(([at, x]) => {
            items.splice(index(items, at, "insert", true), 0, x ?? new UndefinedValue());
            return none();
          }),
        ],
        [
          "pop",
          new FunctionValue(([at]) => {
            if (items.length === 0) throw new Error("list.pop: pop from empty list");
            return items.splice(index(items, at, "pop"), 1)[0]!;
          }),
        ],
      ]);
    },
  });
}
addListMethods();

const BLOCKS: Readonly<Record<string, string>> = {
  for: "endfor",
  if: "endif",
  macro: "endmacro",
  call: "endcall",
  filter: "endfilter",
  generation: "endgeneration",
};

/**
 * The first unbalanced `{% block %}` of a template, in words, or null. The
 * Jinja parser reports some of these as internal errors, so they are
 * looked for here to name the problem.
 */
function unbalancedBlock(source: string): string | null {
  const stack: { tag: string; line: number }[] = [];
  const lineAt = (index: number) => source.slice(0, index).split("\n").length;
  for (const m of source.matchAll(/\{%[-+]?\s*(\w+)([^%]*)%\}/g)) {
    const tag = m[1]!;
    const line = lineAt(m.index);
    if (tag === "set" && !m[2]!.includes("=")) {
      stack.push({ tag, line });
    } else if (BLOCKS[tag] !== undefined) {
      stack.push({ tag, line });
    } else if (tag.startsWith("end")) {
      const open = stack.pop();
      const want = open === undefined ? undefined : BLOCKS[open.tag] ?? "endset";
      if (open === undefined || want !== tag) {
        return open === undefined
          ? `{% ${tag} %} at line ${line} closes nothing`
          : `{% ${tag} %} at line ${line} does not close {% ${open.tag} %} from line ${open.line}`;
      }
    }
  }
  const open = stack.pop();
  return open === undefined ? null : `{% ${open.tag} %} at line ${open.line} is never closed`;
}

/** A parsed chat template, ready to render many conversations. */
export class ChatTemplate {
  /** The template source. */
  readonly source: string;
  /** True when the file had no template and {@linkcode CHATML_TEMPLATE} is used. */
  readonly isFallback: boolean;
  readonly #template: Template;
  #objectArguments: boolean | undefined;

  /**
   * Parses `source`; `null`, `undefined` or blank means {@linkcode CHATML_TEMPLATE}.
   *
   * @throws {ChatTemplateError} naming the parse error (and an unclosed or
   * mismatched block when there is one).
   */
  constructor(source: string | null | undefined) {
    this.isFallback = source === null || source === undefined || source.trim() === "";
    this.source = this.isFallback ? CHATML_TEMPLATE : source!;
    try {
      this.#template = new Template(this.source);
    } catch (e) {
      const block = unbalancedBlock(this.source);
      const detail = e instanceof Error ? e.message : String(e);
      throw new ChatTemplateError(
        "parse",
        `chat template does not parse: ${block ?? detail}${block ? ` (parser: ${detail})` : ""}`,
        { cause: e },
      );
    }
  }

  /**
   * Renders a conversation.
   *
   * @throws {ChatTemplateError} with the template's own message when it
   * calls `raise_exception` (roles that do not alternate, an unsupported
   * role…), or the renderer's error otherwise.
   */
  render(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const vars: Record<string, unknown> = {
      ...options.variables,
      messages: this.#toolCallsForTemplate(messages),
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: options.bosToken ?? "",
      eos_token: options.eosToken ?? "",
    };
    if (options.tools !== undefined) vars.tools = options.tools;
    try {
      return this.#template.render(vars);
    } catch (e) {
      const detail = e instanceof Error ? e.message : String(e);
      // raise_exception("…") throws a plain Error with the template's own words.
      if (e instanceof Error && e.constructor === Error && raisedBy(this.source, detail)) {
        throw new ChatTemplateError(
          "render",
          `the chat template refused the conversation: ${detail}`,
          { cause: e },
        );
      }
      throw new ChatTemplateError("render", `chat template failed to render: ${detail}`, {
        cause: e,
      });
    }
  }

  /**
   * Messages with tool calls as llama.cpp's server hands them to a template:
   * a missing content becomes `""`, and OpenAI's JSON-string arguments
   * become objects when the template reads objects (Kimi-K2 and DeepSeek-V3.1
   * write `arguments | tojson`, which would otherwise print the string
   * quoted and escaped; DeepSeek-V3.2 would need a `from_json` filter).
   */
  #toolCallsForTemplate(messages: readonly ChatMessage[]): readonly ChatMessage[] {
    if (!messages.some((m) => Array.isArray(m.tool_calls))) return messages;
    this.#objectArguments ??= readsObjectArguments(this.#template);
    const objectArguments = this.#objectArguments;
    return messages.map((m, i) => {
      if (!Array.isArray(m.tool_calls)) return m;
      const calls = (m.tool_calls as unknown[]).map((call, j) => {
        const fn = (call as { function?: { arguments?: unknown } } | null)?.function;
        if (!objectArguments || typeof fn?.arguments !== "string") return call;
        let args: unknown;
        try {
          args = JSON.parse(fn.arguments);
        } catch (e) {
          throw new ChatTemplateError(
            "render",
            `messages[${i}].tool_calls[${j}].function.arguments is not JSON (${
              e instanceof Error ? e.message : e
            }); this template needs the arguments as a JSON object`,
          );
        }
        return { ...(call as object), function: { ...fn, arguments: args } };
      });
      return { ...m, content: m.content ?? "", tool_calls: calls };
    });
  }
}

/**
 * Whether the template reads tool-call arguments as an object (`arguments |
 * tojson`, `arguments.items()`), found as llama.cpp's capability probe does:
 * render one call whose arguments are an object and look for its value.
 */
function readsObjectArguments(template: Template): boolean {
  const marker = "od-moe-argument-probe";
  try {
    return template.render({
      messages: [
        { role: "user", content: "User message" },
        {
          role: "assistant",
          content: "",
          tool_calls: [{
            id: "call00001",
            type: "function",
            function: { name: "tool1", arguments: { arg: marker } },
          }],
        },
      ],
      add_generation_prompt: false,
      bos_token: "",
      eos_token: "",
    }).includes(marker);
  } catch {
    return false;
  }
}

/** Whether `message` reads like one a template raises itself (its text is in the source). */
function raisedBy(source: string, message: string): boolean {
  if (!source.includes("raise_exception")) return false;
  const probe = message.slice(0, 24);
  return probe.length >= 8 && source.includes(probe);
}

const cache = new Map<string, ChatTemplate>();

/**
 * Renders `messages` with a chat template (`tokenizer.chat_template`); a
 * missing template (`null`/`undefined`/blank) falls back to ChatML
 * ({@linkcode CHATML_TEMPLATE}). Parsed templates are cached by source.
 *
 * @throws {ChatTemplateError} if the template does not parse or fails to render.
 */
export function applyChatTemplate(
  template: string | null | undefined,
  messages: readonly ChatMessage[],
  options: ChatTemplateOptions = {},
): string {
  const key = template ?? "";
  let t = cache.get(key);
  if (t === undefined) {
    t = new ChatTemplate(template);
    if (cache.size >= 32) cache.clear();
    cache.set(key, t);
  }
  return t.render(messages, options);
}

/**
 * Renders a conversation with a tokenizer's own template and BOS/EOS text,
 * ready for `tokenizer.encode(prompt)`: as llama.cpp does, a leading BOS the
 * template writes is removed when the tokenizer adds one itself (and a
 * trailing EOS likewise), so the prompt does not start with two.
 */
export function renderChat(
  tokenizer: Tokenizer,
  messages: readonly ChatMessage[],
  options: Omit<ChatTemplateOptions, "bosToken" | "eosToken"> = {},
): string {
  const text = (id: number | null) =>
    id === null ? "" : new TextDecoder().decode(tokenizer.tokenToBytes(id));
  const bos = text(tokenizer.bos);
  const eos = text(tokenizer.eos);
  let out = applyChatTemplate(tokenizer.chatTemplate, messages, {
    ...options,
    bosToken: bos,
    eosToken: eos,
  });
  if (tokenizer.addBos && bos !== "" && out.startsWith(bos)) out = out.slice(bos.length);
  if (tokenizer.addEos && eos !== "" && out.endsWith(eos)) out = out.slice(0, -eos.length);
  return out;
}
