/**
 * The shadow predictor's training and evaluation: the trainer's gradients and
 * Adam step against a float64 reference, its memory budget, the routing data
 * files, and — on a generated model whose routing is a fixed function of its
 * hidden states — the ordering the predictors must have on held-out prompts:
 * trained shadow > gate lookahead > history, one layer ahead. The run-time
 * predictor's own tests (kernels, shadow weights, history) sit beside it in
 * src/predictor/.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";

import { Rng } from "../src/util/rng.ts";
import { adamStep, NONE } from "../src/predictor/kernels.ts";
import { ShadowTrainer, TrainingBudgetError, trainShadow } from "../src/training/trainer.ts";
import {
  initShadow,
  shadowLayout,
  ShadowPredictor,
  type ShadowShape,
} from "../src/predictor/shadow.ts";
import { shadowLossGradCpu } from "../src/predictor/cpu_ref.ts";
import {
  readDataset,
  type RoutingDataset,
  splitBySequence,
  subsetDataset,
  targetsFor,
  writeDataset,
} from "../src/training/data.ts";

import { collectRoutingData, syntheticPrompts } from "../src/training/collect.ts";
import { evaluateGpuPredictor, evaluateHistory } from "../src/training/evaluate.ts";
import { LookaheadPredictor } from "../src/predictor/lookahead.ts";
import { predictorDemoModel } from "../src/training/demo_model.ts";
import { loadModel } from "../src/model/model.ts";

function normals(n: number, rng: Rng, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

const SHAPE: ShadowShape = {
  nEmbd: 12,
  nLayer: 3,
  nExpert: 6,
  nExpertUsed: 2,
  depth: 2,
  hidden: 10,
  residual: true,
};

/** Random samples, targets (one group without), folded routers and weights with real gradients. */
function trainerCase() {
  const rng = new Rng(5);
  const { nLayer: L, nEmbd: E, depth: D, nExpertUsed: K, nExpert: N } = SHAPE;
  const S = 7;
  const w = initShadow(SHAPE, 3);
  const lay = shadowLayout(SHAPE);
  for (let i = lay.b1; i < lay.total; i++) w.params[i] = rng.normal() * 0.4;
  const hidden = normals(S * L * E, rng);
  const routers = normals(L * N * E, rng, 0.5);
  const targets = new Uint32Array(S * L * D * K);
  for (let i = 0; i < targets.length; i += K) {
    const a = rng.int(N);
    targets[i] = a;
    targets[i + 1] = (a + 1 + rng.int(N - 1)) % N;
  }
  targets.fill(NONE, ((5 * L + 2) * D + 1) * K, ((5 * L + 2) * D + 2) * K);
  return { w, hidden, routers, targets, S };
}

/** The CPU reference's rows for a batch (layer-major), with the lookahead term as a bias. */
function cpuBatch(c: ReturnType<typeof trainerCase>, idx: number[]) {
  const { nLayer: L, nEmbd: E, depth: D, nExpertUsed: K, nExpert: N } = SHAPE;
  const x = new Float32Array(L * idx.length * E);
  const layers: number[] = [];
  const tg = new Uint32Array(L * idx.length * D * K);
  const extra = new Float64Array(L * idx.length * D * N);
  for (let l = 0; l < L; l++) {
    idx.forEach((s, i) => {
      const r = l * idx.length + i;
      layers.push(l);
      x.set(c.hidden.subarray((s * L + l) * E, (s * L + l + 1) * E), r * E);
      tg.set(c.targets.subarray((s * L + l) * D * K, (s * L + l + 1) * D * K), r * D * K);
      for (let d = 0; d < D; d++) {
        if (l + 1 + d >= L) continue;
        for (let e = 0; e < N; e++) {
          let v = 0;
          for (let j = 0; j < E; j++) {
            v += c.routers[((l + 1 + d) * N + e) * E + j]! * x[r * E + j]!;
          }
          extra[(r * D + d) * N + e] = v;
        }
      }
    });
  }
  return { x, layers, tg, extra };
}

