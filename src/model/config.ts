/**
 * Model hyperparameters read from GGUF metadata, with llama.cpp's defaults,
 * and the tensor plan type every architecture declares.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys, Tensors } from "../gguf/names.ts";
import { type GgufValue, gv } from "../gguf/value.ts";

/** How RoPE pairs dimensions: adjacent pairs (llama) or the two halves (GPT-NeoX, Qwen). */
export type RopeType = "normal" | "neox";

/**
 * How router logits become expert weights: softmax or sigmoid over every
 * expert (then top-k), or GPT-OSS's top-k of the logits with a softmax over
 * the k chosen (llama.cpp's `SOFTMAX_WEIGHT`).
 */
export type GatingFunc = "softmax" | "sigmoid" | "topk_softmax";

/** The expert FFN's gated unit: SwiGLU, or GPT-OSS's clamped variant (`swiglu_oai`). */
export type ExpertActivation = "swiglu" | "swiglu_oai";

/**
 * Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2): keys and values are
 * decompressed per head from one cached latent vector of `kvLoraRank`
 * elements plus one shared rotated key part of `ropeDim` elements.
 */
export interface MlaConfig {
  /** Rank of the query compression (`attention.q_lora_rank`); 0 = one `attn_q` (V2-Lite). */
  readonly qLoraRank: number;
  /** Width of the cached latent (`attention.kv_lora_rank`). */
  readonly kvLoraRank: number;
  /** Per-head width of the non-rotated part of q and k. */
  readonly nopeDim: number;
  /** Per-head width of the rotated part (`rope.dimension_count`). */
  readonly ropeDim: number;
  /** Per-head value width (`attention.value_length_mla`). */
  readonly vHeadDim: number;
}

/**
 * Gated DeltaNet (linear attention) layers of the hybrid Qwen models
 * (Qwen3-Next, Qwen3.5/3.6-MoE): a short causal conv1d over the q/k/v
 * projection, then per value head a state matrix updated by the delta rule.
 */
export interface DeltaNetConfig {
  /** Conv kernel width (`ssm.conv_kernel`). */
  readonly convKernel: number;
  /** Width of each q/k/v head and of the square state (`ssm.state_size`). */
  readonly stateSize: number;
  /** Value heads (`ssm.time_step_rank`). */
  readonly nVHeads: number;
  /** q/k heads (`ssm.group_count`); divides nVHeads. */
  readonly nKHeads: number;
  /** Per layer: a DeltaNet layer (true) or gated full attention (false). */
  readonly recurrent: readonly boolean[];
  /**
   * Value head h reads q/k head h / (nV / nK) (Qwen3-Next) rather than
   * h % nK (Qwen3.5's layout).
   */
  readonly interleaved: boolean;
  /** Beta and alpha come from one `ssm_ba` projection, per k head [beta | alpha] (Qwen3-Next). */
  readonly fusedBa: boolean;
}

