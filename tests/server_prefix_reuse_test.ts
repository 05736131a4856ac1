/**
 * Prefix reuse through the server: a multi-turn chat (each turn sends the
 * whole conversation) reports the reused prompt tokens in OpenAI's
 * `usage.prompt_tokens_details.cached_tokens` from turn 2 on and in
 * /metrics; `cache_prompt: false` turns it off and gives the same reply.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { OpenAI } from "../dev/ref/packages.ts";
import { startServer } from "../src/server/app.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");

gpuTest({
  name: "server: a multi-turn chat reports cached prompt tokens from turn 2 on",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await ensureDemoModel({ cacheDir: `${REPO}/.cache/od-moe` });
    const server = await startServer({ port: 0, engineOptions: { model, nCtx: 512 } });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
    try {
      const messages: OpenAI.ChatCompletionMessageParam[] = [
        { role: "system", content: "You are terse." },
      ];
      let cachedSum = 0;
      let last: { prompt: number; reply: string } | undefined;
      for (const [turn, question] of ["Say hello.", "And again?", "Once more."].entries()) {
        messages.push({ role: "user", content: question });
        const r = await client.chat.completions.create({
          model: "x",
          messages,
          max_tokens: 6,
          temperature: 0,
        });
        const u = r.usage!;
        const cached = u.prompt_tokens_details?.cached_tokens;
        assert.equal(typeof cached, "number", "usage.prompt_tokens_details.cached_tokens");
        if (turn === 0) {
          assert.equal(cached, 0, "turn 1: nothing to reuse");
        } else {
          // the conversation so far, up to where the last reply was generated, is in the cache
          assert.ok(
            cached! >= last!.prompt,
            `turn ${turn + 1}: ${cached} cached of ${u.prompt_tokens}`,
          );
          assert.ok(cached! < u.prompt_tokens);
        }
        cachedSum += cached!;
        const reply = r.choices[0]!.message.content ?? "";
        last = { prompt: u.prompt_tokens, reply };
        messages.push({ role: "assistant", content: reply });
      }

      // without reuse: the same reply, nothing cached
      const ask = (cache_prompt: boolean) =>
        fetch(`${server.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            messages: messages.slice(0, -1),
            max_tokens: 6,
            temperature: 0,
            cache_prompt,
          }),
        }).then((r) => r.json());
      const off = await ask(false);
      assert.equal(off.usage.prompt_tokens_details.cached_tokens, 0);
      assert.equal(off.choices[0].message.content, last!.reply);
      const on = await ask(true);
      assert.equal(on.usage.prompt_tokens_details.cached_tokens, on.usage.prompt_tokens - 1);
      assert.equal(on.choices[0].message.content, last!.reply);
      cachedSum += on.usage.prompt_tokens_details.cached_tokens;

      const bad = await fetch(`${server.url}/generate`, {
        method: "POST",
        body: JSON.stringify({ prompt: "x", cache_prompt: "yes" }),
      });
      assert.equal(bad.status, 400);
      assert.match((await bad.json()).error.message, /cache_prompt/);

      const m = await fetch(`${server.url}/metrics`, { headers: { accept: "application/json" } })
        .then((r) => r.json());
      assert.equal(m.generations.prompt_tokens_cached, cachedSum);
    } finally {
      await server.close();
    }
  },
});
