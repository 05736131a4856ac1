/**
 * The learned shadow predictor: a small MLP that reads the hidden state
 * entering layer l's MoE step and scores every expert of the next `depth`
 * layers (past the last layer: the next token's first layers).
 *
 * ```
 * x̂ = x / rms(x)                                   // [nEmbd], no weight
 * h = relu(W1 · x̂ + layerEmbedding[l])              // [hidden]
 * logits[d] = W2[l] · h + b2[l]                     // [depth, nExpert]
 *           (+ router[l+1+d] · (ffn_norm[l+1+d] ⊙ x̂))   residual mode
 * ```
 *
 * W1 is shared by every layer; the layer embedding (a learned [nLayer,
 * hidden] table: a one-hot layer id through W1's extra columns) tells the
 * hidden units which layer they read; each source layer has its own output
 * head, because each predicts other routers.
 *
 * Residual mode (the default when the training data holds the routers): the
 * MLP learns a correction to the gate lookahead's logits rather than the
 * routers themselves. A plain MLP has to learn every router from data and,
 * on the generated test models, only tied the lookahead with four times the
 * data; as a correction it starts where the lookahead is and adds what the
 * lookahead misses (the expert FFN's and the next attention's change to the
 * residual stream). It costs no weights (the model's routers are used) and
 * little time (the lookahead's kernels). The next token's layers have no
 * lookahead term.
 *
 * Inference is recorded after the output head in the token's submit: one
 * RMSNorm per layer into a `[tokens, nLayer, nEmbd]` matrix, two strided
 * products (`shaders/predictor.wgsl`) over the layer stack, in residual mode
 * a norm and a router product per (layer, distance) added to the logits, and
 * a top-k.
 *
 * Weights are a safetensors file: `w1` F32 [hidden, nEmbd],
 * `layer_embedding` F32 [nLayer, hidden], `w2` F32 [nLayer, depth·nExpert,
 * hidden], `b2` F32 [nLayer, depth·nExpert], with the shape in the metadata
 * (`format: od-moe-shadow`). The trainer keeps them as one flat f32 buffer in
 * that order ({@linkcode shadowLayout}).
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer, upload } from "../gpu/buffers.ts";
import { type Op, recordOps } from "../gpu/ops/op.ts";
import { prepareRmsNorm } from "../gpu/ops/norm.ts";
import { openSafetensors, writeSafetensors } from "../safetensors/mod.ts";
import { Rng } from "../util/rng.ts";
import { prepareGemm, prepareTopk } from "./kernels.ts";
import { prepareLookaheadLogits, type RouterInputs, type RouterWeights } from "./lookahead.ts";
import {
  decodePredictions,
  type ExpertPredictor,
  type HiddenSource,
  type LayerPrediction,
} from "./predictor.ts";

/** The sizes that define a shadow model. */
export interface ShadowShape {
  /** Hidden size of the model it predicts. */
  readonly nEmbd: number;
  /** Layers of the model. */
  readonly nLayer: number;
  /** Experts per layer. */
  readonly nExpert: number;
  /** Experts the model chooses per token (the training targets per layer). */
  readonly nExpertUsed: number;
  /** Layers predicted ahead. */
  readonly depth: number;
  /** Hidden units of the MLP. */
  readonly hidden: number;
  /** The MLP corrects the gate lookahead's logits (see the module doc). */
  readonly residual: boolean;
}

/** Element offsets of each tensor in the flat parameter buffer, and the total. */
export interface ShadowLayout {
  /** `w1` [hidden, nEmbd]. */
  readonly w1: number;
  /** `layer_embedding` [nLayer, hidden]. */
  readonly b1: number;
  /** `w2` [nLayer, depth·nExpert, hidden]. */
  readonly w2: number;
  /** `b2` [nLayer, depth·nExpert]. */
  readonly b2: number;
  /** Parameters in all. */
  readonly total: number;
}

/** The flat layout of a shape's parameters. */
export function shadowLayout(s: ShadowShape): ShadowLayout {
  const out = s.depth * s.nExpert;
  const w1 = 0;
  const b1 = w1 + s.hidden * s.nEmbd;
  const w2 = b1 + s.nLayer * s.hidden;
  const b2 = w2 + s.nLayer * out * s.hidden;
  return { w1, b1, w2, b2, total: b2 + s.nLayer * out };
}

