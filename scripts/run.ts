/**
 * `deno task run`: one-shot generation (or a chat) from the terminal.
 *
 *   deno task run --prompt "And God said"     # the demo model, data/kjv-moe-Q8_0.gguf
 *   deno task run --model M.gguf --prompt "Once upon a time" [--max-tokens N] [--temperature T] [--seed S]
 *   deno task run --model M.gguf --chat
 *   deno task run --model M.gguf --prompt-ids 1,2,3 --max-tokens N --greedy --json [--logits-out FILE]
 *
 * With `--prompt-ids … --json` the last line printed is one JSON object:
 * `{"tokens": [...], "prompt_tokens": n, "decode_tokens_per_s": x, "syncs_per_token": y, ...}`.
 * Tools outside the repo depend on that contract: keep it stable.
 *
 * @module
 */

import {
  EVICTION_POLICY_NAMES,
  type EvictionPolicyName,
} from "../src/experts/policy_predictive.ts";
import { parseArgs } from "node:util";
import { loadModel, type LoadModelOptions } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { Engine } from "../src/generate/engine.ts";
import type { ChatMessage, GenerationStats, SamplingParams } from "../src/generate/types.ts";
import { trainedDemoModel } from "../src/server/demo.ts";

const USAGE =
  `usage: deno task run [--model FILE.gguf | --base-weights DIR (--expert-dir DIR | --gguf-experts FILE)]
         (--prompt TEXT | --chat | --prompt-ids 1,2,3)
         [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]
         [--seed S] [--greedy] [--json] [--logits-out FILE] [--ctx-size N] [--batch-size N]
         [--cache-size-gb GB] [--enable-prefetch] [--predictor-path FILE] [--system TEXT]
         [--eviction-policy predictive|lru|least-stale]
no model flag: the demo model data/kjv-moe-Q8_0.gguf (a small MoE trained on the King James
Bible), with a third of its experts' bytes as the expert budget (--cache-size-gb)`;

function fail(msg: string): never {
  console.error(`run: ${msg}\n${USAGE}`);
  Deno.exit(2);
}

function num(
  name: string,
  v: string | undefined,
  o: { int?: boolean; min?: number } = {},
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (
    !Number.isFinite(n) || (o.int && !Number.isInteger(n)) || (o.min !== undefined && n < o.min)
  ) {
    fail(
      `--${name} must be ${o.int ? "an integer" : "a number"}${
        o.min !== undefined ? ` ≥ ${o.min}` : ""
      }, got "${v}"`,
    );
  }
  return n;
}

