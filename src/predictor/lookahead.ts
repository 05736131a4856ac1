/**
 * Next-layer gate lookahead: the router of layer l+1+d applied to the hidden
 * state entering layer l's MoE step (normalised with layer l+1+d's
 * `ffn_norm`), top-k on the GPU. No training; the residual stream changes
 * little from one layer to the next, so the next router mostly picks the same
 * experts from it (about 88 % of routed slots one layer ahead on real
 * Qwen3-MoE models, as reported). Predicts within the token only: the next
 * token's first layers are left to another predictor.
 *
 * Top-k of the router logits (+ their bias, GPT-OSS) is the top-k of the
 * softmax or sigmoid probabilities (both are monotonic). Where the target
 * layer selects with a bias added to the probabilities (`exp_probs_b`,
 * DeepSeek-V3, Kimi-K2) or within the best expert groups
 * (`expert_group_count`), that order differs from the logits', so those
 * layers are ranked by the router kernel itself: probabilities + selection
 * bias, group limit, top-k, as the model routes. Leading dense blocks
 * (DeepSeek) have no router and are not predicted.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer } from "../gpu/buffers.ts";
import { type GpuWeight, type Op, recordOps } from "../gpu/ops/op.ts";
import { prepareRmsNorm } from "../gpu/ops/norm.ts";
import { prepareMatmul } from "../gpu/ops/matmul.ts";
import { prepareAddBias } from "../gpu/ops/elementwise.ts";
import { type Gating, prepareRouter } from "../gpu/ops/router.ts";
import { tensorName as tn, Tensors } from "../gguf/names.ts";
import { prepareTopk } from "./kernels.ts";
import {
  decodePredictions,
  type ExpertPredictor,
  type HiddenSource,
  type LayerPrediction,
} from "./predictor.ts";

/** The model weights the lookahead reads. */
export interface RouterWeights {
  /** An f32 vector (`blk.N.ffn_norm.weight`). */
  vector(name: string): GPUBuffer;
  /** An f32 vector if the model has it (`blk.N.ffn_gate_inp.bias`). */
  maybeVector(name: string): GPUBuffer | undefined;
  /** A matrix (`blk.N.ffn_gate_inp.weight`). */
  matrix(name: string): GpuWeight;
}

/** The model's router inputs, as its config states them (`src/model/config.ts`). */
export interface RouterInputs {
  /** The FFN input norm's tensor (`ModelConfig.ffnNorm`; default `ffn_norm`). */
  ffnNorm?: string;
  /** The router adds `ffn_gate_inp.bias` to its logits (`ModelConfig.routerBias`). */
  routerBias?: boolean;
}

/** Layer `l`'s FFN input norm: the config's `ffnNorm` (`ffn_norm`, or GPT-OSS's `post_attention_norm`). */
export function ffnNormOf(w: RouterWeights, l: number, o: RouterInputs): GPUBuffer {
  return w.vector(tn(o.ffnNorm ?? Tensors.ffnNorm, l));
}

/**
 * Records, for each source layer l and distance d with a routed target
 * layer t = l+1+d, `logits[token, l, d] (+)= router_t · ffn_norm_t(hidden_l)`
 * (+ the router's logit bias), reusing one scratch row per token. Logits are
 * f32 `[tokens, nLayer, depth·nExpert]`.
 */
export async function prepareLookaheadLogits(
  gpu: Gpu,
  w: RouterWeights,
  source: HiddenSource,
  o: RouterInputs & {
    nLayer: number;
    nEmbd: number;
    nExpert: number;
    rmsEps: number;
    depth: number;
    nLayerDenseLead?: number;
    xn: GPUBuffer;
    logits: GPUBuffer;
    accumulate: boolean;
    label: string;
  },
): Promise<Op[]> {
  const { nLayer: L, nEmbd: E, nExpert: N, depth: D } = o;
  const ops: Op[] = [];
  for (let l = 0; l < L; l++) {
    for (let d = 0; d < D; d++) {
      const t = l + 1 + d;
      if (t >= L || t < (o.nLayerDenseLead ?? 0)) continue;
      const y = { buffer: o.logits, offset: (l * D + d) * N, stride: L * D * N };
      // One scratch row per token, reused: dispatches in a pass run in order.
      ops.push(
        await prepareRmsNorm(gpu, {
          x: source.hidden(l),
          y: { buffer: o.xn, offset: 0, stride: E },
          n: E,
          weight: ffnNormOf(w, t, o),
          eps: o.rmsEps,
          label: `${o.label}.${l}+${d + 1}.norm`,
        }),
        ...await prepareMatmul(gpu, {
          w: w.matrix(tn(Tensors.ffnGateInp, t)),
          x: { buffer: o.xn, offset: 0, stride: E },
          y,
          step: source.step,
          accumulate: o.accumulate,
          label: `${o.label}.${l}+${d + 1}.router`,
        }),
      );
      if (o.routerBias) {
        const bias = w.vector(tn(Tensors.ffnGateInp, t, "bias"));
        ops.push(
          await prepareAddBias(gpu, { y, bias, n: N, label: `${o.label}.${l}+${d + 1}.bias` }),
        );
      }
    }
  }
  return ops;
}

