/**
 * Chat templates: the real templates of the MoE families (from llama.cpp's
 * `models/templates/`) render the role markers and generation prompt their
 * models expect; a file without a template gets ChatML; a broken template
 * fails with an error that names the problem; and a rendered prompt
 * tokenises with one BOS, as llama.cpp's server does it.
 */

import assert from "node:assert/strict";
import {
  LLAMA_BUNDLE_PATH,
  LLAMA_SOURCE_DIR,
  llamaSourceDir,
  vocabPath,
} from "../dev/ref/llama_src.ts";
import {
  applyChatTemplate,
  type ChatMessage,
  CHATML_TEMPLATE,
  ChatTemplate,
  ChatTemplateError,
  renderChat,
} from "../src/tokenizer/chat.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";

function sourceUnavailable(): string | null {
  for (const p of [LLAMA_SOURCE_DIR, LLAMA_BUNDLE_PATH]) {
    try {
      Deno.statSync(p);
      return null;
    } catch {
      // try the next
    }
  }
  return `llama.cpp's source (templates, vocabularies) is not installed at ${LLAMA_BUNDLE_PATH}: run \`deno install\``;
}
const unavailable = sourceUnavailable();
if (unavailable !== null) {
  console.warn(`skipping chat template tests on real templates: ${unavailable}`);
}
const srcTest = (name: string, fn: () => void | Promise<void>) =>
  Deno.test({ name, ignore: unavailable !== null, fn });

async function template(name: string): Promise<string> {
  return await Deno.readTextFile(`${await llamaSourceDir()}/models/templates/${name}.jinja`);
}

const CHAT: ChatMessage[] = [
  { role: "system", content: "You are helpful." },
  { role: "user", content: "Hi there" },
  { role: "assistant", content: "Hello!" },
  { role: "user", content: "2+2?" },
];

srcTest("Qwen3: ChatML turns, a generation prompt, and enable_thinking", async () => {
  const src = await template("Qwen-Qwen3-0.6B");
  const out = applyChatTemplate(src, CHAT);
  assert.equal(
    out,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n" +
      "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n" +
      "<|im_start|>assistant\n",
  );
  const closed = applyChatTemplate(src, CHAT, { addGenerationPrompt: false });
  assert.ok(closed.endsWith("2+2?<|im_end|>\n"), closed);
  const noThink = applyChatTemplate(src, CHAT.slice(0, 2), {
    variables: { enable_thinking: false },
  });
  assert.ok(noThink.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), noThink);
});

srcTest(
  "Mistral: [INST] turns with BOS/EOS, and roles that do not alternate are refused",
  async () => {
    const src = await template("mistralai-Mistral-Nemo-Instruct-2407");
    const out = applyChatTemplate(src, CHAT, { bosToken: "<s>", eosToken: "</s>" });
    assert.equal(out, "<s>[INST]Hi there[/INST]Hello!</s>[INST]You are helpful.\n\n2+2?[/INST]");
    assert.throws(
      () =>
        applyChatTemplate(src, [
          { role: "user", content: "a" },
          { role: "user", content: "b" },
        ]),
      (e) =>
        e instanceof ChatTemplateError && e.stage === "render" &&
        /refused the conversation: .*roles must alternate/.test(e.message),
    );
    const small = applyChatTemplate(await template("Mistral-Small-3.2-24B-Instruct-2506"), CHAT, {
      bosToken: "<s>",
      eosToken: "</s>",
    });
    assert.ok(small.startsWith("<s>[SYSTEM_PROMPT]You are helpful.[/SYSTEM_PROMPT][INST]Hi there"));
    assert.ok(small.endsWith("[INST]2+2?[/INST]"));
  },
);

srcTest("DeepSeek-V3.1: <｜User｜>/<｜Assistant｜> markers after BOS", async () => {
  const out = applyChatTemplate(await template("deepseek-ai-DeepSeek-V3.1"), CHAT, {
    bosToken: "<｜begin▁of▁sentence｜>",
    eosToken: "<｜end▁of▁sentence｜>",
  });
  assert.equal(
    out,
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi there<｜Assistant｜><think></think>Hello!" +
      "<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think></think>",
  );
});

