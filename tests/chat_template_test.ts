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