gpuTest({
  name: "shadow trainer: GPU gradients and the Adam step match the float64 reference",
  sanitizeResources: false,
  async fn(g) {
    const c = trainerCase();
    const idx = [5, 1, 3, 6];
    const tr = await ShadowTrainer.create(g, c.w, c.hidden, c.targets, 4, 1 << 30, c.routers);
    try {
      const opt = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
      const sums = { loss: [0, 0], hits: [0, 0], targets: [0, 0], groups: [0, 0] };
      await tr.run(idx, opt, sums);
      await tr.drainMetrics(sums);
      const grads = await tr.readGrads();
      const params = await tr.readParams();
      const b = cpuBatch(c, idx);
      const ref = shadowLossGradCpu(SHAPE, c.w.params, b.x, b.layers, b.tg, b.extra);
      let maxErr = 0;
      let maxAbs = 0;
      for (let i = 0; i < grads.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(grads[i]! - ref.grad[i]!));
        maxAbs = Math.max(maxAbs, Math.abs(ref.grad[i]!));
      }
      assert.ok(maxAbs > 1e-3, "the case has gradients");
      assert.ok(maxErr < 1e-5 * Math.max(1, maxAbs), `gradient error ${maxErr} (max ${maxAbs})`);
      const gpuLoss = (sums.loss[0]! + sums.loss[1]!) / (sums.groups[0]! + sums.groups[1]!);
      assert.ok(Math.abs(gpuLoss - ref.loss) < 1e-5, `loss ${gpuLoss} vs ${ref.loss}`);
      // Adam's first step moves each parameter by lrT · g / (|g| + epsT)
      const a = adamStep(1, opt);
      for (let i = 0; i < params.length; i++) {
        const gi = grads[i]!;
        const want = c.w.params[i]! - a.lrT * (0.1 * gi) / (Math.sqrt(0.001 * gi * gi) + a.epsT);
        assert.ok(Math.abs(params[i]! - want) < 1e-5, `param ${i}: ${params[i]} vs ${want}`);
      }
    } finally {
      tr.destroy();
    }
  },
});

gpuTest({
  name: "shadow trainer: refuses to go over its GPU memory budget, before allocating",
  sanitizeResources: false,
  async fn(g) {
    const c = trainerCase();
    const need = ShadowTrainer.plannedBytes(SHAPE, c.S, 4);
    await assert.rejects(
      () => ShadowTrainer.create(g, c.w, c.hidden, c.targets, 4, need - 1, c.routers),
      TrainingBudgetError,
    );
    const tr = await ShadowTrainer.create(g, c.w, c.hidden, c.targets, 4, need, c.routers);
    assert.ok(tr.gpuBytes <= need, `allocated ${tr.gpuBytes} > planned ${need}`);
    tr.destroy();
  },
});

function tinyDataset(): RoutingDataset {
  const L = 2, E = 3, K = 1;
  const seq = [0, 0, 0, 1, 1];
  const S = seq.length;
  return {
    nLayer: L,
    nEmbd: E,
    nExpert: 4,
    nExpertUsed: K,
    nSamples: S,
    hidden: Float32Array.from({ length: S * L * E }, (_, i) => (i % 7) - 3),
    routes: Uint32Array.from({ length: S * L * K }, (_, i) => i % 4),
    sequence: Int32Array.from(seq),
    position: Int32Array.from([0, 1, 2, 0, 1]),
    routers: Float32Array.from({ length: L * 4 * E }, (_, i) => i / 10),
    info: { model: "tiny" },
  };
}

