/**
 * The whole shadow-predictor loop on a generated model, in one run:
 *
 * 1. generate the demo model (qwen3moe, 6 layers, 16 experts, top-2);
 * 2. collect routing data (hidden states and chosen experts per layer) from
 *    training prompts and, apart, from held-out prompts;
 * 3. train the shadow model on the GPU (loss and recall@k per epoch);
 * 4. compare recall@k on the held-out prompts: shadow, gate lookahead, history;
 * 5. generate with a small expert cache, prefetch off / lookahead / shadow:
 *    the same tokens, fewer stalls.
 *
 * ```sh
 * deno run -A examples/shadow_predictor.ts [--samples 3000] [--epochs 4]
 * ```
 *
 * The same loop from the command line:
 *
 * ```sh
 * deno task collect --model .cache/predictor/demo-v1.gguf --synthetic --num-samples 3000 \
 *   --output data.safetensors
 * deno task train-shadow --data data.safetensors --output shadow.safetensors --epochs 4
 * deno task serve --model .cache/predictor/demo-v1.gguf --cache-size-gb 0.001 \
 *   --enable-prefetch --predictor-path shadow.safetensors
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu } from "../src/gpu/device.ts";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { predictorDemoModel } from "../src/training/demo_model.ts";
import { collectRoutingData, syntheticPrompts } from "../src/training/collect.ts";
import { formatRecall, trainShadow } from "../src/training/trainer.ts";
import { saveShadow, shadowBytes, ShadowPredictor } from "../src/predictor/shadow.ts";
import { LookaheadPredictor } from "../src/predictor/lookahead.ts";
import { evaluateGpuPredictor, evaluateHistory } from "../src/training/evaluate.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    samples: { type: "string", default: "3000" },
    epochs: { type: "string", default: "4" },
  },
});
const gpu = await acquireGpu();
const path = await predictorDemoModel();
console.log(`1. model: ${path}`);

const model = await loadModel({ model: path, gpu, nCtx: 256, maxBatch: 64, cacheSizeGB: 1 });
const nVocab = model.config.nVocab;
const train = await collectRoutingData(model, syntheticPrompts(400, 48, nVocab, 1), {
  numSamples: Number(v.samples),
  newTokens: 16,
});
const test = await collectRoutingData(model, syntheticPrompts(60, 48, nVocab, 2), {
  numSamples: 800,
  newTokens: 16,
});
console.log(`2. collected ${train.nSamples} training and ${test.nSamples} held-out tokens`);

console.log("3. training");
const r = await trainShadow(gpu, train, {
  epochs: Number(v.epochs),
  batchSize: 64,
  lr: 5e-4,
  depth: 2,
  log: (line) => console.log(`   ${line}`),
});
const shadowPath = path.replace(/\.gguf$/, "-shadow.safetensors");
await saveShadow(shadowPath, r.weights);
console.log(`   saved ${shadowPath} (${shadowBytes(r.weights.shape)} bytes of weights)`);

const figures = [
  await evaluateGpuPredictor(gpu, test, (src) =>
    ShadowPredictor.create(gpu, r.weights, src, {
      routers: model.weights,
      rmsEps: model.config.rmsEps,
    })),
  await evaluateGpuPredictor(
    gpu,
    test,
    (src) => LookaheadPredictor.create(gpu, model.weights, src, { ...model.config, depth: 2 }),
  ),
  evaluateHistory(test, { depth: 2 }),
];
model.close();
console.log("4. recall@k on held-out prompts (d1 = one layer ahead)");
for (const f of figures) {
  const next = Number.isNaN(f.nextToken) ? "" : `, next token ${f.nextToken.toFixed(3)}`;
  console.log(`   ${f.name.padEnd(10)} ${formatRecall(f.recall)}${next}`);
}

console.log("5. generation at a 25% expert cache");
const total = expertLayout(readGgufModel(path)).reduce(
  (s, l) => s + l.nExpert * l.bytesPerExpert,
  0,
);
for (const predictor of ["off", "lookahead", "shadow"]) {
  const m = await loadModel({
    model: path,
    gpu,
    nCtx: 256,
    maxBatch: 4,
    cacheSizeGB: (0.25 * total) / 2 ** 30,
    enablePrefetch: predictor !== "off",
    predictorPath: predictor === "shadow" ? shadowPath : undefined,
  });
  const g = await generate(m, [5, 17, 99, 230, 41, 7, 300, 12], { maxTokens: 32 });
  const p = m.prefetchStats!;
  console.log(
    `   ${predictor.padEnd(10)} stalls/token ${p.stallsPerToken.toFixed(2)}, hit rate ${
      m.expertStats.snapshot().hitRate.toFixed(3)
    }, prefetch accuracy ${p.prefetchAccuracy.toFixed(2)}, tokens ${
      g.tokens.slice(0, 8).join(",")
    }…`,
  );
  m.close();
}

const kimi = { nEmbd: 7168, nLayer: 61, nExpert: 384, nExpertUsed: 8 };
for (const [hidden, depth] of [[256, 2], [1024, 2], [1024, 3]] as const) {
  const mb = shadowBytes({ ...kimi, hidden, depth, residual: true }) / 2 ** 20;
  console.log(
    `shadow model for a Kimi-K2 / DeepSeek-V3 shape, hidden ${hidden}, depth ${depth}: ${
      mb.toFixed(1)
    } MiB`,
  );
}
gpu.destroy();
