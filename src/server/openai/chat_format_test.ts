import assert from "node:assert/strict";
import { Ajv } from "../../../dev/ref/packages.ts";
import { llamaSourceDir } from "../../../dev/ref/llama_src.ts";
import {
  canFinish,
  Constraint,
  minToFinish,
  startState,
  stepState,
} from "../../generate/constrain.ts";
import { GgufMetadata } from "../../gguf/reader.ts";
import { Keys } from "../../gguf/names.ts";
import { gv } from "../../gguf/value.ts";
import { builtinTokenizer, TokenType } from "../../model/vocab.ts";
import { Tokenizer } from "../../tokenizer/tokenizer.ts";
import { applyChatTemplate } from "../../tokenizer/chat.ts";
import { requestGrammar, type ToolRequest } from "./tools.ts";
import { Rng } from "../../util/rng.ts";
import {
  type ChatFormat,
  chatFormat,
  type ChatFormatName,
  ChatStreamParser,
  markerTokens,
  type ParsedMessage,
} from "./chat_format.ts";

/** Real templates from llama.cpp's source, with the format each must be read as. */
const TEMPLATES: [string, ChatFormatName][] = [
  ["Qwen-Qwen3-0.6B.jinja", "hermes"],
  ["deepseek-ai-DeepSeek-V3.1.jinja", "deepseek"],
  ["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek"],
  ["moonshotai-Kimi-K2.jinja", "kimi"],
  ["Kimi-K2-Thinking.jinja", "kimi"],
  ["openai-gpt-oss-120b.jinja", "harmony"],
];

const WEATHER = {
  type: "object",
  properties: {
    location: { type: "string", maxLength: 20 },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
  },
  required: ["location", "unit"],
  additionalProperties: false,
};
const TOOLS = [{
  type: "function",
  function: { name: "get_weather", description: "The weather now", parameters: WEATHER },
}];
const USER = [{ role: "user", content: "Weather in Paris?" }];
const CALL = {
  role: "assistant",
  content: "",
  tool_calls: [{
    id: "call_1",
    type: "function",
    function: { name: "get_weather", arguments: '{"location":"Paris","unit":"celsius"}' },
  }],
};

async function template(name: string): Promise<string> {
  return await Deno.readTextFile(`${await llamaSourceDir()}/models/templates/${name}`);
}

/** What the model wrote in the assistant turn of `messages` (the template's own rendering). */
function assistantTurn(src: string): { output: string; prompt: string } {
  const o = { tools: TOOLS, bosToken: "<s>", eosToken: "</s>" };
  const prompt = applyChatTemplate(src, USER, o);
  const full = applyChatTemplate(src, [...USER, CALL], { ...o, addGenerationPrompt: false });
  // R1's generation prompt opens <think>, which a finished turn does not repeat
  const common = full.startsWith(prompt) ? prompt.length : full.indexOf("<｜tool▁calls▁begin｜>");
  const output = full.slice(common)
    .replace(/(<\|im_end\|>\n?|<｜end▁of▁sentence｜>.*|<\|call\|>)$/s, "");
  return { output, prompt };
}

/**
 * The output fed a few characters at a time: the deltas joined equal the
 * final parse. Each call starts with a delta that names it, with empty
 * arguments; `fragments` counts the arguments deltas of each call.
 */
function streamed(
  f: ChatFormat,
  text: string,
  inThinking: boolean,
  step: number,
  fragments: number[] = [],
): ParsedMessage {
  const p = new ChatStreamParser(f, inThinking);
  const got: ParsedMessage = { reasoning: "", content: "", toolCalls: [] };
  const take = (ds: ReturnType<ChatStreamParser["push"]>) => {
    for (const d of ds) {
      got.reasoning += d.reasoning ?? "";
      got.content += d.content ?? "";
      const c = d.toolCall;
      if (!c) continue;
      if (c.name !== undefined) {
        assert.equal(c.index, got.toolCalls.length, "each call starts once, in order");
        assert.equal(c.arguments, "", "a call's first delta has empty arguments");
        got.toolCalls.push({ name: c.name, arguments: "", ...(c.id ? { id: c.id } : {}) });
        fragments.push(0);
      } else {
        assert.ok(c.index < got.toolCalls.length, "arguments of a call that was started");
        assert.notEqual(c.arguments, "");
        got.toolCalls[c.index]!.arguments += c.arguments;
        fragments[c.index]!++;
      }
    }
  };
  for (let i = 0; i < text.length; i += step) take(p.push(text.slice(i, i + step)));
  take(p.finish());
  return got;
}