/** Bytes of a shadow model's weights file (F32), header aside. */
export function shadowBytes(s: ShadowShape): number {
  return shadowLayout(s).total * 4;
}

/** A shadow model's weights: the shape and the flat parameters. */
export interface ShadowWeights {
  /** The shape. */
  readonly shape: ShadowShape;
  /** f32 parameters in {@linkcode shadowLayout} order. */
  readonly params: Float32Array;
  /** Free-form facts kept in the file's metadata (model name, training figures). */
  readonly info?: Readonly<Record<string, string>>;
}

/** Checks a shape's fields; throws a RangeError naming the bad one. */
export function checkShadowShape(s: ShadowShape): void {
  for (const k of ["nEmbd", "nLayer", "nExpert", "nExpertUsed", "depth", "hidden"] as const) {
    if (!Number.isInteger(s[k]) || s[k] < 1) {
      throw new RangeError(`shadow model: ${k} must be a positive integer, got ${s[k]}`);
    }
  }
  if (s.nExpertUsed > s.nExpert) {
    throw new RangeError(`shadow model: nExpertUsed ${s.nExpertUsed} > nExpert ${s.nExpert}`);
  }
}

/**
 * Fresh weights: W1 He-normal, W2 small normal (so training starts near
 * uniform scores), biases zero.
 */
export function initShadow(shape: ShadowShape, seed = 1): ShadowWeights {
  checkShadowShape(shape);
  const lay = shadowLayout(shape);
  const p = new Float32Array(lay.total);
  const rng = new Rng(seed);
  const s1 = Math.sqrt(2 / shape.nEmbd);
  for (let i = lay.w1; i < lay.b1; i++) p[i] = s1 * rng.normal();
  const s2 = 0.1 / Math.sqrt(shape.hidden);
  for (let i = lay.w2; i < lay.b2; i++) p[i] = s2 * rng.normal();
  return { shape, params: p };
}

const FORMAT = "od-moe-shadow";

/** Writes weights as safetensors (see the module doc for the tensors and metadata). */
export async function saveShadow(path: string, w: ShadowWeights): Promise<void> {
  const s = w.shape;
  const lay = shadowLayout(s);
  const bytes = (from: number, to: number) =>
    new Uint8Array(w.params.buffer, w.params.byteOffset + from * 4, (to - from) * 4);
  const out = s.depth * s.nExpert;
  await writeSafetensors(path, [
    { name: "w1", dtype: "F32", shape: [s.hidden, s.nEmbd], data: bytes(lay.w1, lay.b1) },
    {
      name: "layer_embedding",
      dtype: "F32",
      shape: [s.nLayer, s.hidden],
      data: bytes(lay.b1, lay.w2),
    },
    { name: "w2", dtype: "F32", shape: [s.nLayer, out, s.hidden], data: bytes(lay.w2, lay.b2) },
    { name: "b2", dtype: "F32", shape: [s.nLayer, out], data: bytes(lay.b2, lay.total) },
  ], {
    metadata: {
      ...w.info,
      format: FORMAT,
      version: "1",
      n_embd: String(s.nEmbd),
      n_layer: String(s.nLayer),
      n_expert: String(s.nExpert),
      n_expert_used: String(s.nExpertUsed),
      depth: String(s.depth),
      hidden: String(s.hidden),
      lookahead_residual: String(s.residual),
      activation: "relu",
      input: "rms-normalised residual stream entering the MoE step, no weight",
    },
  });
}

