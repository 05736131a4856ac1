/**
 * Malformed and hostile requests against the real server (demo model,
 * `apiKey` set): each gets the right status and a JSON error naming the
 * field, and the server still answers afterwards.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startServer } from "../src/server/app.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");
const KEY = "s3cret-key";

interface Case {
  name: string;
  method?: string;
  path?: string;
  /** An object is sent as JSON; a string or bytes as they are. */
  body?: unknown;
  headers?: Record<string, string>;
  /** Send the API key (default true). */
  auth?: boolean;
  status: number;
  /** `error.param`; null = no field; undefined = not checked. */
  field?: string | null;
  /** Matches `error.message`. */
  message?: RegExp;
  /** A response header that must match. */
  header?: [string, RegExp];
}

const GEN = "/generate";
const CHAT = "/v1/chat/completions";
const COMP = "/v1/completions";
const ok = { prompt: "Hi", max_tokens: 1 };
const chat = { model: "m", messages: [{ role: "user", content: "Hi" }], max_tokens: 1 };
const big = `{"prompt":"${"a".repeat(1 << 20)}"}`;
const deep = `{"prompt":${"[".repeat(100_000)}${"]".repeat(100_000)}}`;

const CASES: Case[] = [
  // the body itself
  { name: "truncated JSON", body: '{"prompt": "x"', status: 400, field: "body", message: /JSON/ },
  { name: "empty body", body: "", status: 400, field: "body", message: /empty/ },
  { name: "array body", body: "[1,2]", status: 400, field: "body", message: /an array/ },
  { name: "string body", body: '"hi"', status: 400, field: "body", message: /object/ },
  { name: "null body", body: "null", status: 400, field: "body", message: /null/ },
  {
    name: "invalid UTF-8",
    body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]),
    status: 400,
    field: "body",
    message: /UTF-8/,
  },
  { name: "body over 1 MiB", body: big, status: 413, field: "body", message: /1048576 bytes/ },
  {
    name: "chunked body over 1 MiB (no Content-Length)",
    body: "stream:" + big,
    status: 413,
    field: "body",
  },
  { name: "100k-deep nesting", body: deep, status: 400 },
  // unknown and misspelt fields
  { name: "misspelt max_token", body: { ...ok, max_token: 5 }, status: 400, field: "max_token" },
  {
    name: "__proto__ field",
    body: '{"prompt":"x","__proto__":{"admin":true}}',
    status: 400,
    field: "__proto__",
  },
  // prompt
  { name: "prompt a number", body: { prompt: 42 }, status: 400, field: "prompt" },
  { name: "prompt an object", body: { prompt: { text: "x" } }, status: 400, field: "prompt" },
  { name: "prompt id outside vocab", body: { prompt: [1, 999999] }, status: 400, field: "prompt" },
  { name: "prompt id not integer", body: { prompt: [1.5] }, status: 400, field: "prompt" },
  { name: "prompt mixed array", body: { prompt: [1, "a"] }, status: 400, field: "prompt" },
  { name: "empty prompt", body: { prompt: "" }, status: 400, field: "prompt", message: /empty/ },
  {
    name: "prompt longer than the context",
    body: { prompt: "word ".repeat(2000) },
    status: 400,
    field: "prompt",
    message: /context holds 256/,
  },
  { name: "no prompt", body: { max_tokens: 3 }, status: 400, field: "prompt" },
  {
    name: "prompt and messages",
    body: { prompt: "x", messages: chat.messages },
    status: 400,
    field: "messages",
  },
  // numbers
  {
    name: "max_tokens a string",
    body: { ...ok, max_tokens: "5" },
    status: 400,
    field: "max_tokens",
  },
  { name: "max_tokens 0", body: { ...ok, max_tokens: 0 }, status: 400, field: "max_tokens" },
  {
    name: "max_tokens negative",
    body: { ...ok, max_tokens: -3 },
    status: 400,
    field: "max_tokens",
  },
  {
    name: "max_tokens fractional",
    body: { ...ok, max_tokens: 2.5 },
    status: 400,
    field: "max_tokens",
  },
  { name: "max_tokens huge", body: { ...ok, max_tokens: 1e12 }, status: 400, field: "max_tokens" },
  {
    name: "temperature Infinity (1e400)",
    body: '{"prompt":"x","temperature":1e400}',
    status: 400,
    field: "temperature",
  },
  {
    name: "temperature negative",
    body: { ...ok, temperature: -1 },
    status: 400,
    field: "temperature",
  },
  {
    name: "temperature a string",
    body: { ...ok, temperature: "hot" },
    status: 400,
    field: "temperature",
  },
  { name: "top_p above 1", body: { ...ok, top_p: 1.5 }, status: 400, field: "top_p" },
  { name: "top_k negative", body: { ...ok, top_k: -1 }, status: 400, field: "top_k" },
  { name: "min_p above 1", body: { ...ok, min_p: 2 }, status: 400, field: "min_p" },
  { name: "seed fractional", body: { ...ok, seed: 1.5 }, status: 400, field: "seed" },
  { name: "seed a string", body: { ...ok, seed: "abc" }, status: 400, field: "seed" },
  {
    name: "repeat_penalty 0",
    body: { ...ok, repeat_penalty: 0 },
    status: 400,
    field: "repeat_penalty",
  },
  {
    name: "penalty_last_n past the ring",
    body: { ...ok, penalty_last_n: 100000 },
    status: 400,
    field: "penalty_last_n",
  },
  { name: "stop a number", body: { ...ok, stop: 5 }, status: 400, field: "stop" },
  { name: "stop numbers", body: { ...ok, stop: [1, 2] }, status: 400, field: "stop" },
  {
    name: "17 stop strings",
    body: { ...ok, stop: Array(17).fill("x") },
    status: 400,
    field: "stop",
  },
  { name: "stream a string", body: { ...ok, stream: "yes" }, status: 400, field: "stream" },
  // chat messages
  {
    name: "messages not an array",
    path: CHAT,
    body: { messages: "hi" },
    status: 400,
    field: "messages",
  },
  { name: "messages empty", path: CHAT, body: { messages: [] }, status: 400, field: "messages" },
  {
    name: "unknown role",
    path: CHAT,
    body: { messages: [{ role: "wizard", content: "x" }] },
    status: 400,
    field: "messages[0].role",
  },
  {
    name: "content a number",
    path: CHAT,
    body: { messages: [{ role: "user", content: 7 }] },
    status: 400,
    field: "messages[0].content",
  },
  {
    name: "image content part",
    path: CHAT,
    body: { messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] },
    status: 400,
    field: "messages[0].content[0].image_url",
  },
  { name: "no messages", path: CHAT, body: { model: "m" }, status: 400, field: "messages" },
  // OpenAI features not offered
  { name: "n = 9", path: CHAT, body: { ...chat, n: 9 }, status: 400, field: "n" },
  { name: "n = 0", path: COMP, body: { prompt: "a", n: 0 }, status: 400, field: "n" },
  {
    name: "a tool without a name",
    path: CHAT,
    body: { ...chat, tools: [{ type: "function", function: { description: "x" } }] },
    status: 400,
    field: "tools[0].function.name",
  },
  {
    name: "tool_choice naming no offered tool",
    path: CHAT,
    body: {
      ...chat,
      tools: [{ type: "function", function: { name: "f" } }],
      tool_choice: { type: "function", function: { name: "g" } },
    },
    status: 400,
    field: "tool_choice.function.name",
  },
  {
    name: "tool_calls on a user message",
    path: CHAT,
    body: {
      messages: [{
        role: "user",
        content: "x",
        tool_calls: [{ type: "function", function: { name: "f", arguments: "{}" } }],
      }],
    },
    status: 400,
    field: "messages[0].tool_calls",
  },
  {
    name: "top_logprobs without logprobs",
    path: CHAT,
    body: { ...chat, top_logprobs: 3 },
    status: 400,
    field: "top_logprobs",
  },
  {
    name: "top_logprobs over 20",
    path: CHAT,
    body: { ...chat, logprobs: true, top_logprobs: 21 },
    status: 400,
    field: "top_logprobs",
  },
  {
    name: "unknown response_format",
    path: CHAT,
    body: { ...chat, response_format: { type: "yaml" } },
    status: 400,
    field: "response_format.type",
  },
  {
    name: "json_schema with a keyword constrained decoding cannot enforce",
    path: CHAT,
    body: {
      ...chat,
      response_format: {
        type: "json_schema",
        json_schema: { name: "n", schema: { type: "integer", minimum: 3 } },
      },
    },
    status: 400,
    field: "response_format.json_schema.schema.minimum",
  },
  {
    name: "completions logprobs over 5",
    path: COMP,
    body: { prompt: "a", logprobs: 6 },
    status: 400,
    field: "logprobs",
  },
  {
    name: "stream_options without stream",
    path: CHAT,
    body: { ...chat, stream_options: { include_usage: true } },
    status: 400,
    field: "stream_options",
  },
  {
    name: "max_tokens and max_completion_tokens",
    path: CHAT,
    body: { ...chat, max_completion_tokens: 2 },
    status: 400,
    field: "max_completion_tokens",
  },
  { name: "model a number", path: CHAT, body: { ...chat, model: 42 }, status: 400, field: "model" },
  {
    name: "logit_bias",
    path: CHAT,
    body: { ...chat, logit_bias: { "1": 5 } },
    status: 400,
    field: "logit_bias",
  },
  { name: "two prompts", path: COMP, body: { prompt: ["a", "b"] }, status: 400, field: "prompt" },
  { name: "echo", path: COMP, body: { prompt: "a", echo: true }, status: 400, field: "echo" },
  {
    name: "no prompt (completions)",
    path: COMP,
    body: { model: "m" },
    status: 400,
    field: "prompt",
  },
  // routes, methods, auth
  { name: "unknown path", method: "GET", path: "/v2/generate", status: 404, field: null },
  { name: "encoded dot-dot path", method: "GET", path: "/%2e%2e/%2e%2e/etc/passwd", status: 404 },
  {
    name: "GET /generate",
    method: "GET",
    path: GEN,
    status: 405,
    header: ["allow", /^POST$/],
  },
  {
    name: "POST /health",
    method: "POST",
    path: "/health",
    body: ok,
    status: 405,
    header: ["allow", /^GET, HEAD$/],
  },
  { name: "PUT chat", method: "PUT", path: CHAT, body: chat, status: 405 },
  { name: "DELETE /v1/models", method: "DELETE", path: "/v1/models", status: 405 },
  {
    name: "no API key",
    body: ok,
    auth: false,
    status: 401,
    message: /Authorization: Bearer/,
    header: ["www-authenticate", /^Bearer/],
  },
  {
    name: "wrong API key",
    body: ok,
    auth: false,
    headers: { authorization: `Bearer ${KEY}x` },
    status: 401,
    message: /wrong/,
  },
  {
    name: "Basic auth",
    body: ok,
    auth: false,
    headers: { authorization: `Basic ${btoa(`user:${KEY}`)}` },
    status: 401,
  },
  { name: "metrics without key", method: "GET", path: "/metrics", auth: false, status: 401 },
  { name: "unknown path without key", method: "GET", path: "/nope", auth: false, status: 401 },
  { name: "/health needs no key", method: "GET", path: "/health", auth: false, status: 200 },
  { name: "HEAD /health", method: "HEAD", path: "/health", auth: false, status: 200 },
  {
    name: "metrics format=xml",
    method: "GET",
    path: "/metrics?format=xml",
    status: 400,
    field: "format",
  },
  { name: "unknown model id", method: "GET", path: "/v1/models/nope", status: 404, field: "model" },
  // odd but valid: served
  {
    name: "lone surrogate and NUL in the prompt",
    body: { prompt: "a\ud800b\u0000c", max_tokens: 1 },
    status: 200,
  },
  {
    name: "nulls mean defaults",
    body: { ...ok, temperature: null, stop: null, seed: null },
    status: 200,
  },
];