async function checkPath(
  flag: string,
  path: string | undefined,
  kind: "file" | "dir",
): Promise<void> {
  if (path === undefined) return;
  try {
    const st = await Deno.stat(path);
    if (kind === "file" && !st.isFile) fail(`--${flag}: ${path} is not a file`);
    if (kind === "dir" && !st.isDirectory) fail(`--${flag}: ${path} is not a directory`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(`--${flag}: no such ${kind}: ${path}`);
    throw e;
  }
}

function statsLine(s: GenerationStats): string {
  return `[${s.promptTokens} prompt tokens at ${s.prefillTokensPerSecond.toFixed(1)} t/s, ` +
    `${s.completionTokens} generated at ${s.decodeTokensPerSecond.toFixed(1)} t/s, ` +
    `${s.syncsPerToken.toFixed(2)} syncs/token, expert hit rate ${
      (100 * s.cacheHitRate).toFixed(1)
    }%, ` +
    `finish: ${s.finishReason}]`;
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      args: Deno.args,
      options: {
        model: { type: "string" },
        "base-weights": { type: "string" },
        "expert-dir": { type: "string" },
        "gguf-experts": { type: "string" },
        prompt: { type: "string" },
        "prompt-ids": { type: "string" },
        chat: { type: "boolean" },
        system: { type: "string" },
        "max-tokens": { type: "string" },
        temperature: { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        "min-p": { type: "string" },
        "repeat-penalty": { type: "string" },
        seed: { type: "string" },
        greedy: { type: "boolean" },
        json: { type: "boolean" },
        "logits-out": { type: "string" },
        "ctx-size": { type: "string" },
        "batch-size": { type: "string" },
        "cache-size-gb": { type: "string" },
        "enable-prefetch": { type: "boolean" },
        "predictor-path": { type: "string" },
        "eviction-policy": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  if (args.help) {
    console.log(USAGE);
    return;
  }
  const modes = [args.prompt !== undefined, args["prompt-ids"] !== undefined, Boolean(args.chat)];
  if (modes.filter(Boolean).length !== 1) {
    fail("give exactly one of --prompt, --prompt-ids or --chat");
  }
  if (!args.model && !args["base-weights"]) {
    if (args["expert-dir"] || args["gguf-experts"]) fail("--base-weights is required");
    const demo = trainedDemoModel();
    if (!demo) {
      fail("--model (a GGUF) or --base-weights is required (no data/kjv-moe-Q8_0.gguf here)");
    }
    args.model = demo.path;
    args["cache-size-gb"] ??= String(demo.cacheSizeGB);
  }
  await checkPath("model", args.model, "file");
  await checkPath("base-weights", args["base-weights"], "dir");
  await checkPath("expert-dir", args["expert-dir"], "dir");
  await checkPath("gguf-experts", args["gguf-experts"], "file");
  await checkPath("predictor-path", args["predictor-path"], "file");
  const evictionPolicy = args["eviction-policy"] as EvictionPolicyName | undefined;
  if (evictionPolicy !== undefined && !EVICTION_POLICY_NAMES.includes(evictionPolicy)) {
    fail(
      `--eviction-policy must be one of ${
        EVICTION_POLICY_NAMES.join(", ")
      }, got "${evictionPolicy}"`,
    );
  }
  const load: LoadModelOptions = {
    model: args.model,
    baseWeights: args["base-weights"],
    expertDir: args["expert-dir"],
    ggufExperts: args["gguf-experts"],
    nCtx: num("ctx-size", args["ctx-size"], { int: true, min: 1 }),
    maxBatch: num("batch-size", args["batch-size"], { int: true, min: 1 }),
    cacheSizeGB: num("cache-size-gb", args["cache-size-gb"], { min: 0 }),
    enablePrefetch: args["enable-prefetch"] || args["predictor-path"] !== undefined,
    predictorPath: args["predictor-path"],
    evictionPolicy,
  };
  const maxTokens = num("max-tokens", args["max-tokens"], { int: true, min: 1 }) ??
    (args.chat ? 512 : 32);
  const sampling: SamplingParams = {
    temperature: args.greedy ? 0 : num("temperature", args.temperature, { min: 0 }),
    topK: num("top-k", args["top-k"], { int: true, min: 0 }),
    topP: num("top-p", args["top-p"], { min: 0 }),
    minP: num("min-p", args["min-p"], { min: 0 }),
    repeatPenalty: num("repeat-penalty", args["repeat-penalty"], { min: 0 }),
    seed: num("seed", args.seed, { int: true, min: 0 }),
  };

  if (args["prompt-ids"] !== undefined) {
    return await runIds(args["prompt-ids"], load, maxTokens, args);
  }
  const engine = await Engine.load(load);
  try {
    if (args.chat) return await chat(engine, maxTokens, sampling, args.system);
    const enc = new TextEncoder();
    const r = await engine.generate(
      { prompt: args.prompt!, maxTokens, sampling },
      (c) => Deno.stdout.writeSync(enc.encode(c.text)),
    );
    console.log();
    if (args.json) console.log(JSON.stringify({ text: r.text, tokens: r.tokens, stats: r.stats }));
    else console.error(statsLine(r.stats));
  } finally {
    engine.close();
  }
}

/** The token-id contract: `--prompt-ids … [--json] [--logits-out FILE]`, greedy. */
async function runIds(
  ids: string,
  load: LoadModelOptions,
  maxTokens: number,
  args: { json?: boolean; "logits-out"?: string },
): Promise<void> {
  const prompt = ids.split(",").map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) fail(`--prompt-ids: "${s}" is not a token id`);
    return n;
  });
  const t0 = performance.now();
  const model = await loadModel(load);
  const loadMs = performance.now() - t0;
  try {
    const r = await generate(model, prompt, {
      maxTokens,
      promptLogits: Boolean(args["logits-out"]),
    });
    if (args["logits-out"] && r.promptLogits) {
      const l = r.promptLogits;
      await Deno.writeFile(
        args["logits-out"],
        new Uint8Array(l.buffer, l.byteOffset, l.byteLength),
      );
    }
    const s = r.stats;
    const x = model.expertStats.snapshot();
    const decoded = Math.max(0, r.tokens.length - 1);
    const summary = {
      tokens: r.tokens,
      prompt_tokens: s.promptTokens,
      generated_tokens: r.tokens.length,
      prefill_tokens_per_s: s.promptTokens / (s.prefillMs / 1000),
      decode_tokens_per_s: decoded > 0 ? decoded / (s.decodeMs / 1000) : 0,
      syncs_per_token: s.syncsPerToken,
      submits_per_token: s.submitsPerToken,
      stalls: s.stalls,
      cache_hit_rate: x.hitRate,
      expert_lookups: x.lookups,
      expert_hits: x.hits,
      expert_misses: x.misses,
      expert_bytes_uploaded: x.bytesUploaded,
      peak_expert_bytes: x.peakBytes,
      expert_budget_bytes: x.budgetBytes,
      expert_requested_budget_bytes: x.requestedBudgetBytes,
      expert_pool_bytes: x.allocatedBytes,
      expert_split_layers: x.splitLayers,
      prefetch: model.prefetchStats
        ? {
          predictor: model.prefetchStats.predictor,
          accuracy: model.prefetchStats.prefetchAccuracy,
          uploads: model.prefetchStats.prefetchUploads,
          wasted_upload_bytes: model.prefetchStats.wastedUploadBytes,
        }
        : null,
      load_ms: loadMs,
      architecture: model.config.arch,
    };
    if (args.json) console.log(JSON.stringify(summary));
    else {
      console.log(`tokens: ${r.tokens.join(",")}`);
      console.log(
        `prompt ${s.promptTokens} tokens at ${summary.prefill_tokens_per_s.toFixed(1)} t/s, ` +
          `${decoded} decoded at ${summary.decode_tokens_per_s.toFixed(1)} t/s, ` +
          `${s.syncsPerToken.toFixed(3)} syncs/token`,
      );
    }
  } finally {
    model.close();
  }
}