Deno.test("chat format: each family's own rendering of a tool call parses back to the call", async () => {
  for (const [name, want] of TEMPLATES) {
    const src = await template(name);
    const f = chatFormat(src);
    assert.equal(f.name, want, name);
    const { output, prompt } = assistantTurn(src);
    const inThinking = f.thinking && prompt.lastIndexOf("<think>") > prompt.lastIndexOf("</think>");
    const m = f.parse(output, false, inThinking);
    assert.equal(
      m.toolCalls.length,
      1,
      `${name}: ${JSON.stringify(output)} → ${JSON.stringify(m)}`,
    );
    assert.equal(m.toolCalls[0]!.name, "get_weather", name);
    assert.deepEqual(JSON.parse(m.toolCalls[0]!.arguments), { location: "Paris", unit: "celsius" });
    assert.equal(m.content.trim(), "", `${name}: no call text left in the content`);
    for (const step of [1, 3, 7]) {
      const fragments: number[] = [];
      assert.deepEqual(streamed(f, output, inThinking, step, fragments), m, `${name} step ${step}`);
      // the arguments stream as they are written, not in one piece at the end
      assert.ok(fragments[0]! > 4, `${name} step ${step}: ${fragments[0]} argument fragments`);
    }
    // offered no tools, the same text is the answer, not a call
    assert.equal(
      f.parse(output, false, inThinking, false).toolCalls.length,
      want === "harmony" ? 1 : 0,
    );
  }
});

Deno.test("chat format: the forced-call grammar's outputs parse as calls whose arguments validate", async () => {
  const validate = new Ajv({ strict: false }).compile(WEATHER);
  const rng = new Rng(5);
  for (const [name] of TEMPLATES) {
    const f = chatFormat(await template(name));
    const g = f.callGrammar([{ name: "get_weather", parameters: WEATHER }, {
      name: "get_time",
      parameters: {
        type: "object",
        properties: { zone: { enum: ["UTC", "CET"] } },
        required: ["zone"],
      },
    }]);
    for (let run = 0; run < 10; run++) {
      // a random text of the grammar, byte by byte, as a model forced by it would write
      let state = startState(g);
      const bytes: number[] = [];
      for (let left = 200; !state.every((s) => s === null) && left > 0; left--) {
        const ok: number[] = [];
        for (let b = 0; b < 256; b++) {
          const next = stepState(state, Uint8Array.of(b));
          if (next.length > 0 && minToFinish(next) <= left - 1) ok.push(b);
        }
        if (ok.length === 0) break;
        const b = ok[Math.floor(rng.next() * ok.length)]!;
        state = stepState(state, Uint8Array.of(b));
        bytes.push(b);
      }
      assert.ok(canFinish(state), name);
      const text = new TextDecoder().decode(Uint8Array.from(bytes));
      const m = f.parse(text, false, false);
      assert.equal(m.toolCalls.length, 1, `${name}: ${text}`);
      // streamed in pieces of every size, the fragments join to the same arguments text
      for (const step of [1, 2, 5]) {
        assert.deepEqual(streamed(f, text, false, step), m, `${name} step ${step}: ${text}`);
      }
      const c = m.toolCalls[0]!;
      const args = JSON.parse(c.arguments);
      if (c.name === "get_weather") assert.ok(validate(args), `${name}: ${text}`);
      else assert.ok(c.name === "get_time" && ["UTC", "CET"].includes(args.zone), text);
    }
  }
});

