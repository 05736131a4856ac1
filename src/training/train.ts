/**
 * `deno task train-shadow`: trains the shadow predictor on the GPU from a
 * routing dataset (`deno task collect`) and saves the weights of the best
 * epoch.
 *
 * ```sh
 * deno task train-shadow --data data.safetensors --output shadow.safetensors \
 *   [--epochs 10] [--batch-size 64] [--hidden 256] [--depth 2] [--lr 1e-3] \
 *   [--val-split 0.1] [--weight-decay 0] [--seed 1] [--memory-budget-gb 1] [--plain]
 * ```
 *
 * Prints the loss and top-k recall (k = the model's experts per token) per
 * lookahead distance for the training and validation samples after each
 * epoch (`*` marks a new best), then one JSON line. `--plain` trains an MLP
 * without the gate lookahead residual (see `shadow.ts`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu } from "../gpu/device.ts";
import { readDataset } from "./data.ts";
import { saveShadow, shadowBytes } from "../predictor/shadow.ts";
import { trainShadow } from "./trainer.ts";

const USAGE = `usage: deno task train-shadow --data data.safetensors --output shadow.safetensors
  [--epochs 10] [--batch-size 64] [--hidden 256] [--depth 2] [--lr 1e-3] [--val-split 0.1]
  [--weight-decay 0] [--seed 1] [--memory-budget-gb 1] [--plain]`;

async function main(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      data: { type: "string" },
      output: { type: "string" },
      epochs: { type: "string", default: "10" },
      "batch-size": { type: "string", default: "64" },
      hidden: { type: "string", default: "256" },
      depth: { type: "string", default: "2" },
      lr: { type: "string", default: "1e-3" },
      "val-split": { type: "string", default: "0.1" },
      "weight-decay": { type: "string", default: "0" },
      seed: { type: "string", default: "1" },
      "memory-budget-gb": { type: "string", default: "1" },
      plain: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  const fail = (msg: string): never => {
    console.error(`train-shadow: ${msg}\n${USAGE}`);
    Deno.exit(2);
  };
  if (v.help) {
    console.log(USAGE);
    return;
  }
  if (!v.data) fail("--data is required");
  if (!v.output) fail("--output is required");
  const num = (k: keyof typeof v, min: number, int = false): number => {
    const x = Number(v[k]);
    if (!Number.isFinite(x) || x < min || (int && !Number.isInteger(x))) {
      fail(`--${k} must be ${int ? "an integer" : "a number"} ≥ ${min}, got ${v[k]}`);
    }
    return x;
  };
  const opts = {
    epochs: num("epochs", 1, true),
    batchSize: num("batch-size", 1, true),
    hidden: num("hidden", 1, true),
    depth: num("depth", 1, true),
    lr: num("lr", 0),
    valFraction: num("val-split", 0),
    weightDecay: num("weight-decay", 0),
    seed: num("seed", 0, true),
    memoryBudgetBytes: Math.floor(num("memory-budget-gb", 0) * 2 ** 30),
  };
  const data = readDataset(v.data!);
  const gpu = await acquireGpu();
  try {
    const t0 = performance.now();
    const r = await trainShadow(gpu, data, {
      ...opts,
      residual: v.plain ? false : undefined,
      log: (line) => console.log(line),
    });
    await saveShadow(v.output!, r.weights);
    console.log(JSON.stringify({
      output: v.output,
      bestEpoch: r.best.epoch,
      valRecall: r.best.valRecall,
      trainRecall: r.best.trainRecall,
      residual: r.weights.shape.residual,
      parameters: r.weights.params.length,
      bytes: shadowBytes(r.weights.shape),
      gpuBytes: r.gpuBytes,
      budgetBytes: r.budgetBytes,
      samples: r.samples,
      ms: Math.round(performance.now() - t0),
    }));
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) await main(Deno.args);