/** An interactive chat that keeps the conversation; an empty line or /exit ends it. */
async function chat(
  engine: Engine,
  maxTokens: number,
  sampling: SamplingParams,
  system?: string,
): Promise<void> {
  const messages: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
  const enc = new TextEncoder();
  console.error(
    `chatting with ${engine.name} (${engine.info.architecture}); empty line or /exit to quit`,
  );
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines());
  const reader = lines.getReader();
  for (;;) {
    if (Deno.stdin.isTerminal()) Deno.stdout.writeSync(enc.encode("> "));
    const { value: line, done } = await reader.read();
    if (done || line.trim() === "" || line.trim() === "/exit") break;
    messages.push({ role: "user", content: line });
    const controller = new AbortController();
    const onInt = () => controller.abort();
    Deno.addSignalListener("SIGINT", onInt);
    try {
      const r = await engine.generate(
        { messages, maxTokens, sampling, signal: controller.signal },
        (c) => Deno.stdout.writeSync(enc.encode(c.text)),
      );
      console.log();
      console.error(statsLine(r.stats));
      messages.push({ role: "assistant", content: r.text });
    } finally {
      Deno.removeSignalListener("SIGINT", onInt);
    }
  }
}

/** Splits a text stream into lines (without their line ends). */
function splitLines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, out) {
      const parts = (rest + chunk).split(/\r?\n/);
      rest = parts.pop()!;
      for (const p of parts) out.enqueue(p);
    },
    flush(out) {
      if (rest) out.enqueue(rest);
    },
  });
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`run: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