/** Options of {@linkcode LookaheadPredictor.create}. */
export interface LookaheadOptions extends RouterInputs {
  /** Layers of the model. */
  nLayer: number;
  /** Hidden size. */
  nEmbd: number;
  /** Experts per layer. */
  nExpert: number;
  /** Experts chosen per token. */
  nExpertUsed: number;
  /** The model's RMSNorm epsilon. */
  rmsEps: number;
  /** Layers predicted ahead (default 1: the next layer). */
  depth?: number;
  /** Experts kept per predicted layer (default 2 × nExpertUsed, at most nExpert). */
  topK?: number;
  /** Leading blocks without a router (DeepSeek): not predicted. */
  nLayerDenseLead?: number;
  /** The router's probability function (default softmax). */
  gating?: Gating;
  /** Expert groups for group-limited routing (`expert_group_count`; default 1 = none). */
  nExpertGroups?: number;
  /** Groups a token routes into (`expert_group_used_count`). */
  nExpertGroupsUsed?: number;
  /**
   * Rank as the router selects (selection bias, group limit) where the model
   * does (default true); false ranks by the logits alone, for comparison.
   */
  routerSelection?: boolean;
}

/** The lookahead on the GPU as an {@linkcode ExpertPredictor}. */
export class LookaheadPredictor implements ExpertPredictor {
  /** Always `"lookahead"`. */
  readonly name = "lookahead";
  /** Layers predicted ahead. */
  readonly depth: number;
  /** Experts per prediction. */
  readonly topK: number;
  /** u32 `[maxTokens, nLayer, depth, topK]`. */
  readonly output: GPUBuffer;
  readonly #ops: Op[];
  readonly #buffers: GPUBuffer[];
  readonly #maxTokens: number;
  readonly #nLayer: number;

  private constructor(
    depth: number,
    topK: number,
    nLayer: number,
    output: GPUBuffer,
    ops: Op[],
    buffers: GPUBuffer[],
    maxTokens: number,
  ) {
    this.depth = depth;
    this.topK = topK;
    this.#nLayer = nLayer;
    this.output = output;
    this.#ops = ops;
    this.#buffers = buffers;
    this.#maxTokens = maxTokens;
  }

  /** Prepares the kernels: per (layer, distance) a norm and a router product, then one top-k. */
  static async create(
    gpu: Gpu,
    w: RouterWeights,
    source: HiddenSource,
    o: LookaheadOptions,
  ): Promise<LookaheadPredictor> {
    const { nLayer: L, nEmbd: E, nExpert: N } = o;
    const D = o.depth ?? 1;
    const nGroup = o.nExpertGroups ?? 1;
    const nGroupUsed = o.nExpertGroupsUsed || nGroup;
    // with a group limit, at most the experts of the groups kept can be chosen
    const choosable = nGroup > 1 ? nGroupUsed * (N / nGroup) : N;
    const topK = Math.min(choosable, o.topK ?? 2 * o.nExpertUsed);
    const T = source.maxTokens;
    const xn = createBuffer(gpu, { label: "lookahead.xn", size: 4 * T * E }); // [T, E]
    const logits = createBuffer(gpu, { label: "lookahead.logits", size: 4 * T * L * D * N }); // [T, L, D, N]
    const output = createBuffer(gpu, { label: "lookahead.output", size: 4 * T * L * D * topK });
    const ops = await prepareLookaheadLogits(gpu, w, source, {
      ...o,
      depth: D,
      xn,
      logits,
      accumulate: false,
      label: "lookahead",
    });
    ops.push(
      await prepareTopk(gpu, {
        scores: logits,
        ids: output,
        nExpert: N,
        k: topK,
        depth: D,
        nLayer: L,
        groups: { perToken: L * D, step: source.step },
        crossToken: false,
        label: "lookahead.topk",
      }),
    );
    // DeepSeek-V3-style selection: re-rank those rows as the target layer's router does.
    const buffers = [xn, logits, output];
    let weights: GPUBuffer | undefined;
    for (let l = 0; l < L; l++) {
      for (let d = 0; d < D; d++) {
        const t = l + 1 + d;
        if (t >= L || t < (o.nLayerDenseLead ?? 0)) continue;
        const selectionBias = w.maybeVector(tn(Tensors.ffnExpProbsB, t, "bias"));
        if ((!selectionBias && nGroup <= 1) || o.routerSelection === false) continue;
        if (!weights) {
          weights = createBuffer(gpu, { label: "lookahead.weights", size: 4 * T * topK });
          buffers.push(weights);
        }
        ops.push(
          await prepareRouter(gpu, {
            logits: { buffer: logits, offset: (l * D + d) * N, stride: L * D * N },
            // the logits already hold the router's logit bias (GPT-OSS)
            selectionBias,
            ids: { buffer: output, offset: (l * D + d) * topK, stride: L * D * topK },
            weights: { buffer: weights, offset: 0, stride: topK },
            nExpert: N,
            k: topK,
            gating: o.gating ?? "softmax",
            nGroup,
            nGroupUsed,
            label: `lookahead.${l}+${d + 1}.select`,
          }),
        );
      }
    }
    return new LookaheadPredictor(D, topK, L, output, ops, buffers, T);
  }

  /** Records the lookahead for a batch (nothing for batches over `maxTokens`). */
  record(encoder: GPUCommandEncoder, nTokens: number): void {
    if (nTokens > this.#maxTokens) return;
    const pass = encoder.beginComputePass({ label: `lookahead×${nTokens}` });
    recordOps(pass, this.#ops, nTokens);
    pass.end();
  }

  /** Decodes the read-back output for token `token` and layer `source`. */
  predict(source: number, output?: Uint32Array, token = 0): LayerPrediction[] {
    if (!output) return [];
    return decodePredictions(
      { nLayer: this.#nLayer, depth: this.depth, topK: this.topK },
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
