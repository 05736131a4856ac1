/**
 * Trains the shadow predictor on the GPU: minibatches gathered on the GPU from
 * the whole dataset (uploaded once), forward and backward passes as WGSL
 * kernels (`shaders/predictor.wgsl`, `shaders/train_*.wgsl`), Adam, a
 * validation split by sequence, loss and top-k recall per epoch, and the
 * weights of the best epoch kept.
 *
 * A minibatch is `batchSize` tokens × every layer, in layer-major rows, so
 * each layer's rows form one matrix of a stack and its output head's gradient
 * is one product. One submit per step (its indices and Adam's step size are
 * written before it); metrics are read back in chunks, not per step.
 *
 * Every GPU buffer is allocated up front and counted; the total must stay
 * within `memoryBudgetBytes` (checked before anything is allocated).
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer, readback, upload } from "../gpu/buffers.ts";
import { type Op, recordOps } from "../gpu/ops/op.ts";
import { Rng } from "../util/rng.ts";
import {
  type AdamParams,
  adamStep,
  type LossParams,
  NONE,
  prepareAdam,
  prepareGather,
  prepareGemm,
  prepareLoss,
} from "../predictor/kernels.ts";
import { type RoutingDataset, splitBySequence, targetsFor } from "./data.ts";
import {
  checkShadowShape,
  initShadow,
  shadowLayout,
  type ShadowShape,
  type ShadowWeights,
} from "../predictor/shadow.ts";

/** Options of {@linkcode trainShadow}. */
export interface TrainShadowOptions {
  /** Passes over the training samples. */
  epochs: number;
  /** Tokens per minibatch (each gives one row per layer). */
  batchSize: number;
  /** Hidden units (default 256). */
  hidden?: number;
  /** Layers predicted ahead (default 2). */
  depth?: number;
  /** Learn a correction to the gate lookahead (default: when the data holds the routers). */
  residual?: boolean;
  /** Adam learning rate (default 2e-3). */
  lr?: number;
  /** Decoupled weight decay (default 0). */
  weightDecay?: number;
  /** Fraction of sequences held out for validation (default 0.1). */
  valFraction?: number;
  /** Explicit split (sample indices) instead of `valFraction`. */
  split?: { train: readonly number[]; val: readonly number[] };
  /** Seed of the initial weights, the split and the shuffles (default 1). */
  seed?: number;
  /** Most GPU bytes the trainer may allocate (default 1 GiB). */
  memoryBudgetBytes?: number;
  /** Receives one line per epoch. */
  log?: (line: string) => void;
}

/** Figures of one epoch. */
export interface EpochReport {
  /** 1-based. */
  epoch: number;
  /** Mean training loss (during the epoch, before each step's update). */
  trainLoss: number;
  /** Mean validation loss after the epoch (NaN without a validation set). */
  valLoss: number;
  /** Training top-k recall per distance (k = the model's experts per token). */
  trainRecall: number[];
  /** Validation top-k recall per distance. */
  valRecall: number[];
  /** Wall time of the epoch, ms. */
  ms: number;
}

/** What {@linkcode trainShadow} returns. */
export interface TrainResult {
  /** The weights of the best epoch (highest mean validation recall). */
  weights: ShadowWeights;
  /** That epoch's figures. */
  best: EpochReport;
  /** Every epoch's figures. */
  epochs: EpochReport[];
  /** GPU bytes the trainer allocated. */
  gpuBytes: number;
  /** The budget they had to fit. */
  budgetBytes: number;
  /** Samples trained on and held out. */
  samples: { train: number; val: number };
}

/** The trainer went over its GPU memory budget. */
export class TrainingBudgetError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "TrainingBudgetError";
  }
}

/** Sums of one pass's metrics, per distance. */
interface MetricSums {
  loss: number[];
  hits: number[];
  targets: number[];
  groups: number[];
}

function emptySums(depth: number): MetricSums {
  const z = () => new Array(depth).fill(0);
  return { loss: z(), hits: z(), targets: z(), groups: z() };
}

