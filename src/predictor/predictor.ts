/**
 * The one interface behind every expert predictor: from the hidden state
 * entering a layer's MoE step (and the routes seen so far), scored experts
 * for the next `depth` layers — past the last layer, the next token's first
 * layers. Three implementations:
 *
 * - {@linkcode LookaheadPredictor} (`lookahead.ts`): layer l+1's router
 *   applied to layer l's hidden state, on the GPU; no training.
 * - {@linkcode ShadowPredictor} (`shadow.ts`): a small trained MLP, on the GPU.
 * - {@linkcode HistoryPredictor} (here): the experts recent tokens used,
 *   counted with exponential decay, on the CPU.
 *
 * GPU predictors record their kernels after the output head into the
 * token's own encoder and write u32 ids `[tokens, nLayer, depth, topK]`
 * (entry `(t, l, d)`: the experts predicted from layer l for layer l+1+d,
 * best first, {@linkcode NONE} where there is no prediction), which the
 * engine reads back with the routes in the same sync.
 *
 * @module
 */

import type { ActView } from "../gpu/ops/op.ts";
import { NONE } from "./kernels.ts";

export { NONE } from "./kernels.ts";

/** Where a GPU predictor reads hidden states from. */
export interface HiddenSource {
  /** f32 rows `[tokens, nEmbd]`: the residual stream entering `layer`'s MoE step. */
  hidden(layer: number): ActView;
  /** The step buffer: `STEP.nTokens` is the batch's token count. */
  readonly step: GPUBuffer;
  /** Most tokens a batch may hold for the predictor (larger batches are not predicted). */
  readonly maxTokens: number;
}

/** Experts predicted for one future layer, best first. */
export interface LayerPrediction {
  /** Layers ahead of the source layer (1: the next layer). */
  readonly distance: number;
  /** The layer predicted: `source + distance`, or that minus nLayer for the next token. */
  readonly layer: number;
  /** The layer is the next token's. */
  readonly nextToken: boolean;
  /** Expert ids, best first. */
  readonly experts: readonly number[];
}

/** An expert predictor (see the module doc). */
export interface ExpertPredictor {
  /** `"lookahead"`, `"shadow"` or `"history"`. */
  readonly name: string;
  /** Layers predicted ahead of the source layer. */
  readonly depth: number;
  /** Experts predicted per layer. */
  readonly topK: number;
  /** GPU predictors: u32 `[maxTokens, nLayer, depth, topK]`, written by {@linkcode record}. */
  readonly output?: GPUBuffer;
  /** GPU predictors: records the kernels for a batch of `nTokens` into the token's encoder. */
  record?(encoder: GPUCommandEncoder, nTokens: number): void;
  /** Learns from accepted tokens' routes, u32 `[nTokens, nLayer, nExpertUsed]`. */
  observe?(routes: Uint32Array, nTokens: number): void;
  /**
   * Predictions from layer `source` of token `token` of a batch, for layers
   * `source + 1 … source + depth`: from `output`, the words of
   * {@linkcode output} read back (GPU predictors), or from what was observed.
   */
  predict(source: number, output?: Uint32Array, token?: number): LayerPrediction[];
  /** Frees GPU buffers. */
  destroy?(): void;
}

/** Sizes of a predictor's output. */
export interface PredictionShape {
  /** Layers of the model. */
  readonly nLayer: number;
  /** Distances predicted. */
  readonly depth: number;
  /** Experts per prediction. */
  readonly topK: number;
}

/** u32 words of a GPU predictor's output per token. */
export function predictionWords(s: PredictionShape): number {
  return s.nLayer * s.depth * s.topK;
}

/** Decodes the entries of token `token`, source layer `source`, from a GPU predictor's output. */
export function decodePredictions(
  s: PredictionShape,
  output: Uint32Array,
  token: number,
  source: number,
): LayerPrediction[] {
  const out: LayerPrediction[] = [];
  const base = (token * s.nLayer + source) * s.depth * s.topK;
  for (let d = 0; d < s.depth; d++) {
    const experts: number[] = [];
    for (let r = 0; r < s.topK; r++) {
      const e = output[base + d * s.topK + r]!;
      if (e !== NONE) experts.push(e);
    }
    if (experts.length === 0) continue;
    const target = source + 1 + d;
    out.push({
      distance: d + 1,
      layer: target % s.nLayer,
      nextToken: target >= s.nLayer,
      experts,
    });
  }
  return out;
}

