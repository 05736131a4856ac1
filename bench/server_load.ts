/**
 * Load on the HTTP server: N concurrent clients send generation requests
 * for a bounded time over loopback; prints requests/s, latency p50/p95,
 * errors by status and the server's RSS before and after. The reference in
 * the same run is one client alone for a quarter of the time: with one
 * model serving requests in order, N clients should get about the same
 * requests/s (ratio ≈ 1) at about N times the latency.
 *
 * ```sh
 * deno run -A --unstable-no-legacy-abort bench/server_load.ts [--clients 8] [--duration 20]
 *   [--max-tokens 8] [--endpoint generate|chat|completions] [--stream] [--max-queue 16]
 *   [--url http://127.0.0.1:8080 [--pid PID] [--api-key KEY]]
 * ```
 *
 * Without `--url` the server runs in this process on a free port with the
 * demo model (RSS is then this process's); with `--url` it measures a
 * running server (RSS from `/proc/PID/status` when `--pid` is given).
 *
 * `--sweep` measures continuous batching instead, in one run: for
 * `--parallel 1` and `--parallel 8` (an in-process server with the model
 * `deno task serve` runs by default: the trained demo, experts streaming
 * through a third of their bytes unless `--cache-size-gb` says otherwise),
 * tokens/s, requests/s and latency percentiles at 1, 4, 8 and 16 clients,
 * then a 10-turn chat's time to first token per turn with and without
 * prefix reuse (`./chat_turns.ts`); a table goes to
 * `bench/out/server_load.md`:
 *
 * ```sh
 * deno run -A --unstable-no-legacy-abort bench/server_load.ts --sweep [--duration 20]
 *   [--max-tokens 32] [--cache-size-gb GB]
 * ```
 * Progress goes to stderr, one JSON report to stdout. A client that gets
 * 503 (queue full) waits as its `Retry-After` says before its next request.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type RunningServer, startServer } from "../src/server/app.ts";
import { readSse } from "../src/server/sse.ts";
import { note, roundNumbers, writeTextFileMkdir } from "./_util.ts";
import { Engine } from "../src/generate/engine.ts";
import { ensureDemoModel, trainedDemoModel } from "../src/server/demo.ts";
import { runChatTurnsBench } from "./chat_turns.ts";

/** Options of {@linkcode runServerLoadBench}. */
export interface ServerLoadOptions {
  /** Concurrent clients. */
  clients: number;
  /** Seconds of load (the one-client reference runs a quarter of it first). */
  durationS: number;
  /** `max_tokens` of each request. */
  maxTokens: number;
  /** Which endpoint to load. */
  endpoint: "generate" | "chat" | "completions";
  /** Stream responses (SSE) and read them to the end. */
  stream: boolean;
  /** `--max-queue` of the in-process server. */
  maxQueue: number;
  /** A running server instead of an in-process one. */
  url?: string;
  /** Its process id, for RSS. */
  pid?: number;
  /** Its API key. */
  apiKey?: string;
}

