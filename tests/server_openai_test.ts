/**
 * The official `openai` npm client, unchanged but for `baseURL` (and the
 * server's API key), against the real server on the demo model: model list,
 * chat completion, streamed chat, completion, and an API error.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { OpenAI } from "../dev/ref/packages.ts";
import { startServer } from "../src/server/app.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");

gpuTest({
  name: "server: the openai client lists models, completes and streams a chat",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const model = await ensureDemoModel({ cacheDir: `${REPO}/.cache/od-moe` });
    const server = await startServer({
      port: 0,
      engineOptions: { model, nCtx: 512 },
      apiKey: "sk-test",
    });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "sk-test", maxRetries: 0 });
    const messages = [
      { role: "system" as const, content: "You are terse." },
      { role: "user" as const, content: "Say hello." },
    ];
    try {
      let id = "";
      await t.step("models.list", async () => {
        const list = [];
        for await (const m of client.models.list()) list.push(m);
        assert.equal(list.length, 1);
        id = list[0]!.id;
        assert.equal(id, "od-moe demo (random weights)");
        assert.equal((await client.models.retrieve(id)).id, id);
      });

      let text = "";
      await t.step("chat.completions.create", async () => {
        const r = await client.chat.completions.create({
          model: id,
          messages,
          max_tokens: 8,
          temperature: 0,
        });
        assert.equal(r.object, "chat.completion");
        assert.equal(r.model, id);
        assert.equal(r.choices.length, 1);
        const c = r.choices[0]!;
        assert.equal(c.message.role, "assistant");
        assert.equal(typeof c.message.content, "string");
        assert.ok(c.finish_reason === "stop" || c.finish_reason === "length");
        assert.ok(r.usage!.prompt_tokens > 0);
        assert.ok(r.usage!.completion_tokens > 0 && r.usage!.completion_tokens <= 8);
        assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + r.usage!.completion_tokens);
        text = c.message.content!;
      });

      await t.step("chat.completions.create stream: the same text, then usage", async () => {
        const stream = await client.chat.completions.create({
          model: id,
          messages,
          max_tokens: 8,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
        });
        let streamed = "";
        let chunks = 0;
        let finish: string | null = null;
        let usage: OpenAI.CompletionUsage | undefined | null;
        for await (const chunk of stream) {
          chunks++;
          assert.equal(chunk.object, "chat.completion.chunk");
          const c = chunk.choices[0];
          if (c) {
            streamed += c.delta.content ?? "";
            finish = c.finish_reason ?? finish;
          }
          if (chunk.usage) usage = chunk.usage;
        }
        assert.ok(chunks >= 3);
        assert.equal(streamed, text);
        assert.ok(finish === "stop" || finish === "length");
        assert.ok(usage && usage.completion_tokens > 0);
      });

      await t.step("chat stream helper (runner) assembles the message", async () => {
        const runner = client.chat.completions.stream({
          model: id,
          messages,
          max_tokens: 8,
          temperature: 0,
        });
        const final = await runner.finalChatCompletion();
        assert.equal(final.choices[0]!.message.content, text);
      });

      await t.step("completions.create, streaming and not", async () => {
        const r = await client.completions.create({
          model: id,
          prompt: "Once upon a time",
          max_tokens: 6,
          temperature: 0,
        });
        assert.equal(r.object, "text_completion");
        assert.ok(r.usage!.completion_tokens > 0);
        const s = await client.completions.create({
          model: id,
          prompt: "Once upon a time",
          max_tokens: 6,
          temperature: 0,
          stream: true,
        });
        let streamed = "";
        for await (const c of s) streamed += c.choices[0]?.text ?? "";
        assert.equal(streamed, r.choices[0]!.text);
      });

      await t.step("n choices: each its own text, streamed as the same per index", async () => {
        const base = { model: id, messages, max_tokens: 6, temperature: 1, seed: 7, n: 3 };
        const r = await client.chat.completions.create(base);
        assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
        const texts = r.choices.map((c) => c.message.content!);
        assert.ok(new Set(texts).size > 1, `three seeds, one text: ${JSON.stringify(texts)}`);
        assert.ok(r.usage!.completion_tokens > 6 && r.usage!.completion_tokens <= 18);
        const s = await client.chat.completions.create({ ...base, stream: true });
        const streamed = ["", "", ""];
        for await (const ch of s) {
          for (const c of ch.choices) streamed[c.index] += c.delta.content ?? "";
        }
        assert.deepEqual(streamed, texts);
        const comp = await client.completions.create({
          model: id,
          prompt: "Once upon a time",
          max_tokens: 4,
          temperature: 1,
          seed: 3,
          n: 2,
        });
        assert.equal(comp.choices.length, 2);
        assert.notEqual(comp.choices[0]!.text, comp.choices[1]!.text);
      });

      await t.step(
        "seeded sampling: the same text with logprobs (the CPU sampler's path)",
        async () => {
          const base = {
            model: id,
            messages,
            max_tokens: 12,
            temperature: 0.9,
            top_k: 0,
            seed: 11,
          };
          const gpu = await client.chat.completions.create(base);
          const cpu = await client.chat.completions.create({ ...base, logprobs: true });
          assert.equal(cpu.choices[0]!.message.content, gpu.choices[0]!.message.content);
          assert.equal(cpu.choices[0]!.logprobs!.content!.length, cpu.usage!.completion_tokens);
        },
      );

      await t.step("errors arrive as the client's typed errors", async () => {
        await assert.rejects(
          () =>
            client.chat.completions.create({ model: id, messages, max_tokens: 8, temperature: 9 }),
          (e: unknown) => {
            assert.ok(e instanceof OpenAI.BadRequestError, String(e));
            assert.equal(e.status, 400);
            assert.equal(e.param, "temperature");
            return true;
          },
        );
        const wrongKey = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "nope", maxRetries: 0 });
        await assert.rejects(() => wrongKey.models.list(), OpenAI.AuthenticationError);
      });
    } finally {
      await server.close();
    }
  },
});