/** Options of {@linkcode HistoryPredictor}. */
export interface HistoryOptions {
  /** Layers predicted ahead (default 1). */
  depth?: number;
  /** Experts predicted per layer (default 2 × nExpertUsed, at most nExpert). */
  topK?: number;
  /** Weight kept per token by older observations (default 0.9). */
  decay?: number;
}

/**
 * The experts used by recent tokens, per layer, counted with exponential
 * decay: a token's choice weighs `decay^age`. Needs no hidden state, so its
 * prediction for a layer does not depend on the source layer.
 */
export class HistoryPredictor implements ExpertPredictor {
  /** Always `"history"`. */
  readonly name = "history";
  /** Layers predicted ahead. */
  readonly depth: number;
  /** Experts predicted per layer. */
  readonly topK: number;
  /** Decay per token. */
  readonly decay: number;
  // [nLayer, nExpert] weights scaled by #scale (older tokens weigh less as #scale grows).
  readonly #counts: Float64Array;
  #scale = 1;

  /** An empty history for a model's shape. */
  constructor(
    readonly nLayer: number,
    readonly nExpert: number,
    readonly nExpertUsed: number,
    o: HistoryOptions = {},
  ) {
    this.depth = o.depth ?? 1;
    this.topK = Math.min(nExpert, o.topK ?? 2 * nExpertUsed);
    this.decay = o.decay ?? 0.9;
    if (!(this.decay > 0 && this.decay <= 1)) {
      throw new RangeError(`history decay must be in (0, 1], got ${this.decay}`);
    }
    this.#counts = new Float64Array(nLayer * nExpert);
  }

  /** Adds tokens' routes, u32 `[nTokens, nLayer, nExpertUsed]`, oldest first. */
  observe(routes: Uint32Array, nTokens: number): void {
    const { nLayer: L, nExpert: E, nExpertUsed: K } = this;
    for (let t = 0; t < nTokens; t++) {
      this.#scale /= this.decay;
      for (let l = 0; l < L; l++) {
        for (let k = 0; k < K; k++) {
          const e = routes[(t * L + l) * K + k]!;
          if (e < E) this.#counts[l * E + e]! += this.#scale;
        }
      }
    }
    if (this.#scale > 1e100) {
      for (let i = 0; i < this.#counts.length; i++) this.#counts[i]! /= this.#scale;
      this.#scale = 1;
    }
  }

  /** The `k` experts of `layer` with the largest decayed counts, best first (ties to the lower id; unseen experts never). */
  top(layer: number, k = this.topK): number[] {
    const E = this.nExpert;
    const out: number[] = [];
    const taken = new Uint8Array(E);
    for (let r = 0; r < k; r++) {
      let best = -1;
      let bv = 0;
      for (let e = 0; e < E; e++) {
        const v = this.#counts[layer * E + e]!;
        if (!taken[e] && v > bv) {
          bv = v;
          best = e;
        }
      }
      if (best < 0) break;
      taken[best] = 1;
      out.push(best);
    }
    return out;
  }

  /** The history's top experts of layers `source + 1 … source + depth` (the next token's past the last layer). */
  predict(source: number): LayerPrediction[] {
    const out: LayerPrediction[] = [];
    for (let d = 1; d <= this.depth; d++) {
      const target = source + d;
      const layer = target % this.nLayer;
      const experts = this.top(layer);
      if (experts.length > 0) {
        out.push({ distance: d, layer, nextToken: target >= this.nLayer, experts });
      }
    }
    return out;
  }

  /** Forgets everything seen. */
  reset(): void {
    this.#counts.fill(0);
    this.#scale = 1;
  }
}
