/**
 * The server over HTTP on a free loopback port, with the real engine on the
 * demo model: every endpoint streaming and not, metrics in both formats,
 * the queue (order, 503 when full), disconnects that cancel, a failing
 * expert read (500, server stays up), the loading state, shutdown, and
 * `deno task serve` as a subprocess (the README's curl request, SIGTERM →
 * exit 0).
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startServer } from "../src/server/app.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { readSse, type SseEvent } from "../src/server/sse.ts";
import { Engine } from "../src/generate/engine.ts";
import type { GenerationStats } from "../src/generate/types.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { ExpertReadError, type ExpertSource, GgufExpertSource } from "../src/experts/source.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");
const CACHE = `${REPO}/.cache`;
const demo = () => ensureDemoModel({ cacheDir: `${CACHE}/od-moe` });

async function post(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...init,
  });
}

async function events(r: Response): Promise<SseEvent[]> {
  const out: SseEvent[] = [];
  for await (const e of readSse(r.body!)) out.push(e);
  return out;
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

gpuTest({
  name: "server: endpoints, streaming, metrics, queue, disconnects",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const model = await demo();
    const server = await startServer({
      port: 0,
      engineOptions: { model, nCtx: 512 },
      maxQueue: 2,
    });
    const { url } = server;
    const greedy = { prompt: "The cat sat on", max_tokens: 12, temperature: 0 };
    try {
      await t.step("GET /health: 200 with model, architecture, uptime", async () => {
        const r = await fetch(`${url}/health`);
        assert.equal(r.status, 200);
        const b = await r.json();
        assert.equal(b.status, "ok");
        assert.equal(b.model, "od-moe demo (random weights)");
        assert.equal(b.architecture, "qwen3moe");
        assert.equal(b.context_length, 512);
        assert.ok(b.uptime_seconds >= 0);
      });

      let greedyText = "";
      let greedyTokens: number[] = [];
      await t.step("POST /generate: text, tokens, finish_reason, stats", async () => {
        const r = await post(`${url}/generate`, greedy);
        assert.equal(r.status, 200);
        assert.match(r.headers.get("content-type")!, /application\/json/);
        const b = await r.json();
        assert.equal(typeof b.text, "string");
        assert.ok(b.tokens.length >= 1 && b.tokens.length <= 12);
        assert.ok(["stop", "length"].includes(b.finish_reason));
        for (
          const k of [
            "prompt_tokens",
            "completion_tokens",
            "tokens_per_second",
            "cache_hit_rate",
            "expert_loads",
            "syncs_per_token",
          ]
        ) assert.equal(typeof b.stats[k], "number", `stats.${k}`);
        assert.equal(b.stats.completion_tokens, b.tokens.length);
        assert.ok(b.stats.prompt_tokens >= 4);
        assert.ok(b.stats.cache_hit_rate >= 0 && b.stats.cache_hit_rate <= 1);
        greedyText = b.text;
        greedyTokens = b.tokens;
        // greedy decoding is deterministic
        const again = await (await post(`${url}/generate`, greedy)).json();
        assert.deepEqual(again.tokens, greedyTokens);
      });

      await t.step("POST /generate stream: SSE chunks reassemble the same text", async () => {
        const r = await post(`${url}/generate`, { ...greedy, stream: true });
        assert.equal(r.status, 200);
        assert.match(r.headers.get("content-type")!, /text\/event-stream/);
        const ev = await events(r);
        const last = ev.pop()!;
        assert.equal(last.event, "done");
        const done = JSON.parse(last.data);
        assert.equal(done.stats.completion_tokens, greedyTokens.length);
        assert.ok(ev.length >= 1);
        const chunks = ev.map((e) => JSON.parse(e.data));
        assert.equal(chunks.map((c) => c.text).join(""), greedyText);
        assert.deepEqual(chunks.flatMap((c) => c.tokens), greedyTokens);
      });

      await t.step("POST /generate: a seed makes sampling reproducible", async () => {
        const req = { prompt: "Once", max_tokens: 8, temperature: 1, top_k: 50, seed: 1234 };
        const a = await (await post(`${url}/generate`, req)).json();
        const b = await (await post(`${url}/generate`, req)).json();
        assert.deepEqual(a.tokens, b.tokens);
      });

      await t.step("POST /generate: a stop string ends the text before it", async () => {
        const at = [...greedyText].findIndex((_, i) => i >= 2 && greedyText[i] !== " ");
        if (greedyText.length < 4 || at < 0) return; // nothing to cut
        const stop = greedyText.slice(at, at + 2);
        const r = await (await post(`${url}/generate`, { ...greedy, stop: [stop] })).json();
        assert.equal(r.text, greedyText.slice(0, greedyText.indexOf(stop)));
        assert.equal(r.finish_reason, "stop");
      });

      await t.step("POST /generate: chat messages through the template", async () => {
        const r = await post(`${url}/generate`, {
          messages: [{ role: "user", content: "Hi" }],
          max_tokens: 3,
        });
        assert.equal(r.status, 200);
        const b = await r.json();
        // ChatML wraps the message: more prompt tokens than the bare text
        assert.ok(b.stats.prompt_tokens > 5, `prompt_tokens ${b.stats.prompt_tokens}`);
      });

      await t.step("GET /metrics: JSON with the cache and throughput figures", async () => {
        const r = await fetch(`${url}/metrics`);
        assert.equal(r.status, 200);
        const m = await r.json();
        for (
          const k of [
            "cache_hit_rate",
            "prefetch_accuracy",
            "avg_expert_load_time",
            "tokens_per_second",
            "queue_depth",
            "resident_expert_bytes",
            "budget_bytes",
          ]
        ) assert.equal(typeof m[k], "number", k);
        assert.ok(m.tokens_per_second > 0);
        assert.ok(m.requests.total >= 6);
        assert.ok(m.generations.completion_tokens > 0);
        assert.ok(m.budget_bytes > 0);
        assert.equal(m.model, "od-moe demo (random weights)");
      });

      await t.step("GET /metrics: Prometheus text on request", async () => {
        for (
          const [path, headers] of [
            ["/metrics?format=prometheus", {}],
            ["/metrics", { accept: "text/plain" }],
          ] as const
        ) {
          const r = await fetch(`${url}${path}`, { headers });
          assert.equal(r.status, 200);
          assert.match(r.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
          const text = await r.text();
          const types = new Map<string, string>();
          for (const line of text.trimEnd().split("\n")) {
            const m = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line);
            if (m) types.set(m[1]!, m[2]!);
            if (line.startsWith("#")) continue;
            assert.match(
              line,
              /^odmoe_[a-z0-9_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$/,
            );
          }
          for (const [name, type] of types) {
            assert.ok(name.startsWith("odmoe_"), name);
            if (type === "counter") assert.ok(name.endsWith("_total"), name);
          }
          assert.equal(types.get("odmoe_request_duration_seconds"), "histogram");
          assert.equal(types.get("odmoe_time_to_first_token_seconds"), "histogram");
          assert.match(text, /odmoe_http_requests_total\{endpoint="\/generate",status="200"\} \d+/);
          assert.match(
            text,
            /odmoe_request_duration_seconds_bucket\{endpoint="\/generate",le="\+Inf"\}/,
          );
          assert.match(text, /^odmoe_cache_hit_ratio [0-9.]+$/m);
          assert.match(text, /^odmoe_expert_budget_bytes \d+$/m);
        }
      });

      await t.step("GET /v1/models and /v1/models/{id}", async () => {
        const list = await (await fetch(`${url}/v1/models`)).json();
        assert.equal(list.object, "list");
        assert.equal(list.data.length, 1);
        const id = list.data[0].id;
        assert.equal(id, "od-moe demo (random weights)");
        const one = await fetch(`${url}/v1/models/${encodeURIComponent(id)}`);
        assert.equal(one.status, 200);
        assert.equal((await one.json()).id, id);
        const none = await fetch(`${url}/v1/models/gpt-4`);
        assert.equal(none.status, 404);
        assert.equal((await none.json()).error.param, "model");
      });

      await t.step("POST /v1/completions: JSON and SSE ending with [DONE]", async () => {
        const r = await post(`${url}/v1/completions`, {
          model: "x",
          prompt: "The cat sat on",
          max_tokens: 12,
          temperature: 0,
        });
        assert.equal(r.status, 200);
        const b = await r.json();
        assert.equal(b.object, "text_completion");
        assert.equal(b.choices[0].text, greedyText);
        assert.deepEqual(b.usage, {
          prompt_tokens: b.usage.prompt_tokens,
          completion_tokens: greedyTokens.length,
          total_tokens: b.usage.prompt_tokens + greedyTokens.length,
          prompt_tokens_details: { cached_tokens: b.usage.prompt_tokens_details.cached_tokens },
        });
        const s = await post(`${url}/v1/completions`, {
          prompt: "The cat sat on",
          max_tokens: 12,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
        });
        const ev = await events(s);
        assert.equal(ev.at(-1)!.data, "[DONE]");
        const chunks = ev.slice(0, -1).map((e) => JSON.parse(e.data));
        assert.equal(chunks.map((c) => c.choices[0]?.text ?? "").join(""), greedyText);
        const usage = chunks.at(-1);
        assert.deepEqual(usage.choices, []);
        assert.equal(usage.usage.completion_tokens, greedyTokens.length);
        assert.ok(["stop", "length"].includes(chunks.at(-2).choices[0].finish_reason));
      });

      await t.step("POST /v1/chat/completions: JSON and SSE chunks", async () => {
        const req = {
          model: "od-moe",
          messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello" }],
          max_tokens: 6,
          temperature: 0,
        };
        const b = await (await post(`${url}/v1/chat/completions`, req)).json();
        assert.equal(b.object, "chat.completion");
        assert.equal(b.choices[0].message.role, "assistant");
        assert.equal(typeof b.choices[0].message.content, "string");
        assert.equal(b.usage.total_tokens, b.usage.prompt_tokens + b.usage.completion_tokens);
        const ev = await events(await post(`${url}/v1/chat/completions`, { ...req, stream: true }));
        assert.equal(ev.at(-1)!.data, "[DONE]");
        const chunks = ev.slice(0, -1).map((e) => JSON.parse(e.data));
        assert.equal(chunks[0].object, "chat.completion.chunk");
        assert.equal(chunks[0].choices[0].delta.role, "assistant");
        const text = chunks.map((c) => c.choices[0].delta.content ?? "").join("");
        assert.equal(text, b.choices[0].message.content);
        assert.equal(chunks.at(-1).choices[0].finish_reason, b.choices[0].finish_reason);
      });

      await t.step(
        "queue: served in arrival order; full queue → 503 with Retry-After",
        async () => {
          const started: Promise<{ i: number; at: number }>[] = [];
          for (let i = 0; i < 3; i++) {
            const before = server.inFlight;
            started.push(
              // the first runs long enough for the others to queue behind it
              post(`${url}/generate`, {
                prompt: `q${i}`,
                max_tokens: i === 0 ? 60 : 4,
                temperature: 0,
              })
                .then(async (r) => {
                  assert.equal(r.status, 200);
                  await r.body?.cancel();
                  return { i, at: performance.now() };
                }),
            );
            await until(`request ${i} admitted`, () => server.inFlight === before + 1);
          }
          // one running, two waiting = --max-queue 2: the next is refused at once
          const full = await post(`${url}/generate`, { prompt: "x", max_tokens: 2 });
          assert.equal(full.status, 503);
          const retry = Number(full.headers.get("retry-after"));
          assert.ok(Number.isInteger(retry) && retry >= 1, `Retry-After ${retry}`);
          const err = await full.json();
          assert.match(err.error.message, /queue is full/);
          const done = await Promise.all(started);
          const order = [...done].sort((a, b) => a.at - b.at).map((d) => d.i);
          assert.deepEqual(order, [0, 1, 2]);
          const m = await (await fetch(`${url}/metrics`)).json();
          assert.equal(m.requests.rejected_queue_full, 1);
        },
      );

      await t.step("usage counts the prompt however the generation ends", async () => {
        const plain = await (await post(`${url}/v1/completions`, {
          prompt: "The cat sat on",
          max_tokens: 12,
          temperature: 0,
        })).json();
        const n = plain.usage.prompt_tokens;
        assert.ok(n > 0);
        // a stop string ends it (the text of the plain run's third token on)
        const stop = plain.choices[0].text.slice(2, 5);
        const cut = await (await post(`${url}/v1/completions`, {
          prompt: "The cat sat on",
          max_tokens: 12,
          temperature: 0,
          stop: [stop],
        })).json();
        assert.equal(cut.usage.prompt_tokens, n, "stop string: prompt tokens");
        assert.equal(cut.choices[0].finish_reason, "stop");
        const ev = await events(
          await post(`${url}/v1/chat/completions`, {
            messages: [{ role: "user", content: "Hi" }],
            max_tokens: 12,
            temperature: 0,
            stop: [stop],
            stream: true,
            stream_options: { include_usage: true },
          }),
        );
        const usage = JSON.parse(ev.at(-2)!.data).usage;
        assert.ok(usage.prompt_tokens > 0, JSON.stringify(usage));
        assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
        const g = await (await post(`${url}/generate`, {
          prompt: "The cat sat on",
          max_tokens: 12,
          temperature: 0,
          stop: [stop],
        })).json();
        assert.equal(g.stats.prompt_tokens, n);
      });
    } finally {
      await server.close();
    }
  },
});

/** Statistics of a generation that produced nothing (for a stand-in stream). */
function emptyStats(finishReason: "stop" | "length" | "cancelled"): GenerationStats {
  return {
    promptTokens: 1,
    cachedTokens: 0,
    completionTokens: 1,
    prefillMs: 0,
    decodeMs: 0,
    prefillTokensPerSecond: 0,
    decodeTokensPerSecond: 0,
    syncsPerToken: 0,
    submitsPerToken: 0,
    stalls: 0,
    expertLookups: 0,
    expertHits: 0,
    expertMisses: 0,
    cacheHitRate: 1,
    expertBytesUploaded: 0,
    finishReason,
  };
}