Deno.test("routing data: round trip, targets across tokens of one sequence only, split by sequence", async () => {
  const d = tinyDataset();
  const dir = await Deno.makeTempDir();
  try {
    await writeDataset(`${dir}/d.safetensors`, d, "F32");
    const back = readDataset(`${dir}/d.safetensors`);
    assert.deepEqual(back.hidden, d.hidden);
    assert.deepEqual(back.routes, d.routes);
    assert.deepEqual(back.sequence, d.sequence);
    assert.deepEqual(back.routers, d.routers);
    assert.equal(back.info["model"], "tiny");
    await writeDataset(`${dir}/h.safetensors`, d);
    assert.deepEqual(readDataset(`${dir}/h.safetensors`).hidden, d.hidden, "F16 keeps small ints");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // depth 2: from layer 0, layer 1 (d1) and the next token's layer 0 (d2)
  const t = targetsFor(d, 2);
  const at = (s: number, l: number, k: number) => t[(s * 2 + l) * 2 + k]!;
  assert.equal(at(0, 0, 0), d.routes[1]); // sample 0, layer 1
  assert.equal(at(0, 0, 1), d.routes[2]); // sample 1, layer 0
  assert.equal(at(0, 1, 0), d.routes[2]); // sample 1, layer 0
  assert.equal(at(0, 1, 1), d.routes[3]); // sample 1, layer 1
  assert.equal(at(2, 1, 0), NONE, "the last token of a sequence has no next token");
  const { train, val } = splitBySequence(d, 0.5, 1);
  assert.equal(train.length + val.length, 5);
  const seqs = (idx: number[]) => new Set(idx.map((i) => d.sequence[i]));
  assert.equal([...seqs(train)].filter((s) => seqs(val).has(s)).length, 0);
  assert.equal(subsetDataset(d, val).nSamples, val.length);
});

gpuTest({
  name:
    "predictors on held-out prompts of a generated model: trained shadow > gate lookahead > history, one layer ahead",
  sanitizeResources: false,
  async fn(g) {
    const model = await loadModel({
      model: await predictorDemoModel(),
      gpu: g,
      nCtx: 128,
      maxBatch: 64,
      cacheSizeGB: 1,
    });
    try {
      const nVocab = model.config.nVocab;
      // random prompts, teacher-forced (no generation: fast), separate seeds for training and test
      const train = await collectRoutingData(model, syntheticPrompts(200, 64, nVocab, 11), {
        numSamples: 2000,
        newTokens: 0,
      });
      const test = await collectRoutingData(model, syntheticPrompts(40, 64, nVocab, 12), {
        numSamples: 600,
        newTokens: 0,
      });
      const budget = 64 * 2 ** 20;
      const r = await trainShadow(g, train, {
        epochs: 4,
        batchSize: 64,
        hidden: 256,
        depth: 2,
        lr: 5e-4,
        valFraction: 0.15,
        memoryBudgetBytes: budget,
      });
      assert.ok(r.gpuBytes <= budget, `training used ${r.gpuBytes} bytes, budget ${budget}`);
      assert.ok(r.weights.shape.residual, "the data holds the routers: residual mode");
      const shadow = await evaluateGpuPredictor(
        g,
        test,
        (src) =>
          ShadowPredictor.create(g, r.weights, src, {
            routers: model.weights,
            rmsEps: model.config.rmsEps,
          }),
      );
      const lookahead = await evaluateGpuPredictor(
        g,
        test,
        (src) => LookaheadPredictor.create(g, model.weights, src, { ...model.config, depth: 2 }),
      );
      const history = evaluateHistory(test, { depth: 2 });
      const line = (f: typeof shadow) =>
        `${f.name}: recall@${f.k} ${f.recall.map((x) => x.toFixed(3)).join(" / ")}` +
        (Number.isNaN(f.nextToken) ? "" : `, next token ${f.nextToken.toFixed(3)}`);
      console.log(
        `held-out ${test.nSamples} tokens; ${[shadow, lookahead, history].map(line).join("; ")}`,
      );
      assert.ok(
        shadow.recall[0]! > lookahead.recall[0]!,
        `shadow ${shadow.recall[0]} ≤ lookahead ${lookahead.recall[0]} one layer ahead`,
      );
      assert.ok(
        lookahead.recall[0]! > history.recall[0]!,
        `lookahead ${lookahead.recall[0]} ≤ history ${history.recall[0]} one layer ahead`,
      );
    } finally {
      model.close();
    }
  },
});