Deno.test("chat format: reasoning is split from the answer, streamed or not", async () => {
  const cases: [string, string, boolean, Partial<ParsedMessage>][] = [
    ["Qwen-Qwen3-0.6B.jinja", "<think>\nThe user greets.\n</think>\n\nHello!", false, {
      reasoning: "The user greets.",
      content: "Hello!",
    }],
    ["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "Let me think.\n</think>\n\n42", true, {
      reasoning: "Let me think.",
      content: "42",
    }],
    ["Kimi-K2-Thinking.jinja", "<think>hmm</think>Sure.", false, {
      reasoning: "hmm",
      content: "Sure.",
    }],
    [
      "openai-gpt-oss-120b.jinja",
      "<|channel|>analysis<|message|>Simple greeting.<|end|><|start|>assistant<|channel|>final<|message|>Hi there",
      false,
      { reasoning: "Simple greeting.", content: "Hi there" },
    ],
    // unfinished thinking (max_tokens hit inside it) is all reasoning
    ["Qwen-Qwen3-0.6B.jinja", "<think>\nStill going", false, {
      reasoning: "Still going",
      content: "",
    }],
    // a plain answer from a thinking model
    ["Qwen-Qwen3-0.6B.jinja", "Just text <b>", false, { reasoning: "", content: "Just text <b>" }],
  ];
  for (const [name, text, inThinking, want] of cases) {
    const f = chatFormat(await template(name));
    const m = f.parse(text, false, inThinking);
    assert.deepEqual({ reasoning: m.reasoning, content: m.content }, want, `${name}: ${text}`);
    for (const step of [1, 2, 5]) {
      const s = streamed(f, text, inThinking, step);
      assert.deepEqual(
        { reasoning: s.reasoning, content: s.content },
        want,
        `${name} streamed by ${step}`,
      );
    }
  }
});

/** The built-in vocabulary with `extra` appended as control tokens (as a GGUF marks them). */
function withControls(extra: readonly string[]): Tokenizer {
  const v = builtinTokenizer();
  const entries = v.entries.map(([k, val]) => {
    if (k === Keys.tokenizerTokens && val.type === "array") {
      return [k, gv.strings([...(val.value as string[]), ...extra])] as const;
    }
    if (k === Keys.tokenizerTokenType && val.type === "array") {
      return [
        k,
        gv.i32s([
          ...Array.from(val.value as ArrayLike<number>),
          ...extra.map(() => TokenType.control),
        ]),
      ] as const;
    }
    return [k, val] as const;
  });
  return Tokenizer.fromGguf(new GgufMetadata(new Map(entries), "<test vocab>"));
}

Deno.test("chat format: forced calls through the token mask with each family's marker tokens decode and parse", async () => {
  const validate = new Ajv({ strict: false }).compile(WEATHER);
  const families: [string, string[]][] = [
    ["openai-gpt-oss-120b.jinja", [
      "<|start|>",
      "<|channel|>",
      "<|message|>",
      "<|end|>",
      "<|constrain|>",
      "<|return|>",
      "<|call|>",
    ]],
    ["moonshotai-Kimi-K2.jinja", [
      "<|tool_calls_section_begin|>",
      "<|tool_calls_section_end|>",
      "<|tool_call_begin|>",
      "<|tool_call_argument_begin|>",
      "<|tool_call_end|>",
    ]],
    ["deepseek-ai-DeepSeek-V3.1.jinja", [
      "<｜tool▁calls▁begin｜>",
      "<｜tool▁calls▁end｜>",
      "<｜tool▁call▁begin｜>",
      "<｜tool▁call▁end｜>",
      "<｜tool▁sep｜>",
    ]],
  ];
  const rng = new Rng(11);
  for (const [name, controls] of families) {
    const tok = withControls(controls);
    const f = chatFormat(await template(name));
    const keep = markerTokens(tok, f);
    const specials = new Set(
      controls.map((c) => tok.encode(c, { addSpecial: false })).filter((ids) => ids.length === 1)
        .map((ids) => ids[0]!),
    );
    for (let run = 0; run < 3; run++) {
      const c = new Constraint(f.callGrammar([{ name: "get_weather", parameters: WEATHER }]), tok);
      const ids: number[] = [];
      let usedSpecial = false;
      for (let left = 300; left > 0; left--) {
        const mask = c.mask(left);
        const allowed = [...mask.keys()].filter((id) => mask[id] === 1);
        // the marker tokens when the grammar allows them, as a trained model would write them
        const special = allowed.filter((id) => specials.has(id) && !tok.isEog(id));
        const pool = special.length > 0 && run < 2 ? special : allowed;
        const id = pool[Math.floor(rng.next() * pool.length)]!;
        usedSpecial ||= specials.has(id);
        c.accept(id);
        ids.push(id);
        if (tok.isEog(id)) break;
      }
      assert.ok(tok.isEog(ids.at(-1)!) || c.finished, `${name}: unfinished`);
      if (run < 2) assert.ok(usedSpecial, `${name}: the marker tokens were allowed`);
      const d = tok.createStreamDecoder({ skipSpecial: true, keep });
      const text = ids.map((id) => tok.isEog(id) ? "" : d.push(id)).join("") + d.flush();
      const m = f.parse(text, false, false);
      assert.equal(m.toolCalls.length, 1, `${name}: ${text}`);
      assert.equal(m.toolCalls[0]!.name, "get_weather");
      assert.ok(validate(JSON.parse(m.toolCalls[0]!.arguments)), text);
    }
  }
});