/** GPU state of a training run: buffers, prepared ops, steps. */
export class ShadowTrainer {
  /** Bytes of GPU memory allocated. */
  readonly gpuBytes: number;
  /** Steps taken. */
  steps = 0;
  readonly #gpu: Gpu;
  readonly #shape: ShadowShape;
  readonly #batch: number;
  readonly #buffers: GPUBuffer[];
  readonly #idx: GPUBuffer;
  readonly #params: GPUBuffer;
  readonly #grads: GPUBuffer;
  readonly #metrics: GPUBuffer;
  readonly #forward: Op[];
  readonly #backward: Op[];
  readonly #loss: Op;
  readonly #lossParams: LossParams;
  readonly #adam: Op;
  readonly #adamParams: AdamParams;
  readonly #validGroups: Uint16Array;
  readonly #metricSlots: number;
  #pending: { slot: number; real: number }[] = [];

  private constructor(init: {
    gpu: Gpu;
    shape: ShadowShape;
    batch: number;
    buffers: GPUBuffer[];
    idx: GPUBuffer;
    params: GPUBuffer;
    grads: GPUBuffer;
    metrics: GPUBuffer;
    forward: Op[];
    backward: Op[];
    loss: Op;
    lossParams: LossParams;
    adam: Op;
    adamParams: AdamParams;
    validGroups: Uint16Array;
    metricSlots: number;
    gpuBytes: number;
  }) {
    this.#gpu = init.gpu;
    this.#shape = init.shape;
    this.#batch = init.batch;
    this.#buffers = init.buffers;
    this.#idx = init.idx;
    this.#params = init.params;
    this.#grads = init.grads;
    this.#metrics = init.metrics;
    this.#forward = init.forward;
    this.#backward = init.backward;
    this.#loss = init.loss;
    this.#lossParams = init.lossParams;
    this.#adam = init.adam;
    this.#adamParams = init.adamParams;
    this.#validGroups = init.validGroups;
    this.#metricSlots = init.metricSlots;
    this.gpuBytes = init.gpuBytes;
  }

  /** GPU bytes a run needs: the dataset, four copies of the parameters, a minibatch's activations. */
  static plannedBytes(shape: ShadowShape, nSamples: number, batch: number): number {
    const { nLayer: L, nEmbd: E, hidden: H, depth: D, nExpertUsed: K } = shape;
    const DN = D * shape.nExpert;
    const rows = L * batch;
    const metricSlots = ShadowTrainer.metricSlots(shape, batch);
    return 4 * (
      nSamples * L * (E + D * K) + // dataset and targets
      (shape.residual ? L * shape.nExpert * E : 0) + // folded routers
      4 * shadowLayout(shape).total + // params, grads, Adam moments
      batch * 2 + // indices, ones
      rows * (E + D * K + 2 * H + 2 * DN) + // gathered rows, activations, gradients
      metricSlots * rows * D * 3
    );
  }

  static metricSlots(shape: ShadowShape, batch: number): number {
    const perBatch = 4 * shape.nLayer * batch * shape.depth * 3;
    return Math.max(1, Math.min(64, Math.floor((8 << 20) / perBatch)));
  }

