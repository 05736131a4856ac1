/**
 * What the readback path costs (`src/generate/readback.ts`: logprobs and
 * constrained decoding take it): time per generated token on the GPU path,
 * with log probabilities, and with a JSON-schema grammar, on the random
 * demo model (greedy, the same prompt, prefix reuse off); then the grammar
 * mask alone at a large vocabulary (Qwen2's, 152k tokens, from llama.cpp's
 * source bundle): indexing the vocabulary once, and a full mask between
 * JSON values and inside a string.
 *
 * ```sh
 * deno run --lock=dev/deno.lock -A bench/constrained.ts [--tokens 64] [--rounds 3]
 * ```
 *
 * One JSON report on stdout; ratios are against the GPU path's ms/token.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Engine } from "../src/generate/engine.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { Constraint, jsonSchema, tokenIndex } from "../src/generate/constrain.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { vocabPath } from "../dev/ref/llama_src.ts";
import type { GenerateRequest } from "../src/generate/types.ts";
import { intFlag, median, note, roundNumbers } from "./_util.ts";

const SCHEMA = {
  type: "object",
  properties: {
    location: { type: "string" },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
    days: { type: "integer" },
  },
  required: ["location", "unit", "days"],
};

async function perToken(e: Engine, extra: Partial<GenerateRequest>, n: number, rounds: number) {
  const ms: number[] = [];
  let tokens = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const out = await e.generate({
      prompt: "Once upon a time, in a land far away,",
      maxTokens: n,
      sampling: { temperature: 0 },
      cachePrompt: false,
      ...extra,
    });
    tokens = out.tokens.length;
    ms.push((performance.now() - t0) / tokens);
  }
  return { ms_per_token: median(ms), tokens };
}

function maskTimes(rounds: number) {
  return (async () => {
    const tok = loadTokenizer(await vocabPath("qwen2"));
    let t0 = performance.now();
    tokenIndex(tok);
    const indexMs = performance.now() - t0;
    const c = new Constraint(jsonSchema(SCHEMA), tok);
    const time = () => {
      const ms: number[] = [];
      for (let r = 0; r < rounds; r++) {
        t0 = performance.now();
        c.mask(1000);
        ms.push(performance.now() - t0);
      }
      return median(ms);
    };
    const atStart = time();
    for (const id of tok.encode('{"location": "Par', { addSpecial: false })) c.accept(id);
    const inString = time();
    for (const id of tok.encode('is", ', { addSpecial: false })) c.accept(id);
    const beforeKey = time();
    return {
      vocab: tok.vocabSize,
      index_ms: indexMs,
      mask_ms: { at_start: atStart, inside_string: inString, before_key: beforeKey },
    };
  })();
}

if (import.meta.main) {
  const args = parseArgs({ options: { tokens: { type: "string" }, rounds: { type: "string" } } });
  const n = intFlag("tokens", args.values.tokens, 64);
  const rounds = intFlag("rounds", args.values.rounds, 3);
  const e = await Engine.load({ model: await ensureDemoModel(), nCtx: 1024 });
  try {
    note("GPU path…");
    await perToken(e, {}, 8, 1); // warm the pipelines
    const gpu = await perToken(e, {}, n, rounds);
    note("readback path with logprobs…");
    const logprobs = await perToken(e, { logprobs: 5 }, n, rounds);
    note("readback path with a JSON-schema grammar…");
    const grammar = await perToken(e, { grammar: jsonSchema(SCHEMA) }, n, rounds);
    note("grammar masks at a 152k vocabulary…");
    const masks = await maskTimes(rounds);
    console.log(JSON.stringify(
      roundNumbers({
        model: e.info.name,
        gpu,
        logprobs: { ...logprobs, ratio: logprobs.ms_per_token / gpu.ms_per_token },
        grammar: { ...grammar, ratio: grammar.ms_per_token / gpu.ms_per_token },
        masks,
        load_average: Deno.loadavg()[0],
      }),
      null,
      2,
    ));
  } finally {
    e.close();
  }
}
