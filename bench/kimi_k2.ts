/**
 * A Kimi-K2-shaped model at Kimi's real width against llama.cpp: the
 * `kimi-k2-cut` preset of `dev/fixtures.ts` (7168 wide, 64 heads, q LoRA 1536,
 * KV LoRA 512, 384 experts top-8 with one shared expert, the first block
 * dense, two blocks, F16, about 1 GB) is generated once, then
 *
 * 1. greedy tokens and every step's logits are compared with llama.cpp on
 *    its own all-F32 copy of the file (PARITY.md's exact reference), and
 * 2. the same prompt is generated at expert budgets 0, 25% and 100% of the
 *    expert bytes (tokens must not change; misses, stalls and tokens/s are
 *    reported).
 *
 * Too slow for CI on a software adapter (the tests run `kimi-k2-narrow`,
 * the same structure at width 256); run it by hand:
 *
 * ```sh
 * deno run --lock=dev/deno.lock -A bench/kimi_k2.ts [--prompt 8] [--generate 8]
 * ```
 *
 * Prints one JSON object.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu } from "../src/gpu/device.ts";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { Rng } from "../src/util/rng.ts";
import { DEEPSEEK2_PRESETS, fixtureDequantized, fixtureModel } from "../dev/fixtures.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { note, roundNumbers } from "./_util.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    prompt: { type: "string", default: "8" },
    generate: { type: "string", default: "8" },
  },
});
const nPrompt = Number(values.prompt);
const nGen = Number(values.generate);

const opts = { ...DEEPSEEK2_PRESETS["kimi-k2-cut"], type: "F16" } as const;
let t0 = performance.now();
const path = await fixtureModel(opts);
const refPath = await fixtureDequantized(opts);
const file = readGgufModel(path);
note(`kimi_k2: files ready in ${((performance.now() - t0) / 1000).toFixed(0)} s: ${path}`);
const expertBytes = expertLayout(file).reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0);
const nVocab = file.metadata.strings("tokenizer.ggml.tokens")!.length;
const rng = new Rng(18);
const prompt = Array.from({ length: nPrompt }, () => rng.int(nVocab));

t0 = performance.now();
const ref = loadReference().loadModel(refPath);
const want = ref.greedy(prompt, nGen);
ref.close();
const refMs = performance.now() - t0;
note(`kimi_k2: llama.cpp (F32 copy, 1 thread): ${want.tokens.join(" ")} in ${refMs.toFixed(0)} ms`);

const gpu = await acquireGpu();
const report: Record<string, unknown> = {
  bench: "kimi_k2",
  adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
  fileMB: file.files[0]!.fileSize / 1e6,
  expertMB: expertBytes / 1e6,
  prompt: nPrompt,
  generate: nGen,
  llamaCppMs: refMs,
};
try {
  // 1. logits and greedy tokens step by step, everything resident
  const model = await loadModel({ model: path, gpu, nCtx: 64, maxBatch: 16 });
  let maxRel = 0;
  const ours: number[] = [];
  try {
    let logits = await model.forward(prompt);
    for (let step = 0; step < nGen; step++) {
      const w = want.logits[step]!;
      let lo = Infinity, hi = -Infinity, diff = 0, best = 0;
      for (let i = 0; i < w.length; i++) {
        lo = Math.min(lo, w[i]!);
        hi = Math.max(hi, w[i]!);
        diff = Math.max(diff, Math.abs(logits[i]! - w[i]!));
        if (logits[i]! > logits[best]!) best = i;
      }
      maxRel = Math.max(maxRel, diff / (hi - lo));
      ours.push(best);
      if (step + 1 < nGen) logits = await model.forward([best]);
    }
  } finally {
    model.close();
  }
  const same = ours.every((t, i) => t === want.tokens[i]);
  note(
    `kimi_k2: ours ${ours.join(" ")}: ${same ? "the same tokens" : "DIFFERENT tokens"}, ` +
      `max |Δlogit| ${(maxRel * 100).toFixed(4)}% of the range`,
  );
  Object.assign(report, { tokensMatch: same, maxLogitDiffPctOfRange: maxRel * 100 });

  // 2. streaming at budgets
  const budgets = [];
  for (const fraction of [1, 0.25, 0]) {
    const m = await loadModel({
      model: path,
      gpu,
      nCtx: 64,
      maxBatch: 1,
      cacheSizeGB: (fraction * expertBytes) / 1024 ** 3,
    });
    try {
      const t = performance.now();
      const r = await generate(m, prompt, { maxTokens: nGen });
      const ms = performance.now() - t;
      const s = m.expertStats.snapshot();
      const row = {
        budget: fraction,
        sameTokens: r.tokens.every((x, i) => x === want.tokens[i]),
        misses: s.misses,
        stalls: r.stats.stalls,
        poolPeakMB: s.peakBytes / 1e6,
        poolLimitMB: m.pool.limitBytes / 1e6,
        ms,
      };
      note(`kimi_k2: budget ${fraction * 100}%: ${JSON.stringify(roundNumbers(row))}`);
      budgets.push(row);
    } finally {
      m.close();
    }
  }
  report.budgets = budgets;
} finally {
  gpu.destroy();
}
console.log(JSON.stringify(roundNumbers(report)));