  /**
   * Uploads `hidden` (f32 [nSamples, nLayer, nEmbd]) and `targets` (u32
   * [nSamples, nLayer, depth, nExpertUsed]) and prepares every kernel for
   * minibatches of `batch` tokens, starting from `init`. A residual model
   * needs `routers`, f32 [nLayer, nExpert, nEmbd]: each layer's router with
   * its `ffn_norm` weight folded in (`router · diag(norm)`).
   */
  static async create(
    gpu: Gpu,
    init: ShadowWeights,
    hidden: Float32Array,
    targets: Uint32Array,
    batch: number,
    budgetBytes: number,
    routers?: Float32Array,
  ): Promise<ShadowTrainer> {
    const s = init.shape;
    checkShadowShape(s);
    const { nLayer: L, nEmbd: E, hidden: H, depth: D, nExpertUsed: K, nExpert: N } = s;
    const DN = D * N;
    const nSamples = hidden.length / (L * E);
    if (!Number.isInteger(nSamples) || targets.length !== nSamples * L * D * K) {
      throw new RangeError(
        `trainer: ${hidden.length} hidden values and ${targets.length} targets do not make ` +
          `whole samples of [${L}, ${E}] and [${L}, ${D}, ${K}]`,
      );
    }
    if (s.residual && routers?.length !== L * N * E) {
      throw new RangeError(
        `trainer: a residual shadow model needs the folded routers, f32 [${L}, ${N}, ${E}]` +
          (routers ? `, got ${routers.length} values` : ""),
      );
    }
    const planned = ShadowTrainer.plannedBytes(s, nSamples, batch);
    if (planned > budgetBytes) {
      throw new TrainingBudgetError(
        `training needs ${planned} bytes of GPU memory (${nSamples} samples, batch ${batch}, ` +
          `${shadowLayout(s).total} parameters), over the budget of ${budgetBytes}; ` +
          `use fewer samples, a smaller batch or hidden size, or raise the budget`,
      );
    }
    const lay = shadowLayout(s);
    const rows = L * batch;
    const metricSlots = ShadowTrainer.metricSlots(s, batch);
    let bytes = 0;
    const buffers: GPUBuffer[] = [];
    const buf = (label: string, words: number, data?: ArrayBufferView) => {
      const b = createBuffer(gpu, { label: `train.${label}`, size: 4 * Math.max(1, words) });
      if (data) upload(gpu, b, data);
      bytes += b.size;
      buffers.push(b);
      return b;
    };
    const xAll = buf("x_all", nSamples * L * E, hidden);
    const tAll = buf("t_all", nSamples * L * D * K, targets);
    const idx = buf("idx", batch);
    const ones = buf("ones", batch, new Float32Array(batch).fill(1));
    const params = buf("params", lay.total, init.params);
    const grads = buf("grads", lay.total);
    const m1 = buf("adam_m", lay.total, new Float32Array(lay.total));
    const m2 = buf("adam_v", lay.total, new Float32Array(lay.total));
    const xb = buf("x", rows * E); // [L, B, E]
    const tb = buf("t", rows * D * K); // [L, B, D, K]
    const hb = buf("h", rows * H); // [L, B, H]
    const lg = buf("logits", rows * DN); // [L, B, DN]
    const dlg = buf("dlogits", rows * DN);
    const dh = buf("dh", rows * H);
    const metrics = buf("metrics", metricSlots * rows * D * 3);
    const folded = s.residual ? buf("routers", L * N * E, routers) : undefined;
    if (bytes > budgetBytes) {
      for (const b of buffers) b.destroy();
      throw new TrainingBudgetError(`trainer allocated ${bytes} bytes, over ${budgetBytes}`);
    }
    const B = batch;
    const forward: Op[] = [
      await prepareGather(gpu, {
        src: xAll,
        idx,
        dst: xb,
        nLayer: L,
        batch: B,
        words: E,
        label: "train.gather_x",
      }),
      await prepareGather(gpu, {
        src: tAll,
        idx,
        dst: tb,
        nLayer: L,
        batch: B,
        words: D * K,
        label: "train.gather_t",
      }),
      await prepareGemm(gpu, {
        a: { buffer: xb, z: B * E, i: E, j: 1 },
        b: { buffer: params, off: lay.w1, z: 0, i: 1, j: E },
        c: { buffer: hb, z: B * H, i: H, j: 1 },
        bias: { buffer: params, off: lay.b1, z: H },
        epilogue: "relu",
        m: B,
        n: H,
        k: E,
        z: L,
        label: "train.fc1",
      }),
      await prepareGemm(gpu, {
        a: { buffer: hb, z: B * H, i: H, j: 1 },
        b: { buffer: params, off: lay.w2, z: DN * H, i: 1, j: H },
        c: { buffer: lg, z: B * DN, i: DN, j: 1 },
        bias: { buffer: params, off: lay.b2, z: DN },
        m: B,
        n: DN,
        k: H,
        z: L,
        label: "train.fc2",
      }),
    ];
    // Residual mode: += the lookahead's logits, router[l+1+d] · x̂[l], for the layers of this token.
    for (let d = 0; folded && d < D && d + 1 < L; d++) {
      forward.push(
        await prepareGemm(gpu, {
          a: { buffer: xb, z: B * E, i: E, j: 1 },
          b: { buffer: folded, off: (1 + d) * N * E, z: N * E, i: 1, j: E },
          c: { buffer: lg, off: d * N, z: B * DN, i: DN, j: 1 },
          accumulate: true,
          m: B,
          n: N,
          k: E,
          z: L - 1 - d,
          label: `train.lookahead+${d + 1}`,
        }),
      );
    }
    const { op: loss, params: lossParams } = await prepareLoss(gpu, {
      logits: lg,
      targets: tb,
      grad: dlg,
      metrics,
      groups: rows * D,
      nExpert: N,
      kTargets: K,
      label: "train.loss",
    });
    const backward: Op[] = [
      // dW2[l] = dLogits[l]ᵀ · h[l]
      await prepareGemm(gpu, {
        a: { buffer: dlg, z: B * DN, i: 1, j: DN },
        b: { buffer: hb, z: B * H, i: H, j: 1 },
        c: { buffer: grads, off: lay.w2, z: DN * H, i: H, j: 1 },
        m: DN,
        n: H,
        k: B,
        z: L,
        label: "train.grad_w2",
      }),
      // db2[l] = Σ_rows dLogits[l]
      await prepareGemm(gpu, {
        a: { buffer: ones, z: 0, i: 0, j: 1 },
        b: { buffer: dlg, z: B * DN, i: DN, j: 1 },
        c: { buffer: grads, off: lay.b2, z: DN, i: 0, j: 1 },
        m: 1,
        n: DN,
        k: B,
        z: L,
        shape: [1, 64],
        label: "train.grad_b2",
      }),
      // dh = (dLogits · W2[l]) ⊙ relu'(h)
      await prepareGemm(gpu, {
        a: { buffer: dlg, z: B * DN, i: DN, j: 1 },
        b: { buffer: params, off: lay.w2, z: DN * H, i: H, j: 1 },
        c: { buffer: dh, z: B * H, i: H, j: 1 },
        epilogue: { mask: hb },
        m: B,
        n: H,
        k: DN,
        z: L,
        label: "train.grad_h",
      }),
      // dW1 = dhᵀ · x over every row
      await prepareGemm(gpu, {
        a: { buffer: dh, z: 0, i: 1, j: H },
        b: { buffer: xb, z: 0, i: E, j: 1 },
        c: { buffer: grads, off: lay.w1, z: 0, i: E, j: 1 },
        m: H,
        n: E,
        k: rows,
        label: "train.grad_w1",
      }),
      // dLayerEmbedding[l] = Σ_rows dh[l]
      await prepareGemm(gpu, {
        a: { buffer: ones, z: 0, i: 0, j: 1 },
        b: { buffer: dh, z: B * H, i: H, j: 1 },
        c: { buffer: grads, off: lay.b1, z: H, i: 0, j: 1 },
        m: 1,
        n: H,
        k: B,
        z: L,
        shape: [1, 64],
        label: "train.grad_b1",
      }),
    ];
    const { op: adam, params: adamParams } = await prepareAdam(gpu, {
      grad: grads,
      param: params,
      m: m1,
      v: m2,
      n: lay.total,
      label: "train.adam",
    });
    // Groups with a target per sample, for the mean loss's gradient scale.
    const validGroups = new Uint16Array(nSamples);
    for (let i = 0; i < nSamples; i++) {
      let n = 0;
      for (let g = 0; g < L * D; g++) if (targets[(i * L * D + g) * K] !== NONE) n++;
      validGroups[i] = n;
    }
    return new ShadowTrainer({
      gpu,
      shape: s,
      batch,
      buffers,
      idx,
      params,
      grads,
      metrics,
      forward,
      backward,
      loss,
      lossParams,
      adam,
      adamParams,
      validGroups,
      metricSlots,
      gpuBytes: bytes,
    });
  }