/** Reads weights written by {@linkcode saveShadow}; errors name the file and what is wrong. */
export function loadShadow(path: string): ShadowWeights {
  const f = openSafetensors(path);
  try {
    const m = f.metadata;
    if (m["format"] !== FORMAT) {
      throw new Error(
        `${path}: not a shadow predictor (metadata format is ${
          JSON.stringify(m["format"])
        }, expected "${FORMAT}"); train one with deno task train-shadow`,
      );
    }
    const int = (k: string) => {
      const v = Number(m[k]);
      if (!Number.isInteger(v) || v < 1) throw new Error(`${path}: metadata ${k} = ${m[k]}`);
      return v;
    };
    const shape: ShadowShape = {
      nEmbd: int("n_embd"),
      nLayer: int("n_layer"),
      nExpert: int("n_expert"),
      nExpertUsed: int("n_expert_used"),
      depth: int("depth"),
      hidden: int("hidden"),
      residual: m["lookahead_residual"] === "true",
    };
    const lay = shadowLayout(shape);
    const params = new Float32Array(lay.total);
    const out = shape.depth * shape.nExpert;
    const want: [string, number[], number][] = [
      ["w1", [shape.hidden, shape.nEmbd], lay.w1],
      ["layer_embedding", [shape.nLayer, shape.hidden], lay.b1],
      ["w2", [shape.nLayer, out, shape.hidden], lay.w2],
      ["b2", [shape.nLayer, out], lay.b2],
    ];
    for (const [name, dims, off] of want) {
      const t = f.tensor(name);
      if (t.dtype !== "F32" || t.shape.join(",") !== dims.join(",")) {
        throw new Error(
          `${path}: tensor ${name} is ${t.dtype} ${JSON.stringify(t.shape)}, the metadata ` +
            `implies F32 ${JSON.stringify(dims)}`,
        );
      }
      const b = f.bytes(t);
      params.set(new Float32Array(b.slice().buffer), off);
    }
    const info: Record<string, string> = {};
    for (const [k, v] of Object.entries(m)) info[k] = v;
    return { shape, params, info };
  } finally {
    f.close();
  }
}

/** The model sizes a shadow model must match. */
export interface PredictedModel {
  /** Hidden size. */
  readonly nEmbd: number;
  /** Layers. */
  readonly nLayer: number;
  /** Experts per layer. */
  readonly nExpert: number;
  /** Experts chosen per token. */
  readonly nExpertUsed: number;
}

/** Throws unless the weights were trained for a model of this shape. */
export function checkShadowFits(w: ShadowWeights, m: PredictedModel, where = "shadow model"): void {
  for (const k of ["nEmbd", "nLayer", "nExpert", "nExpertUsed"] as const) {
    if (w.shape[k] !== m[k]) {
      throw new Error(
        `${where}: trained for ${k} = ${w.shape[k]}, the model has ${m[k]} ` +
          `(a predictor for another model?); collect and train one for this model`,
      );
    }
  }
}

/** Options of {@linkcode ShadowPredictor.create}. */
export interface ShadowPredictorOptions extends RouterInputs {
  /** Experts kept per predicted layer (default 2 × nExpertUsed, at most nExpert). */
  topK?: number;
  /** RMSNorm epsilon of the input normalisation (default 1e-6, as collected). */
  eps?: number;
  /** The model's norms and routers: required in residual mode. */
  routers?: RouterWeights;
  /** The model's RMSNorm epsilon (residual mode; default 1e-6). */
  rmsEps?: number;
  /** Leading blocks without a router (DeepSeek; residual mode). */
  nLayerDenseLead?: number;
}

/** The shadow model on the GPU as an {@linkcode ExpertPredictor}. */
export class ShadowPredictor implements ExpertPredictor {
  /** Always `"shadow"`. */
  readonly name = "shadow";
  /** Layers predicted ahead. */
  readonly depth: number;
  /** Experts per prediction. */
  readonly topK: number;
  /** u32 `[maxTokens, nLayer, depth, topK]`. */
  readonly output: GPUBuffer;
  readonly #ops: Op[];
  readonly #buffers: GPUBuffer[];
  readonly #maxTokens: number;

  private constructor(
    readonly shape: ShadowShape,
    topK: number,
    output: GPUBuffer,
    ops: Op[],
    buffers: GPUBuffer[],
    maxTokens: number,
  ) {
    this.depth = shape.depth;
    this.topK = topK;
    this.output = output;
    this.#ops = ops;
    this.#buffers = buffers;
    this.#maxTokens = maxTokens;
  }