/** One phase's results. */
export interface LoadPhase {
  /** Concurrent clients. */
  clients: number;
  /** Seconds from the first request to the last response. */
  seconds: number;
  /** Requests answered 200. */
  ok: number;
  /** Successful requests per second. */
  requestsPerSecond: number;
  /** Generated tokens per second (from the responses' usage/stats). */
  tokensPerSecond: number;
  /** Latency of successful requests, ms. */
  latencyMs: { p50: number; p95: number; max: number };
  /** Non-200 answers and network failures, by status (`"network"` for the latter). */
  errors: Record<string, number>;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

function rssOf(pid: number | undefined): number | null {
  if (pid === undefined) return Deno.memoryUsage().rss;
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = /VmRSS:\s+(\d+) kB/.exec(s)?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

function requestFor(o: ServerLoadOptions, client: number, n: number): [string, unknown] {
  const text = `Client ${client}, request ${n}: tell me a story about`;
  const common = { max_tokens: o.maxTokens, stream: o.stream, seed: client * 1000 + n };
  const openai = {
    model: "x",
    ...common,
    ...(o.stream ? { stream_options: { include_usage: true } } : {}),
  };
  switch (o.endpoint) {
    case "generate":
      return ["/generate", { prompt: text, ...common }];
    case "completions":
      return ["/v1/completions", { prompt: text, ...openai }];
    case "chat":
      return ["/v1/chat/completions", { messages: [{ role: "user", content: text }], ...openai }];
  }
}

/** Tokens generated, from a response body (JSON or SSE). */
async function consume(r: Response, o: ServerLoadOptions): Promise<number> {
  if (!o.stream) {
    const b = await r.json();
    return b.stats?.completion_tokens ?? b.usage?.completion_tokens ?? 0;
  }
  let tokens = 0;
  for await (const e of readSse(r.body!)) {
    if (e.data === "[DONE]") continue;
    const d = JSON.parse(e.data);
    if (e.event === "done") tokens = d.stats.completion_tokens;
    else if (d.usage) tokens = d.usage.completion_tokens;
  }
  return tokens;
}

async function phase(url: string, o: ServerLoadOptions, clients: number, seconds: number) {
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  let tokens = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (o.apiKey) headers.authorization = `Bearer ${o.apiKey}`;
  const client = async (c: number) => {
    for (let n = 0; performance.now() < end; n++) {
      const [path, body] = requestFor(o, c, n);
      const t = performance.now();
      try {
        const r = await fetch(`${url}${path}`, {
          method: "POST",
          headers,
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(120_000),
        });
        if (r.status === 200) {
          const n = await consume(r, o); // not `tokens += await …`: that loses other clients' adds
          tokens += n;
          latencies.push(performance.now() - t);
        } else {
          await r.body?.cancel();
          errors[r.status] = (errors[r.status] ?? 0) + 1;
          if (r.status === 503) {
            // a polite client: wait as told (Retry-After, seconds), not past the deadline
            const wait = Number(r.headers.get("retry-after") ?? "1") * 1000;
            const left = end - performance.now();
            await new Promise((res) => setTimeout(res, Math.max(0, Math.min(wait || 1000, left))));
          }
        }
      } catch {
        errors.network = (errors.network ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
  const s = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    clients,
    seconds: s,
    ok: latencies.length,
    requestsPerSecond: latencies.length / s,
    tokensPerSecond: tokens / s,
    latencyMs: {
      p50: percentile(latencies, 0.5),
      p95: percentile(latencies, 0.95),
      max: latencies.at(-1) ?? 0,
    },
    errors,
  } satisfies LoadPhase;
}

/** Runs the reference (one client) and the load phase; returns the JSON report. */
export async function runServerLoadBench(o: ServerLoadOptions): Promise<Record<string, unknown>> {
  let server: RunningServer | undefined;
  let url = o.url;
  if (!url) {
    server = await startServer({ port: 0, maxQueue: o.maxQueue });
    url = server.url;
  }
  try {
    // warm up: shader compilation and the first upload are not load
    const [path, body] = requestFor({ ...o, stream: false }, 0, -1);
    const headers: Record<string, string> = o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {};
    const w = await fetch(`${url}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
    if (w.status !== 200) throw new Error(`warm-up request: ${w.status} ${await w.text()}`);
    await w.body?.cancel();
    const rssBefore = rssOf(server ? undefined : o.pid);
    note(`server_load: reference, 1 client for ${(o.durationS / 4).toFixed(1)} s …`);
    const ref = await phase(url, o, 1, o.durationS / 4);
    note(`server_load: ${o.clients} clients for ${o.durationS} s …`);
    const load = await phase(url, o, o.clients, o.durationS);
    const rssAfter = rssOf(server ? undefined : o.pid);
    const metrics = await (await fetch(`${url}/metrics`, { headers })).json();
    return roundNumbers({
      bench: "server_load",
      server: server ? "in-process (demo model)" : url,
      endpoint: o.endpoint,
      stream: o.stream,
      maxTokens: o.maxTokens,
      reference: ref,
      load,
      ratio: {
        requestsPerSecond: ref.requestsPerSecond > 0
          ? load.requestsPerSecond / ref.requestsPerSecond
          : null,
        latencyP50: ref.latencyMs.p50 > 0 ? load.latencyMs.p50 / ref.latencyMs.p50 : null,
      },
      rssBytes: { before: rssBefore, after: rssAfter },
      serverMetrics: {
        tokens_per_second: metrics.tokens_per_second,
        cache_hit_rate: metrics.cache_hit_rate,
        rejected_queue_full: metrics.requests?.rejected_queue_full,
      },
    });
  } finally {
    await server?.close();
  }
}

/** Options of {@linkcode runParallelSweep}. */
export interface ParallelSweepOptions {
  /** Client counts to load each server with. */
  clients: readonly number[];
  /** `--parallel` values to compare (the first is the reference). */
  parallel: readonly number[];
  /** Seconds per phase. */
  durationS: number;
  /** `max_tokens` of each request. */
  maxTokens: number;
  /** Expert budget, GiB; default the demo's serve default (a third of its experts). */
  cacheSizeGB?: number;
  /** Turns of the chat (0: no chat). */
  chatTurns: number;
}

/**
 * Each `--parallel` value's throughput and latency at each client count, and
 * its chat's time to first token per turn, on in-process servers.
 */
export async function runParallelSweep(o: ParallelSweepOptions): Promise<Record<string, unknown>> {
  const demo = trainedDemoModel();
  const model = demo?.path ?? await ensureDemoModel({ log: note });
  const cacheSizeGB = o.cacheSizeGB ?? demo?.cacheSizeGB ?? 4;
  const load: ServerLoadOptions = {
    clients: 1,
    durationS: o.durationS,
    maxTokens: o.maxTokens,
    endpoint: "completions",
    stream: false,
    maxQueue: 64,
  };
  const runs: Record<string, unknown>[] = [];
  for (const parallel of o.parallel) {
    const server = await startServer({
      port: 0,
      maxQueue: 64,
      // a context long enough for the chat's ten turns (the trained demo was trained at 256)
      load: () =>
        Engine.load({ model, cacheSizeGB, parallel, nCtx: 1024, enablePrefetch: cacheSizeGB < 4 }),
    });
    try {
      await server.ready;
      // warm up: shader compilation and the first uploads are not load
      await phase(server.url, load, Math.min(parallel, 4), 2);
      const phases: LoadPhase[] = [];
      for (const clients of o.clients) {
        note(`server_load: --parallel ${parallel}, ${clients} clients for ${o.durationS} s …`);
        phases.push(await phase(server.url, load, clients, o.durationS));
        const p = phases[phases.length - 1]!;
        note(
          `server_load:   ${p.tokensPerSecond.toFixed(1)} tokens/s, ${
            p.requestsPerSecond.toFixed(2)
          } req/s, p50 ${p.latencyMs.p50.toFixed(0)} ms, p95 ${p.latencyMs.p95.toFixed(0)} ms`,
        );
      }
      const chat = o.chatTurns > 0
        ? await runChatTurnsBench({ turns: o.chatTurns, maxTokens: 16, words: 40, url: server.url })
        : undefined;
      runs.push({ parallel, phases, chat });
    } finally {
      await server.close();
    }
  }
  const ref = runs[0]!.phases as LoadPhase[];
  const ratios = runs.map((r) => ({
    parallel: r.parallel,
    tokensPerSecondVsFirst: (r.phases as LoadPhase[]).map((p, i) => ({
      clients: p.clients,
      ratio: ref[i]!.tokensPerSecond > 0 ? p.tokensPerSecond / ref[i]!.tokensPerSecond : null,
    })),
  }));
  return roundNumbers({
    bench: "server_load_sweep",
    model: model.split("/").pop(),
    cacheSizeGB,
    maxTokens: o.maxTokens,
    durationS: o.durationS,
    runs,
    ratios,
  });
}

/** The sweep's table (markdown). */
export function parallelSweepTable(r: Record<string, unknown>): string {
  const runs = r.runs as {
    parallel: number;
    phases: LoadPhase[];
    chat?: Record<string, unknown>;
  }[];
  const ref = runs[0]!.phases;
  const lines = [
    `Continuous batching on ${r.model} (expert budget ${r.cacheSizeGB} GiB), ` +
    `max_tokens ${r.maxTokens}, ${r.durationS} s per row; ratio = tokens/s over --parallel ${
      runs[0]!.parallel
    } at the same clients.`,
    "",
    "| --parallel | clients | tokens/s | ratio | req/s | p50 ms | p95 ms | errors |",
    "|---:|---:|---:|---:|---:|---:|---:|---|",
  ];
  for (const run of runs) {
    run.phases.forEach((p, i) => {
      const ratio = ref[i]!.tokensPerSecond > 0 ? p.tokensPerSecond / ref[i]!.tokensPerSecond : 0;
      lines.push(
        `| ${run.parallel} | ${p.clients} | ${p.tokensPerSecond.toFixed(1)} | ${
          ratio.toFixed(2)
        }× | ${p.requestsPerSecond.toFixed(2)} | ${p.latencyMs.p50.toFixed(0)} | ${
          p.latencyMs.p95.toFixed(0)
        } | ${JSON.stringify(p.errors)} |`,
      );
    });
  }
  for (const run of runs) {
    const c = run.chat as
      | { withoutReuse: { ttftMs: number }[]; withReuse: { ttftMs: number }[] }
      | undefined;
    if (!c) continue;
    const f = (xs: { ttftMs: number }[]) => xs.map((x) => x.ttftMs.toFixed(0)).join(", ");
    lines.push(
      "",
      `--parallel ${run.parallel}, ${c.withReuse.length}-turn chat, time to first token per turn (ms):`,
      `- without prefix reuse: ${f(c.withoutReuse)}`,
      `- with prefix reuse: ${f(c.withReuse)}`,
    );
  }
  return lines.join("\n") + "\n";
}

/** One line for humans. */
export function serverLoadSummary(r: Record<string, unknown>): string {
  const l = r.load as LoadPhase;
  const ref = r.reference as LoadPhase;
  const rss = r.rssBytes as { before: number | null; after: number | null };
  const mib = (b: number | null) => b === null ? "?" : `${(b / 2 ** 20).toFixed(0)} MiB`;
  return `server_load: ${l.clients} clients: ${l.requestsPerSecond} req/s (1 client: ${ref.requestsPerSecond}), ` +
    `p50 ${l.latencyMs.p50} ms, p95 ${l.latencyMs.p95} ms, errors ${JSON.stringify(l.errors)}, ` +
    `RSS ${mib(rss.before)} → ${mib(rss.after)}`;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      clients: { type: "string", default: "8" },
      duration: { type: "string", default: "20" },
      "max-tokens": { type: "string", default: "8" },
      endpoint: { type: "string", default: "generate" },
      stream: { type: "boolean", default: false },
      "max-queue": { type: "string", default: "16" },
      url: { type: "string" },
      pid: { type: "string" },
      "api-key": { type: "string" },
      sweep: { type: "boolean", default: false },
      "cache-size-gb": { type: "string" },
      "chat-turns": { type: "string", default: "10" },
    },
    strict: true,
  });
  if (v.sweep) {
    const report = await runParallelSweep({
      clients: [1, 4, 8, 16],
      parallel: [1, 8],
      durationS: Number(v.duration),
      maxTokens: Number(v["max-tokens"]),
      cacheSizeGB: v["cache-size-gb"] === undefined ? undefined : Number(v["cache-size-gb"]),
      chatTurns: Number(v["chat-turns"]),
    });
    const table = parallelSweepTable(report);
    await writeTextFileMkdir("bench/out/server_load.md", table);
    note(table);
    console.log(JSON.stringify(report));
    Deno.exit(0);
  }
  const endpoint = v.endpoint as ServerLoadOptions["endpoint"];
  if (!["generate", "chat", "completions"].includes(endpoint)) {
    console.error(`--endpoint must be generate, chat or completions, got ${v.endpoint}`);
    Deno.exit(2);
  }
  const num = (name: string, s: string) => {
    const n = Number(s);
    if (!(n > 0)) {
      console.error(`--${name} must be a positive number, got ${s}`);
      Deno.exit(2);
    }
    return n;
  };
  const report = await runServerLoadBench({
    clients: Math.floor(num("clients", v.clients)),
    durationS: num("duration", v.duration),
    maxTokens: Math.floor(num("max-tokens", v["max-tokens"])),
    endpoint,
    stream: v.stream,
    maxQueue: Math.floor(Number(v["max-queue"])),
    url: v.url,
    pid: v.pid === undefined ? undefined : Number(v.pid),
    apiKey: v["api-key"],
  });
  note(serverLoadSummary(report));
  console.log(JSON.stringify(report));
}