  /** Tokens per minibatch. */
  get batch(): number {
    return this.#batch;
  }

  /**
   * Queues one pass over the samples `idx` (at most one batch; fewer are
   * padded, their metrics ignored): with `train`, the gradient and an Adam
   * step with `opt`. Metrics accumulate until {@linkcode drainMetrics}.
   */
  async run(
    idx: readonly number[],
    train: false | { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
    sums: MetricSums,
  ): Promise<void> {
    const B = this.#batch;
    if (idx.length === 0 || idx.length > B) {
      throw new RangeError(`trainer: a step takes 1…${B} samples, got ${idx.length}`);
    }
    if (this.#pending.length === this.#metricSlots) await this.drainMetrics(sums);
    const ids = new Uint32Array(B);
    let groups = 0;
    for (let i = 0; i < B; i++) {
      const s = idx[Math.min(i, idx.length - 1)]!;
      ids[i] = s;
      if (i < idx.length) groups += this.#validGroups[s]!;
    }
    if (train && idx.length < B) {
      throw new RangeError(`trainer: a training step takes exactly ${B} samples`);
    }
    upload(this.#gpu, this.#idx, ids);
    const slot = this.#pending.length;
    const s = this.#shape;
    this.#lossParams.write({
      groups: s.nLayer * B * s.depth,
      nExpert: s.nExpert,
      logitsOff: 0,
      targetsOff: 0,
      gradOff: 0,
      metricsOff: slot * s.nLayer * B * s.depth * 3,
      gradScale: groups > 0 ? 1 / groups : 0,
      writeGrad: train ? 1 : 0,
    });
    if (train) {
      this.steps++;
      const a = adamStep(this.steps, train);
      this.#adamParams.write({
        n: shadowLayout(s).total,
        lrT: a.lrT,
        beta1: train.beta1,
        beta2: train.beta2,
        epsT: a.epsT,
        decay: a.decay,
      });
    }
    const enc = this.#gpu.device.createCommandEncoder({ label: "train step" });
    const pass = enc.beginComputePass({ label: "train step" });
    recordOps(pass, this.#forward, B);
    recordOps(pass, [this.#loss], B);
    if (train) {
      recordOps(pass, this.#backward, B);
      recordOps(pass, [this.#adam], B);
    }
    pass.end();
    this.#gpu.submit(enc);
    this.#pending.push({ slot, real: idx.length });
  }

  /** Reads back the metrics of the passes queued since the last call, adding them to `sums`. */
  async drainMetrics(sums: MetricSums): Promise<void> {
    if (this.#pending.length === 0) return;
    const s = this.#shape;
    const B = this.#batch;
    const per = s.nLayer * B * s.depth * 3;
    const [bytes] = await readback(this.#gpu, [{
      buffer: this.#metrics,
      offset: 0,
      size: 4 * per * this.#pending.length,
    }]);
    const m = new Float32Array(bytes!);
    for (const { slot, real } of this.#pending) {
      for (let l = 0; l < s.nLayer; l++) {
        for (let i = 0; i < real; i++) {
          for (let d = 0; d < s.depth; d++) {
            const o = slot * per + ((l * B + i) * s.depth + d) * 3;
            if (m[o + 2]! > 0) {
              sums.loss[d]! += m[o]!;
              sums.hits[d]! += m[o + 1]!;
              sums.targets[d]! += m[o + 2]!;
              sums.groups[d]!++;
            }
          }
        }
      }
    }
    this.#pending = [];
  }

  /** The current parameters. */
  async readParams(): Promise<Float32Array> {
    const [b] = await readback(this.#gpu, [this.#params]);
    return new Float32Array(b!);
  }

  /** The gradients of the last training step. */
  async readGrads(): Promise<Float32Array> {
    const [b] = await readback(this.#gpu, [this.#grads]);
    return new Float32Array(b!);
  }

  /** Frees every buffer. */
  destroy(): void {
    for (const b of this.#buffers) b.destroy();
  }
}

function summarise(s: MetricSums): { loss: number; recall: number[] } {
  let loss = 0;
  let groups = 0;
  s.loss.forEach((v, d) => {
    loss += v;
    groups += s.groups[d]!;
  });
  return {
    loss: groups > 0 ? loss / groups : NaN,
    recall: s.hits.map((h, d) => s.targets[d]! > 0 ? h / s.targets[d]! : NaN),
  };
}

/** Formats recall per distance: `d1 0.812 d2 0.640`. */
export function formatRecall(r: readonly number[]): string {
  return r.map((v, d) => `d${d + 1} ${v.toFixed(3)}`).join(" ");
}

/**
 * Trains a shadow model on a routing dataset (see the module doc) and
 * returns the weights of the epoch with the best mean validation recall.
 */
export async function trainShadow(
  gpu: Gpu,
  data: RoutingDataset,
  o: TrainShadowOptions,
): Promise<TrainResult> {
  const depth = o.depth ?? 2;
  const shape: ShadowShape = {
    nEmbd: data.nEmbd,
    nLayer: data.nLayer,
    nExpert: data.nExpert,
    nExpertUsed: data.nExpertUsed,
    depth,
    hidden: o.hidden ?? 256,
    residual: o.residual ?? data.routers !== undefined,
  };
  checkShadowShape(shape);
  if (shape.residual && !data.routers) {
    throw new RangeError(
      "residual training needs the model's routers in the data (collect writes them)",
    );
  }
  if (!(o.epochs >= 1) || !(o.batchSize >= 1)) {
    throw new RangeError(`epochs and batchSize must be ≥ 1, got ${o.epochs} and ${o.batchSize}`);
  }
  const seed = o.seed ?? 1;
  const split = o.split ?? splitBySequence(data, o.valFraction ?? 0.1, seed);
  if (split.train.length === 0) throw new RangeError("no training samples");
  const batch = Math.min(o.batchSize, split.train.length);
  const budget = o.memoryBudgetBytes ?? 2 ** 30;
  const targets = targetsFor(data, depth);
  const trainer = await ShadowTrainer.create(
    gpu,
    initShadow(shape, seed),
    data.hidden,
    targets,
    batch,
    budget,
    data.routers,
  );
  const opt = {
    lr: o.lr ?? 2e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: o.weightDecay ?? 0,
  };
  const rng = new Rng(seed ^ 0x5eed);
  const order = [...split.train];
  const epochs: EpochReport[] = [];
  let best: EpochReport | undefined;
  let bestParams: Float32Array | undefined;
  const score = (e: EpochReport) => {
    const r = split.val.length > 0 ? e.valRecall : e.trainRecall;
    return r.reduce((a, b) => a + (Number.isNaN(b) ? 0 : b), 0) / r.length;
  };
  try {
    for (let epoch = 1; epoch <= o.epochs; epoch++) {
      const t0 = performance.now();
      for (let i = order.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      const trainSums = emptySums(depth);
      for (let i = 0; i + batch <= order.length; i += batch) {
        await trainer.run(order.slice(i, i + batch), opt, trainSums);
      }
      await trainer.drainMetrics(trainSums);
      const valSums = emptySums(depth);
      for (let i = 0; i < split.val.length; i += batch) {
        await trainer.run(split.val.slice(i, i + batch), false, valSums);
      }
      await trainer.drainMetrics(valSums);
      const tr = summarise(trainSums);
      const va = summarise(valSums);
      const report: EpochReport = {
        epoch,
        trainLoss: tr.loss,
        valLoss: va.loss,
        trainRecall: tr.recall,
        valRecall: va.recall,
        ms: performance.now() - t0,
      };
      epochs.push(report);
      const improved = !best || score(report) > score(best);
      if (improved) {
        best = report;
        bestParams = await trainer.readParams();
      }
      o.log?.(
        `epoch ${epoch}/${o.epochs}: train loss ${tr.loss.toFixed(4)} recall@${data.nExpertUsed} ` +
          `${formatRecall(tr.recall)} | val loss ${
            va.loss.toFixed(4)
          } recall@${data.nExpertUsed} ` +
          `${formatRecall(va.recall)} | ${report.ms.toFixed(0)} ms${improved ? " *" : ""}`,
      );
    }
  } finally {
    trainer.destroy();
  }
  return {
    weights: {
      shape,
      params: bestParams!,
      info: {
        best_epoch: String(best!.epoch),
        val_recall: best!.valRecall.map((v) => v.toFixed(4)).join(","),
        train_recall: best!.trainRecall.map((v) => v.toFixed(4)).join(","),
        samples: String(data.nSamples),
        ...(data.info["model"] ? { model: data.info["model"] } : {}),
      },
    },
    best: best!,
    epochs,
    gpuBytes: trainer.gpuBytes,
    budgetBytes: budget,
    samples: { train: split.train.length, val: split.val.length },
  };
}