/** Whether block `l` is a gated DeltaNet (recurrent) layer. */
export function isRecurrentLayer(c: ModelConfig, l: number): boolean {
  return c.deltaNet?.recurrent[l] ?? false;
}

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
  /** Key/value heads (grouped-query attention when < nHead; 1 with MLA: the shared latent). */
  readonly nHeadKv: number;
  /** Key (and query) head width (with MLA: decompressed, nope + rope). */
  readonly headDimK: number;
  /** Value head width (with MLA: decompressed). */
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
  /** Leading blocks whose FFN is dense rather than routed (DeepSeek); default 0. */
  readonly nLayerDenseLead?: number;
  /** Width of those blocks' dense FFN. */
  readonly nFf?: number;
  /** Expert groups for group-limited routing (`expert_group_count`); default 1 (off). */
  readonly nExpertGroups?: number;
  /** Groups each token may route into (`expert_group_used_count`). */
  readonly nExpertGroupsUsed?: number;
  /** Multi-head latent attention; absent = grouped-query attention with a K/V cache. */
  readonly mla?: MlaConfig;
  /** Per layer: the sliding window (key visible iff 0 ≤ q − k < window), 0 = full; absent = none. */
  readonly windows?: readonly number[];
  /** RoPE frequency base of the sliding-window layers (`rope.freq_base_swa`); default ropeFreqBase. */
  readonly ropeFreqBaseSwa?: number;
  /** The routed experts' gated unit; default SwiGLU. */
  readonly expertAct?: ExpertActivation;
  /**
   * The FFN input norm's tensor (`Tensors` name): `ffn_norm` (default), or
   * GPT-OSS's `post_attention_norm` (the same role). The FFN block, the
   * tensor plan and the predictor's router lookahead all read it here.
   */
  readonly ffnNorm?: string;
  /** Each head has a learned sink logit in its softmax denominator (`attn_sinks`, GPT-OSS). */
  readonly attnSinks?: boolean;
  /** The router adds a bias to its logits (`ffn_gate_inp.bias`, GPT-OSS). */
  readonly routerBias?: boolean;
  /**
   * Multi-token-prediction blocks after the `nLayer` trunk blocks
   * (`nextn_predict_layers`, DeepSeek/GLM); plain decoding skips them. Default 0.
   */
  readonly nNextn?: number;
  /** YaRN's log multiplier as llama.cpp holds it (DeepSeek's `mscale_all_dim`); default 0. */
  readonly yarnLogMul?: number;
  /**
   * The Q projection yields per head [q | gate] and the attention output is
   * multiplied by sigmoid(gate) (Qwen3-Next, Qwen3.5-MoE).
   */
  readonly attnGated?: boolean;
  /** Gated DeltaNet layers (hybrid models); absent = attention in every layer. */
  readonly deltaNet?: DeltaNetConfig;
}

/** Block `l`'s FFN input-norm tensor name. */
export function ffnNormName(c: Pick<ModelConfig, "ffnNorm">): string {
  return c.ffnNorm ?? Tensors.ffnNorm;
}

/** Whether block `l` routes its FFN through experts (DeepSeek's leading blocks are dense). */
export function isMoeLayer(c: ModelConfig, l: number): boolean {
  return l >= (c.nLayerDenseLead ?? 0);
}

/**
 * KV-cache bytes per token of context over all attention layers (a hybrid
 * model's DeltaNet layers keep a fixed-size recurrent state instead, see
 * {@linkcode recurrentStateBytes}), with `bytesPerElement`
 * per cached element (4 for this engine's f32 cache, 2 for f16). With MLA the
 * cache holds the latent and the rotated key part once per layer; `naive`
 * asks for the full per-head K/V cache the same model would need without it.
 */
export function kvCacheBytesPerToken(
  c: Pick<
    ModelConfig,
    "nLayer" | "nHead" | "nHeadKv" | "headDimK" | "headDimV" | "mla" | "deltaNet"
  >,
  o: { bytesPerElement?: number; naive?: boolean } = {},
): number {
  const b = o.bytesPerElement ?? 4;
  const layers = c.nLayer - (c.deltaNet?.recurrent.filter((r) => r).length ?? 0);
  if (c.mla && !o.naive) return layers * (c.mla.kvLoraRank + c.mla.ropeDim) * b;
  const heads = c.mla ? c.nHead : c.nHeadKv;
  return layers * heads * (c.headDimK + c.headDimV) * b;
}

/**
 * Bytes of a hybrid model's recurrent state (f32), whatever the context: per
 * DeltaNet layer the conv state (K − 1 inputs of every q/k/v channel) and
 * each value head's S × S state matrix. 0 without DeltaNet layers.
 */
export function recurrentStateBytes(c: Pick<ModelConfig, "deltaNet">): number {
  const d = c.deltaNet;
  if (!d) return 0;
  const convDim = 2 * d.stateSize * d.nKHeads + d.stateSize * d.nVHeads;
  const perLayer = convDim * (d.convKernel - 1) + d.nVHeads * d.stateSize ** 2;
  return 4 * perLayer * d.recurrent.filter((r) => r).length;
}

