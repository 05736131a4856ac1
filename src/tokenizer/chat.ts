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

import { Template } from "@huggingface/jinja";
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
      messages,
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
