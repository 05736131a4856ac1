/**
 * llama.cpp server's helper endpoints with its request and response shapes:
 * `POST /tokenize` and `POST /detokenize` give llama.cpp's own tokens and
 * text for the same GGUF, `POST /apply-template` the prompt a chat request
 * is given, `GET /props` the context size and the file's template; bad
 * requests get a 400 naming the field.
 */

import assert from "node:assert/strict";
import { startServer } from "../src/server/app.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { gpuTest } from "../dev/gpu.ts";

const TEXT = "Hello <|im_start|>user\nÜber café 東京 🦊 <|im_end|> done";

gpuTest({
  name: "server: /tokenize, /detokenize, /apply-template, /props as llama.cpp's server",
  ignore: referenceUnavailableReason() !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const model = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "a" });
    const server = await startServer({ port: 0, engineOptions: { model, nCtx: 256 } });
    const ref = loadReference().loadModel(model, { vocabOnly: true });
    const post = async (path: string, body: unknown) => {
      const r = await fetch(`${server.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return { status: r.status, body: await r.json() };
    };
    try {
      await t.step("POST /tokenize: llama.cpp's tokens for each option", async () => {
        for (const add_special of [undefined, false, true]) {
          for (const parse_special of [undefined, false, true]) {
            const r = await post("/tokenize", { content: TEXT, add_special, parse_special });
            assert.equal(r.status, 200);
            // llama.cpp's defaults: add_special false, parse_special true
            const want = ref.tokenize(TEXT, {
              addSpecial: add_special ?? false,
              parseSpecial: parse_special ?? true,
            });
            assert.deepEqual(r.body, { tokens: want }, `${add_special} ${parse_special}`);
          }
        }
      });

      await t.step("POST /tokenize with_pieces: each piece as text, or its bytes", async () => {
        const r = await post("/tokenize", { content: TEXT, with_pieces: true });
        assert.equal(r.status, 200);
        const want = ref.tokenize(TEXT, { addSpecial: false, parseSpecial: true });
        assert.deepEqual(r.body.tokens.map((x: { id: number }) => x.id), want);
        let sawBytes = false;
        for (const { id, piece } of r.body.tokens) {
          const bytes = ref.tokenToBytes(id, { special: true });
          if (typeof piece === "string") {
            assert.deepEqual(new TextEncoder().encode(piece), bytes, `token ${id}`);
          } else {
            sawBytes = true;
            assert.deepEqual(piece, [...bytes], `token ${id}`);
          }
        }
        assert.ok(sawBytes, "the emoji's bytes were expected to split across tokens");
      });

      await t.step("POST /detokenize: llama.cpp's text, control tokens as their text", async () => {
        const ids = ref.tokenize(TEXT, { addSpecial: true, parseSpecial: true });
        const r = await post("/detokenize", { tokens: ids });
        assert.equal(r.status, 200);
        assert.deepEqual(r.body, {
          content: ref.detokenize(ids, { removeSpecial: false, unparseSpecial: true }),
        });
        assert.deepEqual((await post("/detokenize", { tokens: [] })).body, { content: "" });
      });

      await t.step("POST /apply-template: the prompt a chat request is given", async () => {
        const messages = [
          { role: "system", content: "Be brief." },
          { role: "user", content: "What is 2+2?" },
        ];
        const r = await post("/apply-template", { messages });
        assert.equal(r.status, 200);
        const prompt: string = r.body.prompt;
        assert.ok(prompt.includes("Be brief.") && prompt.includes("What is 2+2?"), prompt);
        // the same tokens as the chat endpoint's prompt (BOS as the file says)
        const chat = await post("/v1/chat/completions", { messages, max_tokens: 1 });
        assert.equal(chat.status, 200);
        const ids = ref.tokenize(prompt, { addSpecial: true, parseSpecial: true });
        assert.equal(chat.body.usage.prompt_tokens, ids.length);
      });

      await t.step("GET /props: context size, slots, template, defaults", async () => {
        const r = await fetch(`${server.url}/props`);
        assert.equal(r.status, 200);
        const p = await r.json();
        assert.equal(p.default_generation_settings.n_ctx, 256);
        assert.equal(p.total_slots, 1);
        assert.equal(p.model_path, model);
        const md = readGgufModel(model).metadata;
        assert.equal(p.chat_template, md.string("tokenizer.chat_template", null) ?? "");
        const s = p.default_generation_settings.params;
        assert.equal(typeof s.temperature, "number");
        assert.equal(typeof s.top_k, "number");
        const eos = md.number("tokenizer.ggml.eos_token_id");
        assert.equal(p.eos_token, ref.tokenToPiece(eos, { special: true }));
        assert.equal((await fetch(`${server.url}/props`, { method: "POST" })).status, 405);
      });

      await t.step("bad requests: 400 naming the field", async () => {
        const cases: [string, unknown, string][] = [
          ["/tokenize", {}, "content"],
          ["/tokenize", { content: 5 }, "content"],
          ["/tokenize", { content: "x", with_pieces: "yes" }, "with_pieces"],
          ["/tokenize", { content: "x", extra: 1 }, "extra"],
          ["/detokenize", {}, "tokens"],
          ["/detokenize", { tokens: "1 2" }, "tokens"],
          ["/detokenize", { tokens: [1, -1] }, "tokens"],
          ["/detokenize", { tokens: [1e9] }, "tokens"],
          ["/apply-template", {}, "messages"],
          ["/apply-template", { messages: [{ role: "wizard", content: "x" }] }, "messages"],
        ];
        for (const [path, body, field] of cases) {
          const r = await post(path, body);
          assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
          assert.match(r.body.error.message, new RegExp(field), JSON.stringify(r.body));
        }
      });
    } finally {
      ref.close();
      await server.close();
    }
  },
});