/**
 * The magnitude factor llama.cpp passes to RoPE (`cparams.yarn_attn_factor`,
 * llama-context.cpp): with YaRN, `get_mscale(factor, mscale) /
 * get_mscale(factor, mscaleAllDims)` — or `get_mscale(factor, 1)` without a
 * log multiplier — divided by `1 + 0.1·ln(factor)` because the RoPE kernel
 * multiplies that back; always times `rope.scaling.attn_factor`.
 * `yarnLogMul` is `rope.scaling.yarn_log_multiplier` as llama.cpp holds it
 * (DeepSeek-V2's key divided by 0.1: mscale_all_dim); `mscaleIsLogMul` is
 * DeepSeek-V2's special case (mscale = mscale_all_dim when it is not 1).
 */
export function yarnAttnFactor(
  o: {
    freqScale: number;
    extFactor: number;
    ropeAttnFactor: number;
    yarnLogMul?: number;
    mscaleIsLogMul?: boolean;
  },
): number {
  let a = 1;
  if (o.extFactor !== 0) {
    const factor = 1 / o.freqScale;
    const getMscale = (scale: number, m: number) => scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
    const logMul = o.yarnLogMul ?? 0;
    if (logMul !== 0) {
      const mscale = o.mscaleIsLogMul && logMul !== 1 ? logMul : 1;
      a = getMscale(factor, mscale) / getMscale(factor, logMul);
    } else {
      a = getMscale(factor, 1);
    }
    a /= 1 + 0.1 * Math.log(factor);
  }
  return a * o.ropeAttnFactor;
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
  /** Held on the GPU as an f32 array whatever its type and rank (conv kernels read it directly). */
  readonly asF32?: boolean;
  /**
   * When the file lacks this matrix, it is assembled from these rows (ggml
   * `ne[1]` indices, in order) of another one (an older converter's fused
   * layout: Qwen3-Next's `ssm_in`).
   */
  readonly alternative?: {
    readonly name: string;
    readonly shape: readonly number[];
    readonly rows: readonly number[];
  };
}

/** A model configuration error naming the file and key. */
export class ModelConfigError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "ModelConfigError";
  }
}

/** The hyperparameters every transformer shares ({@linkcode readCommonConfig}). */
export type CommonConfig = ReturnType<typeof readCommonConfig>;

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
  const scalingType = md.string(k(Keys.ropeScalingType), "linear");
  // llama.cpp never scales when the type is "none".
  const scalingFactor = scalingType === "none" ? 0 : md.number(k(Keys.ropeScalingFactor), 0);
  const ropeFreqScale = scalingFactor === 0 ? 1 : 1 / scalingFactor;
  const yarnExtFactor = scalingType === "yarn" ? 1 : 0;
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
    ropeFreqScale,
    yarnExtFactor,
    yarnAttnFactor: yarnAttnFactor({
      freqScale: ropeFreqScale,
      extFactor: yarnExtFactor,
      ropeAttnFactor: md.number(k(Keys.ropeScalingAttnFactor), 1),
    }),
    // llama.cpp reads the beta keys only for grok and mistral3: 32 and 1 elsewhere.
    yarnBetaFast: 32,
    yarnBetaSlow: 1,
    nCtxOrig: md.number(k(Keys.ropeScalingOrigCtx), nCtxTrain),
    rmsEps: md.number(k(Keys.layerNormRmsEps), 1e-5),
    nExpert: md.number(k(Keys.expertCount), 0),
    nExpertUsed: md.number(k(Keys.expertUsedCount), 0),
    expertWeightsScale: md.number(k(Keys.expertWeightsScale), 0),
    nExpertGroups: md.number(k(Keys.expertGroupCount), 0) || 1,
    nExpertGroupsUsed: md.number(k(Keys.expertGroupUsedCount), 0),
    attnScale: 1 / Math.sqrt(headDimK),
  };
}

/** What {@linkcode writeCommonConfig} writes beyond the config: keys whose value the engine does not read. */
export interface WriteCommonOptions {
  /** `feed_forward_length` (architectures size different things with it; see each arch file). */
  nFf: number;
  /** Write `vocab_size` (llama, deepseek2: llama.cpp's converter writes it for them). */
  vocabSize?: boolean;
  /** Write key_length, value_length and rope.dimension_count from the config (default true). */
  headDims?: boolean;
}