Deno.test("chat format: a constrained answer may follow reasoning, and parses out of it", async () => {
  const validate = new Ajv({ strict: false }).compile(WEATHER);
  const rng = new Rng(17);
  const request: ToolRequest = {
    tools: [],
    choice: "none",
    parallel: true,
    responseFormat: { type: "json_schema", name: "w", schema: WEATHER, strict: true },
  };
  const cases: [string, boolean][] = [
    ["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", true], // the prompt opened <think>
    ["Qwen-Qwen3-0.6B.jinja", false],
    ["openai-gpt-oss-120b.jinja", false],
  ];
  for (const [name, inThinking] of cases) {
    const f = chatFormat(await template(name));
    const g = requestGrammar(request, f, inThinking)!;
    let thought = 0;
    for (let run = 0; run < 8; run++) {
      let state = startState(g);
      const bytes: number[] = [];
      // early on, prefer the reasoning block's opening so that both branches are walked
      const open = new TextEncoder().encode(f.reasoning!.open);
      for (let left = 160; !state.every((s) => s === null) && left > 0; left--) {
        const ok: number[] = [];
        for (let b = 0x0a; b < 0x7f; b++) {
          const next = stepState(state, Uint8Array.of(b));
          if (next.length > 0 && minToFinish(next) <= left - 1) ok.push(b);
        }
        if (ok.length === 0) break;
        const want = run % 2 === 0 && bytes.length < open.length ? open[bytes.length] : undefined;
        const b = want !== undefined && ok.includes(want)
          ? want
          : ok[Math.floor(rng.next() * ok.length)]!;
        state = stepState(state, Uint8Array.of(b));
        bytes.push(b);
      }
      assert.ok(canFinish(state), name);
      const text = new TextDecoder().decode(Uint8Array.from(bytes));
      const m = f.parse(text, false, inThinking);
      if (m.reasoning) thought++;
      assert.ok(
        validate(JSON.parse(m.content)),
        `${name}: ${JSON.stringify(text)} → ${JSON.stringify(m)}`,
      );
    }
    assert.ok(thought > 0, `${name}: some walks reasoned first`);
  }
});

Deno.test("chat format: streamed call arguments join to the text the model wrote, markers left out", async () => {
  const args = '{"q": "a } { \\" ] </tool", "n": [1, 2, {"x": null}], "k": 12.5}';
  const cases: [string, string, { name: string; arguments: string }[]][] = [
    [
      "Qwen-Qwen3-0.6B.jinja",
      `Let me look.\n<tool_call>\n{"name": "find", "arguments": ${args}}\n</tool_call>\n` +
      `<tool_call>\n{"name": "count", "arguments": "{\\"z\\": 1}"}\n</tool_call>`,
      // arguments written as a JSON string are the object's text, re-encoded
      [{ name: "find", arguments: args }, { name: "count", arguments: '{"z":1}' }],
    ],
    [
      "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
      "</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>find\n```json\n" +
      `${args}\n\`\`\`<｜tool▁call▁end｜><｜tool▁calls▁end｜>`,
      [{ name: "find", arguments: args }],
    ],
    [
      "moonshotai-Kimi-K2.jinja",
      "<|tool_calls_section_begin|><|tool_call_begin|>functions.find:0<|tool_call_argument_begin|>" +
      ` ${args} <|tool_call_end|><|tool_calls_section_end|>`,
      [{ name: "find", arguments: args }],
    ],
    [
      "openai-gpt-oss-120b.jinja",
      `<|channel|>commentary to=functions.find <|constrain|>json<|message|>${args}\n`,
      [{ name: "find", arguments: args }],
    ],
  ];
  for (const [name, text, want] of cases) {
    const f = chatFormat(await template(name));
    const inThinking = name.includes("R1");
    const m = f.parse(text, false, inThinking);
    assert.deepEqual(
      m.toolCalls.map((c) => ({ name: c.name, arguments: c.arguments })),
      want,
      name,
    );
    for (const step of [1, 4]) {
      const fragments: number[] = [];
      assert.deepEqual(streamed(f, text, inThinking, step, fragments), m, `${name} step ${step}`);
      assert.ok(fragments[0]! >= args.length / step / 2, `${name}: ${fragments[0]} fragments`);
    }
  }
});