srcTest("GPT-OSS: harmony messages and an open assistant turn", async () => {
  const out = applyChatTemplate(await template("openai-gpt-oss-120b"), CHAT, {
    variables: { reasoning_effort: "low" },
  });
  assert.ok(out.startsWith("<|start|>system<|message|>"), out);
  assert.match(out, /Reasoning: low/);
  assert.match(out, /<\|start\|>developer<\|message\|># Instructions\n\nYou are helpful\./);
  assert.match(out, /<\|start\|>user<\|message\|>Hi there<\|end\|>/);
  assert.match(out, /<\|start\|>assistant<\|channel\|>final<\|message\|>Hello!<\|end\|>/);
  assert.ok(out.endsWith("<|start|>user<|message|>2+2?<|end|><|start|>assistant"), out);
});

srcTest("Llama 3.1 and Kimi K2 render their own headers", async () => {
  const llama = applyChatTemplate(await template("meta-llama-Llama-3.1-8B-Instruct"), CHAT, {
    bosToken: "<|begin_of_text|>",
  });
  assert.ok(llama.startsWith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"));
  assert.match(llama, /<\|start_header_id\|>user<\|end_header_id\|>\n\nHi there<\|eot_id\|>/);
  assert.ok(llama.endsWith("<|start_header_id|>assistant<|end_header_id|>\n\n"));
  const kimi = applyChatTemplate(await template("moonshotai-Kimi-K2"), CHAT);
  assert.match(kimi, /<\|im_user\|>user<\|im_middle\|>Hi there<\|im_end\|>/);
  assert.ok(kimi.endsWith("<|im_assistant|>assistant<|im_middle|>"));
});

/** A conversation with a tool call and its result, as an OpenAI client sends it. */
const TOOL_CHAT: ChatMessage[] = [
  { role: "system", content: "You are helpful." },
  { role: "user", content: "Weather in Paris?" },
  {
    role: "assistant",
    content: "",
    tool_calls: [{
      id: "functions.get_weather:0",
      type: "function",
      function: { name: "get_weather", arguments: '{"city": "Paris"}' },
    }],
  },
  { role: "tool", tool_call_id: "functions.get_weather:0", content: "18°C, sunny" },
  { role: "assistant", content: "It is 18°C and sunny." },
  { role: "user", content: "Thanks" },
];
const TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the weather",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];

srcTest(
  "Kimi-K2 (K2, Instruct, Thinking): system, user, assistant tool call, tool result, tools",
  async () => {
    for (const name of ["moonshotai-Kimi-K2", "Kimi-K2-Instruct", "Kimi-K2-Thinking"]) {
      const src = await template(name);
      const out = applyChatTemplate(src, TOOL_CHAT);
      assert.ok(out.startsWith("<|im_system|>system<|im_middle|>You are helpful.<|im_end|>"), name);
      assert.match(out, /<\|im_user\|>user<\|im_middle\|>Weather in Paris\?<\|im_end\|>/);
      // Arguments reach the template as an object, as llama.cpp passes them: not re-quoted.
      assert.ok(
        out.includes(
          "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0" +
            '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>' +
            "<|tool_calls_section_end|><|im_end|>",
        ),
        `${name}: ${out}`,
      );
      // The tool result names the call it answers (Instruct/Thinking pop it from a queue).
      assert.match(out, /<\|im_system\|>tool<\|im_middle\|>## Return of functions\.get_weather:0/);
      assert.match(out, /18°C, sunny<\|im_end\|>/);
      assert.ok(
        out.endsWith(
          "<|im_user|>user<|im_middle|>Thanks<|im_end|><|im_assistant|>assistant<|im_middle|>",
        ),
      );
      const withTools = applyChatTemplate(src, TOOL_CHAT, { tools: TOOLS });
      assert.ok(
        withTools.startsWith('<|im_system|>tool_declare<|im_middle|>[{"type": "function"'),
        `${name}: ${withTools.slice(0, 80)}`,
      );
      // A string that is not JSON cannot become the object the template reads.
      const bad = structuredClone(TOOL_CHAT);
      (bad[2]!.tool_calls as { function: { arguments: string } }[])[0]!.function.arguments =
        "{city";
      assert.throws(
        () => applyChatTemplate(src, bad),
        (e) =>
          e instanceof ChatTemplateError &&
          /messages\[2\]\.tool_calls\[0\]\.function\.arguments is not JSON/.test(e.message),
      );
    }
  },
);

srcTest("DeepSeek-V3.1 and V3.2: tool calls and their results", async () => {
  const special = { bosToken: "<｜begin▁of▁sentence｜>", eosToken: "<｜end▁of▁sentence｜>" };
  const v31 = applyChatTemplate(await template("deepseek-ai-DeepSeek-V3.1"), TOOL_CHAT, special);
  assert.equal(
    v31,
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Weather in Paris?<｜Assistant｜><think></think>" +
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>" +
      '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>' +
      "<｜tool▁output▁begin｜>18°C, sunny<｜tool▁output▁end｜>It is 18°C and sunny." +
      "<｜end▁of▁sentence｜><｜User｜>Thanks<｜Assistant｜><think></think>",
  );
  // V3.2 turns object arguments into DSML parameters (a string would need `from_json`).
  const v32src = await template("deepseek-ai-DeepSeek-V3.2");
  const v32 = applyChatTemplate(v32src, TOOL_CHAT, special);
  assert.ok(
    v32.includes(
      '<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="city" string="true">Paris' +
        "</｜DSML｜parameter>",
    ),
    v32,
  );
  assert.match(v32, /<result>18°C, sunny<\/result>/);
  assert.ok(v32.endsWith("<｜User｜>Thanks<｜Assistant｜><think></think>"));
  const v32tools = applyChatTemplate(v32src, TOOL_CHAT, { ...special, tools: TOOLS });
  assert.match(v32tools, /<functions>\n\{"name": "get_weather", "description": "Get the weather"/);
});

Deno.test("templates may use Python's list methods (append, pop, insert, extend)", () => {
  const out = applyChatTemplate(
    "{% set q = namespace(ids=[]) %}{% set _ = q.ids.append('a') %}{% set _ = q.ids.append('b') %}" +
      "{% set _ = q.ids.insert(0, 'z') %}{% set _ = q.ids.extend(['c']) %}" +
      "{{ q.ids | length }} {{ q.ids.pop(0) }} {{ q.ids.pop() }} {{ q.ids }}",
    CHAT,
  );
  assert.equal(out, '4 z c ["a", "b"]');
  assert.throws(
    () => applyChatTemplate("{% set l = [] %}{{ l.pop() }}", CHAT),
    /failed to render: list\.pop: pop from empty list/,
  );
});

Deno.test("no template: ChatML, without BOS", () => {
  const want =
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n" +
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n" +
    "<|im_start|>assistant\n";
  for (const t of [null, undefined, "", "  \n"]) {
    assert.equal(applyChatTemplate(t, CHAT, { bosToken: "<s>" }), want);
  }
  const fallback = new ChatTemplate(null);
  assert.ok(fallback.isFallback);
  assert.equal(fallback.source, CHATML_TEMPLATE);
  assert.ok(!fallback.render(CHAT, { addGenerationPrompt: false }).endsWith("assistant\n"));
});

Deno.test("a broken template fails with an error that names the problem", () => {
  const parse = (src: string, re: RegExp) =>
    assert.throws(
      () => new ChatTemplate(src),
      (e) => e instanceof ChatTemplateError && e.stage === "parse" && re.test(e.message),
    );
  parse(
    "{% for m in messages %}\n{{ m.content }}",
    /does not parse: \{% for %\} at line 1 is never closed/,
  );
  parse(
    "{% if x %}a\n{% endfor %}",
    /\{% endfor %\} at line 2 does not close \{% if %\} from line 1/,
  );
  parse("{{ 1 + }}", /does not parse: .*CloseExpression/);
  assert.throws(
    () => applyChatTemplate("{{ messages[0].content.nope() }}", CHAT),
    (e) =>
      e instanceof ChatTemplateError && e.stage === "render" &&
      /failed to render: .*not a function/.test(e.message),
  );
});

srcTest("Gemma 2's template refuses a system message in its own words", async () => {
  const src = await template("google-gemma-2-2b-it");
  assert.throws(
    () => applyChatTemplate(src, CHAT),
    /refused the conversation: System role not supported/,
  );
});

srcTest(
  "renderChat uses the file's template and drops a BOS the tokenizer adds itself",
  async () => {
    // phi-3: the template writes {{ bos_token }} and the tokenizer adds BOS too.
    const phi = loadTokenizer(await vocabPath("phi-3"));
    assert.equal(phi.addBos, true);
    const prompt = renderChat(phi, CHAT.slice(1));
    assert.equal(
      prompt,
      "<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\n",
    );
    const ids = phi.encode(prompt);
    assert.equal(ids[0], phi.bos);
    assert.notEqual(ids[1], phi.bos, "one BOS, not two");
    // qwen2: its own ChatML-with-default-system template; special tokens parse to single ids.
    const qwen = loadTokenizer(await vocabPath("qwen2"));
    const q = renderChat(qwen, [{ role: "user", content: "Hi" }]);
    assert.equal(
      q,
      "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    const imStart = qwen.tokenId("<|im_start|>")!;
    assert.equal(qwen.encode(q).filter((id) => id === imStart).length, 3);
  },
);
