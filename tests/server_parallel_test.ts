/**
 * The server with `--parallel 4`: four clients at once each get, over HTTP,
 * exactly the text their seeded request gets when it runs alone (streamed
 * or not); `/props` reports the slots; a fifth request waits for a slot
 * (queue depth) rather than being refused.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { startServer } from "../src/server/app.ts";
import { readSse } from "../src/server/sse.ts";

gpuTest({
  name:
    "server --parallel 4: seeded texts alone = at once over HTTP; /props total_slots; a fifth waits",
  sanitizeResources: false,
  async fn() {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const server = await startServer({
      port: 0,
      engineOptions: { model, nCtx: 128, parallel: 4, promptCacheMiB: 0 },
      maxQueue: 1,
    });
    const { url } = server;
    try {
      await server.ready;
      const props = await (await fetch(`${url}/props`)).json();
      assert.equal(props.total_slots, 4);
      const body = (i: number, stream = false) => ({
        prompt: `Request ${i}: the story of the`,
        max_tokens: 10 + 3 * i,
        temperature: 1,
        seed: 100 + i,
        stream,
      });
      const post = (b: unknown) =>
        fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify(b) });
      const text = async (r: Response, stream: boolean) => {
        assert.equal(r.status, 200);
        if (!stream) return (await r.json()).choices[0].text as string;
        let t = "";
        for await (const e of readSse(r.body!)) {
          if (e.data === "[DONE]") continue;
          t += JSON.parse(e.data).choices?.[0]?.text ?? "";
        }
        return t;
      };
      const alone: string[] = [];
      for (let i = 0; i < 5; i++) alone.push(await text(await post(body(i)), false));
      // five at once (the fifth waits for a slot: 4 run + 1 queued = max-queue 1), two streamed
      const together = await Promise.all(
        [0, 1, 2, 3, 4].map(async (i) => text(await post(body(i, i % 2 === 1)), i % 2 === 1)),
      );
      assert.deepEqual(together, alone);
    } finally {
      await server.close();
    }
  },
});

gpuTest({
  name:
    "server --parallel 3: response_format json_schema requests beside a plain one parse, validate and match alone",
  sanitizeResources: false,
  async fn() {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const server = await startServer({
      port: 0,
      engineOptions: { model, nCtx: 256, parallel: 3, promptCacheMiB: 0 },
    });
    try {
      await server.ready;
      const schema = {
        type: "object",
        properties: { name: { type: "string", maxLength: 6 }, n: { type: "integer" } },
        required: ["name", "n"],
        additionalProperties: false,
      };
      const post = async (b: unknown) => {
        const r = await fetch(`${server.url}/v1/chat/completions`, {
          method: "POST",
          body: JSON.stringify(b),
        });
        assert.equal(r.status, 200);
        return (await r.json()).choices[0].message.content as string;
      };
      const json = (seed: number) => ({
        messages: [{ role: "user", content: `Give me JSON ${seed}` }],
        max_tokens: 40,
        temperature: 1,
        seed,
        response_format: { type: "json_schema", json_schema: { name: "x", schema, strict: true } },
      });
      const plain = { messages: [{ role: "user", content: "hi" }], max_tokens: 30, seed: 3 };
      const alone = [await post(json(1)), await post(json(2)), await post(plain)];
      const together = await Promise.all([post(json(1)), post(json(2)), post(plain)]);
      assert.deepEqual(together, alone);
      for (const text of together.slice(0, 2)) {
        const v = JSON.parse(text);
        assert.deepEqual(Object.keys(v).sort(), ["n", "name"], text);
        assert.ok(typeof v.name === "string" && v.name.length <= 6, text);
        assert.ok(Number.isInteger(v.n), text);
      }
    } finally {
      await server.close();
    }
  },
});