gpuTest({
  name:
    "server: a client that disconnects stops its generation; a queued one leaves the queue at once",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await demo();
    const server = await startServer({ port: 0, engineOptions: { model, nCtx: 512 } });
    const { url } = server;
    const engine = server.engine;
    const cancelled = async () =>
      (await (await fetch(`${url}/metrics`)).json()).generations.by_finish_reason.cancelled ?? 0;
    try {
      // a real generation, streaming: read one chunk, then hang up. Greedy, with a prompt whose
      // greedy continuation is known to run its 200 tokens, so it cannot end by itself first
      let long: string | undefined;
      for (const prompt of ["Long story:", "Once upon a time", "1, 2, 3,", "The the the"]) {
        const g = await (await post(`${url}/generate`, {
          prompt,
          max_tokens: 200,
          temperature: 0,
        })).json();
        if (g.finish_reason === "length") {
          long = prompt;
          break;
        }
      }
      assert.ok(long, "no candidate prompt runs 200 greedy tokens on the demo model: add one");
      const before = await cancelled();
      const ac = new AbortController();
      const r = await post(`${url}/generate`, {
        prompt: long,
        max_tokens: 200,
        temperature: 0,
        stream: true,
      }, { signal: ac.signal });
      const it = readSse(r.body!);
      await it.next();
      ac.abort();
      await it.return(undefined).catch(() => {});
      await until("the stream's generation to stop", () => engine.pending === 0, 10_000);
      await until("its cancellation counted", () => server.inFlight === 0);
      assert.equal(await cancelled(), before + 1, "the hung-up stream ended as cancelled");
      // a generation held running until released, and one queued behind it
      let release!: () => void;
      const held = new Promise<void>((r) => release = r);
      const real = engine.streamGenerate;
      engine.streamGenerate = async function* (req) {
        yield { text: "x", tokens: [1] };
        const aborted = new Promise<void>((r) => req.signal?.addEventListener("abort", () => r()));
        await Promise.race([held, aborted]);
        return emptyStats(req.signal?.aborted ? "cancelled" : "length");
      };
      try {
        const ac2 = new AbortController();
        const r2 = await post(`${url}/generate`, { prompt: "A", max_tokens: 50, stream: true }, {
          signal: ac2.signal,
        });
        const it2 = readSse(r2.body!);
        await it2.next(); // it runs
        const ac3 = new AbortController();
        const p3 = post(`${url}/generate`, { prompt: "B", max_tokens: 50 }, { signal: ac3.signal })
          .catch((e) => e);
        await until("queued", () => server.inFlight === 2 && engine.pending === 2);
        ac3.abort();
        await p3;
        // the running one is held: only the queued one can have left
        await until("the queued request to leave the queue", () => server.inFlight === 1, 3000);
        assert.equal(engine.pending, 1);
        ac2.abort();
        await it2.return(undefined).catch(() => {});
        await until("the held generation to stop", () => server.inFlight === 0, 3000);
        release();
      } finally {
        engine.streamGenerate = real;
      }
      // the next request is served at once, and all three cancellations were counted
      const ok = await post(`${url}/generate`, { prompt: "next", max_tokens: 4 });
      assert.equal(ok.status, 200);
      assert.equal((await ok.json()).tokens.length > 0, true);
      const t0 = performance.now();
      while ((await cancelled()) < before + 3) {
        assert.ok(performance.now() - t0 < 3000, `cancelled: ${await cancelled()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const m = await (await fetch(`${url}/metrics`)).json();
      assert.equal(m.generations.by_finish_reason.cancelled, before + 3);
      assert.ok(m.generations.prompt_tokens > 0);
    } finally {
      await server.close();
    }
  },
});

/** An expert source that fails on demand. */
class FlakySource implements ExpertSource {
  fail = false;
  constructor(readonly inner: GgufExpertSource) {}
  get layers() {
    return this.inner.layers;
  }
  expertParts(layer: number, expert: number): Uint8Array[] {
    if (this.fail) {
      throw new ExpertReadError(this.inner.paths[0]!, layer, expert, undefined, "injected failure");
    }
    return this.inner.expertParts(layer, expert);
  }
  close(): void {
    this.inner.close();
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

gpuTest({
  name: "server: loading state, failing expert reads (500, stays up), shutdown",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const model = await demo();
    const source = GgufExpertSource.open(model);
    const flaky = new FlakySource(source);
    let open!: () => void;
    const gate = new Promise<void>((r) => open = r);
    const server = await startServer({
      port: 0,
      waitForModel: false,
      load: async () => {
        await gate;
        // budget 0: experts stream through the pool, so reads happen per token
        return await Engine.load({ model, nCtx: 256, cacheSizeGB: 0, expertSource: flaky });
      },
    });
    const { url } = server;
    try {
      await t.step("while loading: /health 503 loading, generation 503", async () => {
        const h = await fetch(`${url}/health`);
        assert.equal(h.status, 503);
        assert.equal((await h.json()).status, "loading");
        const g = await post(`${url}/generate`, { prompt: "x", max_tokens: 1 });
        assert.equal(g.status, 503);
        assert.ok(g.headers.get("retry-after"));
        await g.body?.cancel();
        const m = await fetch(`${url}/metrics`);
        assert.equal(m.status, 200);
        assert.equal((await m.json()).model, null);
        open();
        await server.ready;
        assert.equal((await fetch(`${url}/health`)).status, 200);
      });

      await t.step(
        "a failing expert read: 500 naming the expert; the server stays up",
        async () => {
          flaky.fail = true;
          const r = await post(`${url}/generate`, { prompt: "Hello there", max_tokens: 4 });
          assert.equal(r.status, 500);
          const b = await r.json();
          assert.match(b.error.message, /expert \d+ of layer \d+/);
          assert.match(b.error.message, /injected failure/);
          assert.equal(b.error.type, "expert_read_error");
          // streaming: the headers went out, so the error is an event
          const s = await post(`${url}/generate`, { prompt: "Hello", max_tokens: 4, stream: true });
          const ev = await events(s);
          assert.equal(ev.at(-1)!.event, "error");
          assert.match(JSON.parse(ev.at(-1)!.data).error.message, /injected failure/);
          assert.equal((await fetch(`${url}/health`)).status, 200);
          flaky.fail = false;
          const ok = await post(`${url}/generate`, { prompt: "Hello there", max_tokens: 4 });
          assert.equal(ok.status, 200);
          assert.equal((await ok.json()).tokens.length > 0, true);
          const m = await (await fetch(`${url}/metrics`)).json();
          assert.ok(m.experts.misses > 0, "experts streamed");
          assert.equal(m.generations.by_finish_reason.error, 2);
          // the stream's 200 went out before it failed: it is counted as the 500 it was
          assert.equal(m.requests.by_status["500"], 2, JSON.stringify(m.requests.by_status));
        },
      );

      await t.step("close(): running generations cancelled after the grace period", async () => {
        const r = await post(`${url}/generate`, { prompt: "Go", max_tokens: 200, stream: true });
        const it = readSse(r.body!);
        await it.next();
        // an OpenAI stream queued behind it ends with an error, not a non-OpenAI finish reason
        const chat = post(`${url}/v1/chat/completions`, {
          messages: [{ role: "user", content: "Hi" }],
          max_tokens: 50,
          stream: true,
        }).then(events);
        await until("the chat request queued", () => server.inFlight === 2);
        const t0 = performance.now();
        const closing = server.close({ graceMs: 100 });
        const rest: SseEvent[] = [];
        for (;;) {
          const e = await it.next();
          if (e.done) break;
          rest.push(e.value);
        }
        await closing;
        assert.ok(performance.now() - t0 < 5000);
        const done = rest.at(-1)!;
        assert.equal(done.event, "done");
        assert.equal(JSON.parse(done.data).finish_reason, "cancelled");
        assert.ok(JSON.parse(done.data).stats.prompt_tokens > 0, "a cancelled prompt is counted");
        const chatEvents = await chat;
        assert.equal(chatEvents.at(-1)!.data, "[DONE]");
        const last = JSON.parse(chatEvents.at(-2)!.data);
        assert.match(last.error.message, /shutting down/);
        assert.ok(!chatEvents.some((e) => e.data.includes('"cancelled"')));
        await assert.rejects(() => fetch(`${url}/health`));
      });
    } finally {
      open();
      await server.close();
    }
  },
});

/**
 * Runs `deno task serve ARGS` on a free port, waits until /health says ok,
 * calls `fn` with the URL, then sends SIGTERM and checks the exit code is 0.
 * Returns stderr.
 */
async function serve(args: string[], fn: (url: string) => Promise<void>): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "serve", "--port", "0", ...args],
    cwd: REPO,
    env: { XDG_CACHE_HOME: CACHE, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  let url = "";
  try {
    const t0 = performance.now();
    while (!url) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`serve exited early:\n${out}\n${await stderr}`);
      out += value;
      url = /listening on (http:\/\/\S+)/.exec(out)?.[1] ?? "";
      if (performance.now() - t0 > 60_000) throw new Error("serve did not listen");
    }
    for (;;) {
      const h = await fetch(`${url}/health`);
      await h.body?.cancel();
      if (h.status === 200) break;
      assert.equal(h.status, 503, "loading");
      await new Promise((r) => setTimeout(r, 100));
    }
    await fn(url);
    child.kill("SIGTERM");
    const status = await child.status;
    const err = await stderr;
    assert.equal(status.code, 0, `exit ${status.code}:\n${err}`);
    assert.match(err, /SIGTERM/);
    assert.doesNotMatch(err, /legacy behavior/);
    return err;
  } finally {
    lines.releaseLock();
    await child.stdout.cancel().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  }
}

gpuTest({
  name: "server: `deno task serve` with no flags serves the trained demo model, streaming its " +
    "experts from the first request; SIGTERM exits 0",
  sanitizeResources: false,
  async fn() {
    await serve(["--ctx-size", "256"], async (url) => {
      // the README's example, as curl sends it
      const r = await fetch(`${url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: '{"prompt": "And God said", "max_tokens": 24}',
      });
      assert.equal(r.status, 200);
      const b = await r.json();
      assert.equal(typeof b.text, "string");
      assert.ok(b.stats.completion_tokens > 0);
      assert.ok(b.stats.expert_loads > 0, "experts load on the first request (budget < experts)");
      const models = await (await fetch(`${url}/v1/models`)).json();
      assert.equal(models.data[0].id, "od-moe KJV demo MoE");
    });
  },
});

