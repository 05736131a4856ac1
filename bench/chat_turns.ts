/**
 * Time to first token per turn of a multi-turn chat, with prefix reuse
 * (`cache_prompt: true`, the default) and without (`cache_prompt: false`):
 * each turn sends the whole conversation, as chat clients do. Without reuse
 * the whole conversation is processed again each turn, so the first token
 * comes later every turn; with it only the new turn is.
 *
 * ```sh
 * deno run -A --unstable-no-legacy-abort bench/chat_turns.ts [--turns 10] [--max-tokens 16]
 *   [--words 40] [--url http://127.0.0.1:8080 [--api-key KEY]]
 * ```
 *
 * Without `--url` the server runs in this process on a free port with the
 * demo model. Requests go to `/generate` with `messages` and `stream: true`;
 * time to first token is from sending the request to the first chunk that
 * carries a token, and the server's `prefill_ms` and `cached_tokens` come
 * from the stream's `done` event. Both runs are greedy, so they see the
 * same replies and prompts. Progress goes to stderr, one JSON report to
 * stdout.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type RunningServer, startServer } from "../src/server/app.ts";
import { readSse } from "../src/server/sse.ts";
import { intFlag, note, roundNumbers } from "./_util.ts";

/** Options of {@linkcode runChatTurnsBench}. */
export interface ChatTurnsOptions {
  /** Turns of the chat. */
  turns: number;
  /** `max_tokens` of each reply. */
  maxTokens: number;
  /** Words in each user message. */
  words: number;
  /** A running server instead of an in-process one. */
  url?: string;
  /** Its API key. */
  apiKey?: string;
}

/** One turn as measured. */
export interface TurnResult {
  /** 1-based turn. */
  turn: number;
  /** Prompt tokens (the whole conversation so far). */
  promptTokens: number;
  /** Of which reused from the previous request. */
  cachedTokens: number;
  /** Request sent → first token received, ms. */
  ttftMs: number;
  /** The server's prefill time, ms. */
  prefillMs: number;
}

const WORDS = (
  "the river runs past the old mill where children play under tall trees while clouds " +
  "drift over green hills and a small dog chases birds along the stone wall near the bridge"
).split(" ");

/** The user message of turn `i`: `n` words, different every turn. */
function userMessage(i: number, n: number): string {
  const out: string[] = [];
  for (let k = 0; k < n; k++) out.push(WORDS[(i * 7 + k * 3) % WORDS.length]!);
  return `Turn ${i + 1}: ${out.join(" ")}.`;
}

/** One chat of `o.turns` turns; returns each turn's measurements. */
async function chat(url: string, o: ChatTurnsOptions, cachePrompt: boolean): Promise<TurnResult[]> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (o.apiKey) headers.authorization = `Bearer ${o.apiKey}`;
  const messages: { role: string; content: string }[] = [
    // each run its own system prompt: its turn 1 finds nothing of the other run's chat to reuse
    {
      role: "system",
      content: `${cachePrompt ? "Reuse" : "Fresh"} run. You are a helpful assistant.`,
    },
  ];
  const results: TurnResult[] = [];
  for (let i = 0; i < o.turns; i++) {
    messages.push({ role: "user", content: userMessage(i, o.words) });
    const t0 = performance.now();
    const r = await fetch(`${url}/generate`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        messages,
        max_tokens: o.maxTokens,
        temperature: 0,
        stream: true,
        cache_prompt: cachePrompt,
      }),
    });
    if (r.status !== 200) throw new Error(`turn ${i + 1}: ${r.status} ${await r.text()}`);
    let first = 0;
    let text = "";
    let stats: Record<string, number> | undefined;
    for await (const e of readSse(r.body!)) {
      const d = JSON.parse(e.data);
      if (e.event === "error") throw new Error(`turn ${i + 1}: ${e.data}`);
      if (e.event === "done") {
        stats = d.stats;
        continue;
      }
      if (!first && d.tokens?.length > 0) first = performance.now();
      text += d.text ?? "";
    }
    if (!stats) throw new Error(`turn ${i + 1}: the stream ended without its done event`);
    results.push({
      turn: i + 1,
      promptTokens: stats.prompt_tokens!,
      cachedTokens: stats.cached_tokens!,
      ttftMs: (first || performance.now()) - t0,
      prefillMs: stats.prefill_ms!,
    });
    note(
      `chat_turns: ${cachePrompt ? "reuse" : "no reuse"} turn ${i + 1}: ` +
        `${stats.prompt_tokens} prompt tokens (${stats.cached_tokens} cached), ` +
        `TTFT ${results[i]!.ttftMs.toFixed(0)} ms`,
    );
    messages.push({ role: "assistant", content: text });
  }
  return results;
}

/** Runs the chat without reuse, then with it; returns the JSON report. */
export async function runChatTurnsBench(o: ChatTurnsOptions): Promise<Record<string, unknown>> {
  let server: RunningServer | undefined;
  let url = o.url;
  if (!url) {
    server = await startServer({ port: 0 });
    url = server.url;
  }
  try {
    // warm up: shader compilation is not a turn
    await chat(url, { ...o, turns: 1 }, false);
    const without = await chat(url, o, false);
    const withReuse = await chat(url, o, true);
    const growth = (rs: TurnResult[]) => rs[rs.length - 1]!.ttftMs / rs[0]!.ttftMs;
    return roundNumbers({
      bench: "chat_turns",
      server: server ? "in-process (demo model)" : url,
      turns: o.turns,
      maxTokens: o.maxTokens,
      words: o.words,
      withoutReuse: without,
      withReuse,
      /** Last turn's TTFT over the first's: grows without reuse, stays near 1 with it. */
      ttftGrowth: { withoutReuse: growth(without), withReuse: growth(withReuse) },
      lastTurnSpeedup: without[without.length - 1]!.ttftMs /
        withReuse[withReuse.length - 1]!.ttftMs,
    });
  } finally {
    await server?.close();
  }
}

/** The one-line summary of a report. */
export function chatTurnsSummary(r: Record<string, unknown>): string {
  const ttfts = (k: string) => (r[k] as TurnResult[]).map((t) => t.ttftMs.toFixed(0)).join(" ");
  const g = r.ttftGrowth as { withoutReuse: number; withReuse: number };
  return `chat_turns: TTFT per turn (ms) without reuse ${ttfts("withoutReuse")}; ` +
    `with reuse ${ttfts("withReuse")}; last/first ${g.withoutReuse} vs ${g.withReuse}`;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      turns: { type: "string" },
      "max-tokens": { type: "string" },
      words: { type: "string" },
      url: { type: "string" },
      "api-key": { type: "string" },
    },
    strict: true,
  });
  const report = await runChatTurnsBench({
    turns: intFlag("turns", v.turns, 10),
    maxTokens: intFlag("max-tokens", v["max-tokens"], 16),
    words: intFlag("words", v.words, 40),
    url: v.url,
    apiKey: v["api-key"],
  });
  note(chatTurnsSummary(report));
  console.log(JSON.stringify(report, null, 2));
}
