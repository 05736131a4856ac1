/**
 * `deno task run`: one-shot generation from the terminal.
 *
 *   deno task run --model M.gguf --prompt-ids 1,2,3 --max-tokens N --greedy --json [--logits-out FILE]
 *
 * With `--json` the last line printed is one JSON object:
 * `{"tokens": [...], "prompt_tokens": n, "decode_tokens_per_s": x, "syncs_per_token": y, ...}`.
 * Tools outside the repo depend on that contract: keep it stable.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel } from "../src/model/model.ts";

const USAGE =
  `usage: deno task run --model FILE.gguf --prompt-ids 1,2,3 [--max-tokens N] [--greedy] [--json]
                     [--logits-out FILE] [--ctx-size N] [--batch-size N] [--cache-size-gb GB]`;

function fail(msg: string): never {
  console.error(`run: ${msg}\n${USAGE}`);
  Deno.exit(2);
}

function positiveInt(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      args: Deno.args,
      options: {
        model: { type: "string" },
        "prompt-ids": { type: "string" },
        "max-tokens": { type: "string" },
        greedy: { type: "boolean" },
        json: { type: "boolean" },
        "logits-out": { type: "string" },
        "ctx-size": { type: "string" },
        "batch-size": { type: "string" },
        "cache-size-gb": { type: "string" },
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
  if (!args.model) fail("--model is required");
  if (!args["prompt-ids"]) fail("--prompt-ids is required (text prompts come with the tokenizer)");
  const prompt = args["prompt-ids"].split(",").map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) fail(`--prompt-ids: "${s}" is not a token id`);
    return n;
  });
  const maxTokens = positiveInt("max-tokens", args["max-tokens"], 32);
  const nCtx = args["ctx-size"] ? positiveInt("ctx-size", args["ctx-size"], 0) : undefined;
  const maxBatch = positiveInt("batch-size", args["batch-size"], 64);
  const cacheSizeGB = args["cache-size-gb"] === undefined ? 4 : Number(args["cache-size-gb"]);
  if (!(cacheSizeGB >= 0)) {
    fail(`--cache-size-gb must be a number ≥ 0, got "${args["cache-size-gb"]}"`);
  }
  try {
    await Deno.stat(args.model);
  } catch {
    fail(`--model: no such file: ${args.model}`);
  }

  const t0 = performance.now();
  const model = await loadModel({ model: args.model, nCtx, maxBatch, cacheSizeGB });
  const loadMs = performance.now() - t0;
  try {
    const r = await model.generate(prompt, {
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
      expert_pool_bytes: x.allocatedBytes,
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

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`run: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