gpuTest({
  name: "server: `deno task serve --base-weights --expert-dir` serves converter output",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await demo();
    const req = { prompt: "Hello there", max_tokens: 6, temperature: 0 };
    const ref = await startServer({ port: 0, engineOptions: { model, nCtx: 256 } });
    let want: number[];
    try {
      want = (await (await post(`${ref.url}/generate`, req)).json()).tokens;
    } finally {
      await ref.close();
    }
    const dir = await Deno.makeTempDir();
    try {
      const conv = await new Deno.Command(Deno.execPath(), {
        args: ["task", "convert", "--input", model, "--output", `${dir}/out`],
        cwd: REPO,
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(conv.code, 0, new TextDecoder().decode(conv.stderr));
      await serve([
        "--ctx-size",
        "256",
        "--base-weights",
        `${dir}/out/base_model`,
        "--expert-dir",
        `${dir}/out/experts`,
        "--cache-size-gb",
        "0",
      ], async (url) => {
        const b = await (await post(`${url}/generate`, req)).json();
        assert.deepEqual(b.tokens, want, "converter output gives the GGUF's tokens");
        assert.ok(b.stats.expert_loads > 0, "experts streamed from the expert directory");
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "server: `deno task serve` with a wrong path exits 2 naming the flag",
  async fn() {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["task", "serve", "--model", "/nonexistent/m.gguf"],
      cwd: REPO,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 2, err);
    assert.match(err, /--model: no such file or directory: \/nonexistent\/m\.gguf/);
  },
});

gpuTest({
  name: "server: with experts streaming and prefetch on, /metrics reports the prefetcher",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await ensureDemoModel();
    const server = await startServer({
      port: 0,
      prefetchEnabled: true,
      engineOptions: { model, nCtx: 256, maxBatch: 4, cacheSizeGB: 0, enablePrefetch: true },
    });
    try {
      const r = await fetch(`${server.url}/generate`, {
        method: "POST",
        body: JSON.stringify({ prompt: "Hello there", max_tokens: 8, temperature: 0 }),
      });
      assert.equal(r.status, 200, await r.clone().text());
      const body = await r.json();
      assert.equal(body.tokens.length, 8);
      assert.ok(body.stats.expert_loads > 0, "minimum mode streams experts");
      const m = await (await fetch(`${server.url}/metrics`)).json();
      assert.equal(m.prefetch_enabled, true);
      assert.equal(m.prefetch.predictor, "lookahead");
      assert.ok(m.prefetch.uploads > 0, JSON.stringify(m.prefetch));
      assert.ok(m.prefetch_accuracy >= 0 && m.prefetch_accuracy <= 1);
      assert.ok(Array.isArray(m.prefetch.recall_by_distance));
      const prom = await (await fetch(`${server.url}/metrics?format=prometheus`)).text();
      assert.match(prom, /odmoe_prefetch_accuracy_ratio [\d.]+/);
    } finally {
      await server.close();
    }
  },
});

gpuTest({
  name:
    "server: a budget below the experts' bytes with prefetch on: prefetch runs and is accurate, the cap holds",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await ensureDemoModel();
    const layout = expertLayout(readGgufModel(model));
    const total = layout.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0);
    const budget = Math.floor(total / 4);
    const server = await startServer({
      port: 0,
      prefetchEnabled: true,
      engineOptions: {
        model,
        nCtx: 256,
        cacheSizeGB: budget / 2 ** 30,
        enablePrefetch: true,
      },
    });
    try {
      const r = await fetch(`${server.url}/generate`, {
        method: "POST",
        body: JSON.stringify({
          prompt: "Hello there, how are you",
          max_tokens: 12,
          temperature: 0,
        }),
      });
      assert.equal(r.status, 200, await r.clone().text());
      await r.json();
      const m = await (await fetch(`${server.url}/metrics`)).json();
      assert.ok(m.prefetch, "the prefetcher runs when the experts exceed the budget");
      assert.ok(m.prefetch.uploads > 0, JSON.stringify(m.prefetch));
      assert.ok(m.prefetch_accuracy > 0, `prefetch accuracy ${m.prefetch_accuracy}`);
      assert.equal(m.experts.budget_bytes, budget);
      assert.equal(m.experts.requested_budget_bytes, budget);
      assert.ok(m.experts.peak_bytes <= budget, `peak ${m.experts.peak_bytes} > ${budget}`);
      assert.ok(m.experts.allocated_bytes <= budget);
    } finally {
      await server.close();
    }
  },
});