  /** Uploads the weights and prepares the kernels reading `source`. */
  static async create(
    gpu: Gpu,
    w: ShadowWeights,
    source: HiddenSource,
    o: ShadowPredictorOptions = {},
  ): Promise<ShadowPredictor> {
    const s = w.shape;
    checkShadowShape(s);
    const lay = shadowLayout(s);
    if (w.params.length !== lay.total) {
      throw new RangeError(
        `shadow model: ${w.params.length} parameters, its shape needs ${lay.total}`,
      );
    }
    const topK = Math.min(s.nExpert, o.topK ?? 2 * s.nExpertUsed);
    const T = source.maxTokens;
    const { nLayer: L, nEmbd: E, hidden: H } = s;
    const DN = s.depth * s.nExpert;
    const params = createBuffer(gpu, { label: "shadow.params", size: lay.total * 4 });
    upload(gpu, params, w.params);
    const x = createBuffer(gpu, { label: "shadow.x", size: 4 * T * L * E }); // [T, L, E]
    const h = createBuffer(gpu, { label: "shadow.h", size: 4 * T * L * H }); // [T, L, H]
    const logits = createBuffer(gpu, { label: "shadow.logits", size: 4 * T * L * DN }); // [T, L, DN]
    const output = createBuffer(gpu, { label: "shadow.output", size: 4 * T * L * s.depth * topK });
    const ops: Op[] = [];
    for (let l = 0; l < L; l++) {
      ops.push(
        await prepareRmsNorm(gpu, {
          x: source.hidden(l),
          y: { buffer: x, offset: l * E, stride: L * E },
          n: E,
          eps: o.eps ?? 1e-6,
          label: `shadow.norm.${l}`,
        }),
      );
    }
    const perToken = { step: source.step };
    ops.push(
      await prepareGemm(gpu, {
        a: { buffer: x, z: E, i: L * E, j: 1 },
        b: { buffer: params, off: lay.w1, z: 0, i: 1, j: E },
        c: { buffer: h, z: H, i: L * H, j: 1 },
        bias: { buffer: params, off: lay.b1, z: H },
        epilogue: "relu",
        m: 1,
        perToken,
        n: H,
        k: E,
        z: L,
        shape: [1, 64],
        label: "shadow.fc1",
      }),
      await prepareGemm(gpu, {
        a: { buffer: h, z: H, i: L * H, j: 1 },
        b: { buffer: params, off: lay.w2, z: DN * H, i: 1, j: H },
        c: { buffer: logits, z: DN, i: L * DN, j: 1 },
        bias: { buffer: params, off: lay.b2, z: DN },
        m: 1,
        perToken,
        n: DN,
        k: H,
        z: L,
        shape: [1, 64],
        label: "shadow.fc2",
      }),
    );
    const buffers = [params, x, h, logits, output];
    if (s.residual) {
      if (!o.routers) {
        throw new TypeError(
          "this shadow model corrects the gate lookahead (residual mode): pass the model's routers",
        );
      }
      const xn = createBuffer(gpu, { label: "shadow.xn", size: 4 * T * E }); // [T, E]
      buffers.push(xn);
      ops.push(
        ...await prepareLookaheadLogits(gpu, o.routers, source, {
          nLayer: L,
          nEmbd: E,
          nExpert: s.nExpert,
          rmsEps: o.rmsEps ?? 1e-6,
          depth: s.depth,
          nLayerDenseLead: o.nLayerDenseLead,
          ffnNorm: o.ffnNorm,
          routerBias: o.routerBias,
          xn,
          logits,
          accumulate: true,
          label: "shadow.lookahead",
        }),
      );
    }
    ops.push(
      await prepareTopk(gpu, {
        scores: logits,
        ids: output,
        nExpert: s.nExpert,
        k: topK,
        depth: s.depth,
        nLayer: L,
        groups: { perToken: L * s.depth, step: source.step },
        crossToken: true,
        label: "shadow.topk",
      }),
    );
    return new ShadowPredictor(s, topK, output, ops, buffers, T);
  }

  /** Records the MLP for a batch (nothing for batches over `maxTokens`). */
  record(encoder: GPUCommandEncoder, nTokens: number): void {
    if (nTokens > this.#maxTokens) return;
    const pass = encoder.beginComputePass({ label: `shadow×${nTokens}` });
    recordOps(pass, this.#ops, nTokens);
    pass.end();
  }

  /** Decodes the read-back output for token `token` and layer `source`. */
  predict(source: number, output?: Uint32Array, token = 0): LayerPrediction[] {
    if (!output) return [];
    return decodePredictions(
      { nLayer: this.shape.nLayer, depth: this.depth, topK: this.topK },
      output,
      token,
      source,
    );
  }

  /** Frees the GPU buffers. */
  destroy(): void {
    for (const b of this.#buffers) b.destroy();
  }
}
