/**
 * Model hyperparameters read from GGUF metadata, with llama.cpp's defaults,
 * and the tensor plan type every architecture declares.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";

/** How RoPE pairs dimensions: adjacent pairs (llama) or the two halves (GPT-NeoX, Qwen). */
export type RopeType = "normal" | "neox";

/** How router logits become expert probabilities. */
export type GatingFunc = "softmax" | "sigmoid";

/** Everything the forward pass needs to know about a model's shape. */
export interface ModelConfig {
  /** `general.architecture`. */
  readonly arch: string;
  /** Tokens in the vocabulary (rows of `token_embd`). */
  readonly nVocab: number;
  /** Width of the residual stream. */
  readonly nEmbd: number;
  /** Transformer blocks. */
  readonly nLayer: number;
  /** Context length the model was trained with. */
  readonly nCtxTrain: number;
  /** Query heads. */
  readonly nHead: number;
  /** Key/value heads (grouped-query attention when < nHead). */
  readonly nHeadKv: number;
  /** Key (and query) head width. */
  readonly headDimK: number;
  /** Value head width. */
  readonly headDimV: number;
  /** Dimensions of each head that RoPE rotates. */
  readonly nRot: number;
  /** RoPE pairing. */
  readonly ropeType: RopeType;
  /** RoPE frequency base. */
  readonly ropeFreqBase: number;
  /** RoPE frequency scale (1 / scaling factor). */
  readonly ropeFreqScale: number;
  /** YaRN extrapolation mix (0 = off). */
  readonly yarnExtFactor: number;
  /** YaRN attention factor. */
  readonly yarnAttnFactor: number;
  /** YaRN beta fast. */
  readonly yarnBetaFast: number;
  /** YaRN beta slow. */
  readonly yarnBetaSlow: number;
  /** Original context length for YaRN. */
  readonly nCtxOrig: number;
  /** RMSNorm epsilon. */
  readonly rmsEps: number;
  /** Routed experts per MoE layer. */
  readonly nExpert: number;
  /** Experts chosen per token. */
  readonly nExpertUsed: number;
  /** Hidden width of one routed expert. */
  readonly nFfExp: number;
  /** Hidden width of the shared expert (0 = none). */
  readonly nFfShexp: number;
  /** The shared expert's output is scaled by sigmoid(`ffn_gate_inp_shexp` · x). */
  readonly sharedExpertGated: boolean;
  /** Router probabilities. */
  readonly gating: GatingFunc;
  /** Renormalise the chosen experts' weights to sum to 1. */
  readonly normTopK: boolean;
  /** Routed output scale (0 or 1 = none). */
  readonly expertWeightsScale: number;
  /** q/k RMSNorm: none, per head (Qwen3) or over the whole projection (OLMoE). */
  readonly qkNorm: "none" | "head" | "full";
  /** Attention softmax scale. */
  readonly attnScale: number;
}

/** One tensor an architecture needs. */
export interface TensorPlanEntry {
  /** Full tensor name. */
  readonly name: string;
  /** Expected shape, ggml order. */
  readonly shape: readonly number[];
  /** Resident base weight, or a routed-expert stack streamed on demand. */
  readonly role: "base" | "expert";
  /** May be absent (biases, a tied output head). */
  readonly optional?: boolean;
}

/** A model configuration error naming the file and key. */
export class ModelConfigError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "ModelConfigError";
  }
}

/** Reads the hyperparameters every transformer shares, with llama.cpp's defaults. */
export function readCommonConfig(md: GgufMetadata, arch: string) {
  const k = (key: string) => archKey(key, arch);
  const nEmbd = md.number(k(Keys.embeddingLength));
  const nHead = md.number(k(Keys.headCount));
  const nHeadKv = md.number(k(Keys.headCountKv), nHead);
  if (nHead <= 0 || nHeadKv <= 0 || nHead % nHeadKv !== 0) {
    throw new ModelConfigError(
      `${arch}: head_count ${nHead} must be a positive multiple of head_count_kv ${nHeadKv}`,
    );
  }
  const headDimK = md.number(k(Keys.keyLength), Math.floor(nEmbd / nHead));
  const headDimV = md.number(k(Keys.valueLength), Math.floor(nEmbd / nHead));
  const nCtxTrain = md.number(k(Keys.contextLength));
  const scalingFactor = md.number(k(Keys.ropeScalingFactor), 0);
  const scalingType = md.string(k(Keys.ropeScalingType), "linear");
  const tokens = md.strings(Keys.tokenizerTokens);
  const nVocab = md.number(k(Keys.vocabSize), tokens?.length ?? 0);
  return {
    arch,
    nVocab,
    nEmbd,
    nLayer: md.number(k(Keys.blockCount)),
    nCtxTrain,
    nHead,
    nHeadKv,
    headDimK,
    headDimV,
    nRot: md.number(k(Keys.ropeDimensionCount), headDimK),
    ropeFreqBase: md.number(k(Keys.ropeFreqBase), 10000),
    ropeFreqScale: scalingFactor === 0 ? 1 : 1 / scalingFactor,
    yarnExtFactor: scalingType === "yarn" ? 1 : 0,
    yarnAttnFactor: md.number(k(Keys.ropeScalingAttnFactor), 1),
    yarnBetaFast: md.number(k(Keys.ropeScalingYarnBetaFast), 32),
    yarnBetaSlow: md.number(k(Keys.ropeScalingYarnBetaSlow), 1),
    nCtxOrig: md.number(k(Keys.ropeScalingOrigCtx), nCtxTrain),
    rmsEps: md.number(k(Keys.layerNormRmsEps), 1e-5),
    nExpert: md.number(k(Keys.expertCount), 0),
    nExpertUsed: md.number(k(Keys.expertUsedCount), 0),
    expertWeightsScale: md.number(k(Keys.expertWeightsScale), 0),
    attnScale: 1 / Math.sqrt(headDimK),
  };
}

/** Checks the MoE hyperparameters llama.cpp asserts on. */
export function checkMoeConfig(c: ModelConfig): void {
  if (c.nExpert <= 0 || c.nExpertUsed <= 0 || c.nExpertUsed > c.nExpert) {
    throw new ModelConfigError(
      `${c.arch}: expert_count ${c.nExpert} and expert_used_count ${c.nExpertUsed} must satisfy 0 < used ≤ count`,
    );
  }
  if (c.nRot > c.headDimK || c.nRot % 2 !== 0) {
    throw new ModelConfigError(
      `${c.arch}: rope.dimension_count ${c.nRot} must be even and ≤ key_length ${c.headDimK}`,
    );
  }
}
