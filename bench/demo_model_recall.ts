/**
 * Predictor recall on the trained demo model's real routing: recall@k (k =
 * 2, the model's experts per token) one and two layers ahead and for the
 * next token, for the gate lookahead, a shadow MLP trained here, and the
 * history predictor. Routing data is collected teacher-forced on held-out
 * text: the shadow model trains on the later held-out chapters and is
 * scored on the earlier ones (disjoint text; neither was trained on by the
 * language model).
 *
 * ```sh
 * deno run -A bench/demo_model_recall.ts [--train-samples 3000] [--test-samples 1024] [--epochs 4]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel } from "../src/model/model.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { acquireGpu } from "../src/gpu/device.ts";
import { trainedDemoModel } from "../src/server/demo.ts";
import { collectRoutingData } from "../src/training/collect.ts";
import { trainShadow } from "../src/training/trainer.ts";
import { evaluateGpuPredictor, evaluateHistory } from "../src/training/evaluate.ts";
import { ShadowPredictor } from "../src/predictor/shadow.ts";
import { LookaheadPredictor } from "../src/predictor/lookahead.ts";
import { chunks, HELDOUT_PATH, heldoutStream } from "./perplexity.ts";
import { intFlag, note, roundNumbers } from "./_util.ts";

/** Runs the comparison; the JSON report. */
export async function runDemoModelRecallBench(
  o: { trainSamples?: number; testSamples?: number; epochs?: number } = {},
): Promise<Record<string, unknown>> {
  const demo = trainedDemoModel();
  if (!demo) throw new Error("data/kjv-moe-Q8_0.gguf is missing: this bench needs the demo model");
  const tok = loadTokenizer(demo.path);
  const lines = (await Deno.readTextFile(HELDOUT_PATH)).split("\n").filter((l) => l !== "");
  const half = Math.floor(lines.length / 2);
  const testChunks = chunks(heldoutStream(tok, lines.slice(0, half).join("\n")), 128);
  const trainChunks = chunks(heldoutStream(tok, lines.slice(half).join("\n")), 128);
  const gpu = await acquireGpu();
  const model = await loadModel({ model: demo.path, gpu, nCtx: 128, maxBatch: 64 });
  try {
    const train = await collectRoutingData(model, trainChunks, {
      numSamples: o.trainSamples ?? 3000,
      newTokens: 0,
    });
    const test = await collectRoutingData(model, testChunks, {
      numSamples: o.testSamples ?? 1024,
      newTokens: 0,
    });
    note(`collected ${train.nSamples} training and ${test.nSamples} test tokens`);
    const r = await trainShadow(gpu, train, {
      epochs: o.epochs ?? 4,
      batchSize: 64,
      lr: 5e-4,
      depth: 2,
      log: (line) => note(`  ${line}`),
    });
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
    return roundNumbers({
      bench: "demo_model_recall",
      model: demo.path,
      train_tokens: train.nSamples,
      test_tokens: test.nSamples,
      k: model.config.nExpertUsed,
      chance: model.config.nExpertUsed / model.config.nExpert,
      predictors: figures.map((f) => ({
        name: f.name,
        recall_one_layer_ahead: f.recall[0] ?? null,
        recall_two_layers_ahead: f.recall[1] ?? null,
        recall_next_token: Number.isNaN(f.nextToken) ? null : f.nextToken,
      })),
    });
  } finally {
    model.close();
  }
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      "train-samples": { type: "string" },
      "test-samples": { type: "string" },
      epochs: { type: "string" },
    },
  });
  const r = await runDemoModelRecallBench({
    trainSamples: intFlag("train-samples", v["train-samples"], 3000),
    testSamples: intFlag("test-samples", v["test-samples"], 1024),
    epochs: intFlag("epochs", v.epochs, 4),
  });
  console.log(JSON.stringify(r));
}