async function send(url: string, c: Case): Promise<Response> {
  const headers: Record<string, string> = { ...c.headers };
  if (c.auth ?? true) headers.authorization = `Bearer ${KEY}`;
  let body: BodyInit | undefined;
  if (typeof c.body === "string" && c.body.startsWith("stream:")) {
    const bytes = new TextEncoder().encode(c.body.slice("stream:".length));
    body = new ReadableStream<Uint8Array>({
      start(ctl) {
        for (let i = 0; i < bytes.length; i += 65536) ctl.enqueue(bytes.slice(i, i + 65536));
        ctl.close();
      },
    });
  } else if (typeof c.body === "string" || c.body instanceof Uint8Array) {
    body = c.body as BodyInit;
  } else if (c.body !== undefined) {
    body = JSON.stringify(c.body);
    headers["content-type"] = "application/json";
  }
  return await fetch(`${url}${c.path ?? GEN}`, { method: c.method ?? "POST", headers, body });
}

/** What the last {@link raw} call read. */
let lastRaw = "";

/**
 * Sends raw bytes over TCP (then half-closes when `halfClose`); returns the
 * first status line's code (0 when the connection closed without one).
 */
async function raw(
  port: number,
  bytes: string,
  halfClose = false,
  readAll = false,
): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(bytes));
    if (halfClose) await conn.closeWrite();
    const buf = new Uint8Array(4096);
    let text = "";
    const deadline = setTimeout(() => conn.close(), 5000);
    try {
      while (readAll || !text.includes("\r\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch {
      // closed by the deadline or the server
    } finally {
      clearTimeout(deadline);
    }
    lastRaw = text;
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

gpuTest({
  name: "server: malformed and hostile requests get the right status and a JSON error",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    assert.ok(CASES.length >= 30);
    const model = await ensureDemoModel({ cacheDir: `${REPO}/.cache/od-moe` });
    const server = await startServer({
      port: 0,
      engineOptions: { model, nCtx: 256 },
      apiKey: KEY,
      bodyTimeoutMs: 1500,
      headerTimeoutMs: 1500,
    });
    const { url } = server;
    const auth = { authorization: `Bearer ${KEY}` };
    try {
      const fails: string[] = [];
      for (const c of CASES) {
        const r = await send(url, c);
        const text = await r.text();
        const problems: string[] = [];
        if (r.status !== c.status) problems.push(`status ${r.status}, want ${c.status}`);
        if (c.header) {
          const v = r.headers.get(c.header[0]) ?? "";
          if (!c.header[1].test(v)) problems.push(`header ${c.header[0]}: ${JSON.stringify(v)}`);
        }
        if (c.status >= 400) {
          let err: { message?: string; param?: string | null; type?: string } | undefined;
          try {
            err = JSON.parse(text).error;
          } catch {
            problems.push(`body is not JSON: ${text.slice(0, 80)}`);
          }
          if (!r.headers.get("content-type")?.startsWith("application/json")) {
            problems.push(`content-type ${r.headers.get("content-type")}`);
          }
          if (err) {
            if (typeof err.message !== "string" || err.message.length < 5) {
              problems.push("no error.message");
            }
            if (typeof err.type !== "string") problems.push("no error.type");
            if (c.field !== undefined && err.param !== c.field) {
              problems.push(
                `error.param ${JSON.stringify(err.param)}, want ${JSON.stringify(c.field)}`,
              );
            }
            if (c.field && !err.message?.includes(c.field.split(/[.[]/)[0]!)) {
              problems.push(`message does not name ${c.field}: ${err.message}`);
            }
            if (c.message && !c.message.test(err.message ?? "")) {
              problems.push(`message ${JSON.stringify(err.message)} !~ ${c.message}`);
            }
          }
        }
        if (problems.length) fails.push(`${c.name}: ${problems.join("; ")}`);
      }
      await t.step(`${CASES.length} table cases`, () => {
        assert.deepEqual(fails, []);
      });

      await t.step("raw HTTP: garbage request line, lying Content-Length", async () => {
        assert.equal(await raw(server.port, "HELLO THERE\r\n\r\n"), 400);
        const head =
          `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n`;
        const lying = head + `Content-Length: 5000000\r\nConnection: close\r\n\r\n{}`;
        assert.equal(await raw(server.port, lying), 413);
        // a request cut off mid-body: the server gives up on it, not on everyone
        const cut = head + `Content-Length: 100\r\n\r\n{"prompt":`;
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
        await conn.write(new TextEncoder().encode(cut));
        conn.close();
      });

      await t.step(
        "raw HTTP: a body shorter than its Content-Length, then a half-close: 400",
        async () => {
          const head =
            `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n`;
          const cut = head + `Content-Length: 100\r\nConnection: close\r\n\r\n{"prompt":"x"}`;
          assert.equal(await raw(server.port, cut, true), 400);
        },
      );

      await t.step(
        "raw HTTP: Expect: 100-continue over the size cap gets 413, not 100",
        async () => {
          const req =
            `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Length: 5000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`;
          assert.equal(await raw(server.port, req), 413);
          // under the cap the client is invited to send its body, and is served
          const body = JSON.stringify({ prompt: "Hi", max_tokens: 1 });
          const small =
            `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`;
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
          try {
            await conn.write(new TextEncoder().encode(small));
            const buf = new Uint8Array(4096);
            let text = "";
            while (!text.includes("100 Continue")) {
              const n = await conn.read(buf);
              if (n === null) break;
              text += new TextDecoder().decode(buf.subarray(0, n));
            }
            assert.match(text, /^HTTP\/1\.1 100 Continue/);
            await conn.write(new TextEncoder().encode(body));
            while (!/HTTP\/1\.1 200/.test(text)) {
              const n = await conn.read(buf);
              if (n === null) break;
              text += new TextDecoder().decode(buf.subarray(0, n));
            }
            assert.match(text, /HTTP\/1\.1 200/);
          } finally {
            conn.close();
          }
        },
      );

      await t.step(
        "raw HTTP: a header that never ends gets 408; /health answers meanwhile",
        async () => {
          const held: Deno.Conn[] = [];
          try {
            for (let i = 0; i < 20; i++) {
              const c = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
              await c.write(
                new TextEncoder().encode("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "),
              );
              held.push(c);
            }
            assert.equal((await fetch(`${url}/health`)).status, 200);
            const t0 = performance.now();
            const slow = `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a`;
            assert.equal(await raw(server.port, slow), 408);
            const ms = performance.now() - t0;
            assert.ok(ms >= 1400 && ms < 4500, `answered after ${ms.toFixed(0)} ms (timeout 1500)`);
          } finally {
            for (const c of held) {
              try {
                c.close();
              } catch {
                // closed by the server
              }
            }
          }
        },
      );

      await t.step(
        "raw HTTP: a body that stops arriving gets 408 after the body timeout",
        async () => {
          const req =
            `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Length: 100\r\n\r\n{"prompt":`;
          const t0 = performance.now();
          assert.equal(await raw(server.port, req), 408);
          const ms = performance.now() - t0;
          assert.ok(ms >= 1400 && ms < 4500, `answered after ${ms.toFixed(0)} ms (timeout 1500)`);
        },
      );

      await t.step(
        "Host header: another name is refused (DNS rebinding); IPs and localhost pass",
        async () => {
          const gen = (host: string) =>
            `POST /generate HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Length: 33\r\nConnection: close\r\n\r\n{"prompt": "Hi", "max_tokens": 1}`;
          assert.equal(
            await raw(server.port, gen("evil.example:" + server.port), false, true),
            403,
          );
          assert.match(lastRaw, /--allowed-hosts evil\.example/);
          assert.equal(await raw(server.port, gen("attacker.localhost.evil.example")), 403);
          assert.equal(await raw(server.port, gen("localhost:" + server.port)), 200);
          assert.equal(await raw(server.port, gen("127.0.0.1:" + server.port)), 200);
          assert.equal(await raw(server.port, gen("[::1]:" + server.port)), 200);
        },
      );

      await t.step(
        "Origin: cross-site browser requests refused, same-origin ones served",
        async () => {
          const body = JSON.stringify({ prompt: "Hi", max_tokens: 1 });
          // a cross-site form or fetch with text/plain (no preflight in a browser)
          const cross = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { ...auth, origin: "https://evil.example", "content-type": "text/plain" },
            body,
          });
          assert.equal(cross.status, 403);
          assert.match((await cross.json()).error.message, /--cors-origin https:\/\/evil\.example/);
          const fetchSite = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { ...auth, "sec-fetch-site": "cross-site" },
            body,
          });
          assert.equal(fetchSite.status, 403);
          await fetchSite.body?.cancel();
          // a page served by this server (h21's chat page) calls the API from its own origin
          const same = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { ...auth, origin: url, "content-type": "application/json" },
            body,
          });
          assert.equal(same.status, 200);
          await same.body?.cancel();
        },
      );

      await t.step("the server still answers", async () => {
        const h = await fetch(`${url}/health`);
        assert.equal(h.status, 200);
        assert.equal((await h.json()).status, "ok");
        const r = await fetch(`${url}/generate`, {
          method: "POST",
          headers: auth,
          body: JSON.stringify({ prompt: "Still there?", max_tokens: 4 }),
        });
        assert.equal(r.status, 200);
        assert.ok((await r.json()).tokens.length > 0);
        const m = await (await fetch(`${url}/metrics`, { headers: auth })).json();
        assert.ok(m.requests.by_status["400"] >= 50, JSON.stringify(m.requests.by_status));
        assert.equal(m.requests.in_flight, 0);
        assert.equal(server.engine.pending, 0);
      });
    } finally {
      await server.close();
    }
  },
});