/**
 * The reverse of {@linkcode readCommonConfig}: the hyperparameter keys every
 * transformer shares, as llama.cpp's converter writes them for `c.arch`
 * (YaRN only with its default attention factor and betas, which the reader
 * derives rather than reads).
 */
export function writeCommonConfig(c: ModelConfig, o: WriteCommonOptions): [string, GgufValue][] {
  const k = (key: string) => archKey(key, c.arch);
  const out: [string, GgufValue][] = [
    [k(Keys.contextLength), gv.u32(c.nCtxTrain)],
    [k(Keys.embeddingLength), gv.u32(c.nEmbd)],
    [k(Keys.blockCount), gv.u32(c.nLayer + (c.nNextn ?? 0))],
    [k(Keys.feedForwardLength), gv.u32(o.nFf)],
    [k(Keys.headCount), gv.u32(c.nHead)],
    [k(Keys.headCountKv), gv.u32(c.nHeadKv)],
  ];
  if (o.headDims !== false) {
    out.push(
      [k(Keys.keyLength), gv.u32(c.headDimK)],
      [k(Keys.valueLength), gv.u32(c.headDimV)],
      [k(Keys.ropeDimensionCount), gv.u32(c.nRot)],
    );
  }
  out.push(
    [k(Keys.ropeFreqBase), gv.f32(c.ropeFreqBase)],
    [k(Keys.layerNormRmsEps), gv.f32(c.rmsEps)],
    [k(Keys.expertCount), gv.u32(c.nExpert)],
    [k(Keys.expertUsedCount), gv.u32(c.nExpertUsed)],
  );
  if (c.expertWeightsScale !== 0) {
    out.push([k(Keys.expertWeightsScale), gv.f32(c.expertWeightsScale)]);
  }
  if ((c.nExpertGroups ?? 1) > 1) {
    out.push(
      [k(Keys.expertGroupCount), gv.u32(c.nExpertGroups!)],
      [k(Keys.expertGroupUsedCount), gv.u32(c.nExpertGroupsUsed ?? c.nExpertGroups!)],
    );
  }
  if (c.ropeFreqScale !== 1) {
    out.push(
      [k(Keys.ropeScalingType), gv.str(c.yarnExtFactor !== 0 ? "yarn" : "linear")],
      [k(Keys.ropeScalingFactor), gv.f32(1 / c.ropeFreqScale)],
    );
  }
  if (c.nCtxOrig !== c.nCtxTrain) out.push([k(Keys.ropeScalingOrigCtx), gv.u32(c.nCtxOrig)]);
  if (c.yarnLogMul) {
    // llama.cpp's converter writes 0.1 × mscale_all_dim (and its loader divides by 0.1)
    out.push([k(Keys.ropeScalingYarnLogMul), gv.f32(0.1 * c.yarnLogMul)]);
  }
  if (o.vocabSize) out.push([k(Keys.vocabSize), gv.u32(c.nVocab)]);
  return out;
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
  const groups = c.nExpertGroups ?? 1;
  if (groups > 1) {
    const used = c.nExpertGroupsUsed ?? groups;
    if (c.nExpert % groups !== 0 || used < 1 || used > groups) {
      throw new ModelConfigError(
        `${c.arch}: expert_group_count ${groups} must divide expert_count ${c.nExpert}, and ` +
          `expert_group_used_count ${used} must be in 1…${groups}`,
      );
    }
    if (used * (c.nExpert / groups) < c.nExpertUsed) {
      throw new ModelConfigError(
        `${c.arch}: ${used} of ${groups} expert groups hold fewer experts than expert_used_count ${c.nExpertUsed}`,
      );
    }
  }
  const dense = c.nLayerDenseLead ?? 0;
  if (!Number.isInteger(dense) || dense < 0 || dense >= c.nLayer) {
    throw new ModelConfigError(
      `${c.arch}: leading_dense_block_count ${dense} must leave at least one of ${c.nLayer} blocks with experts`,
    );
  }
  if (dense > 0 && !((c.nFf ?? 0) > 0)) {
    throw new ModelConfigError(
      `${c.arch}: ${dense} leading dense blocks need feed_forward_length > 0`,
    );
  }
}
