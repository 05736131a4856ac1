/**
 * `deepseek2`: DeepSeek-V2 (and V2-Lite), DeepSeek-V3/R1 and Kimi-K2, as
 * llama.cpp reads them (`src/models/deepseek2.cpp`):
 *
 * - Multi-head latent attention with the compressed cache (the latent and
 *   the rotated key part, not per-head K/V): q from `attn_q` (V2-Lite) or
 *   through the q LoRA (`attn_q_a` → norm → `attn_q_b`), RoPE on adjacent
 *   pairs of the rope part only, and YaRN with DeepSeek's attention-scale
 *   correction: scores × mscale² / √(nope + rope).
 * - Routing: softmax (V2) or sigmoid (V3, Kimi-K2) probabilities per
 *   `expert_gating_func`, the optional selection-only bias `exp_probs_b`,
 *   group-limited top-k (`expert_group_count` / `_used_count`), weights from
 *   the unbiased probabilities, renormalised if `expert_weights_norm`, scaled
 *   by `expert_weights_scale`.
 * - Shared experts always on (`expert_shared_count` × the expert width, no
 *   gate); dense SwiGLU FFN in the `leading_dense_block_count` first blocks.
 * - Multi-token-prediction blocks (`nextn_predict_layers`, GLM-4.7-Flash):
 *   the last blocks of `block_count`; plain decoding skips them and their
 *   tensors, as llama.cpp does without an MTP context.
 *
 * `mistral4` (Mistral-Small-4) is this graph under its own name and key
 * prefix: llama.cpp's `llama_model_mistral4` reuses deepseek2's loader and
 * graph.
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += mlaAttention(x)` (`blocks/mla.ts`, `mla` set): attn_norm → q (or
 *    q LoRA) → latent + k_pe → RoPE on the rope part → latent cache →
 *    absorbed attention → attn_output.
 * 2. `x += denseFfn(x)` in the `nLayerDenseLead` first blocks, else
 *    `x += moeFfn(x)`: ffn_norm → router (softmax or sigmoid, selection
 *    bias, groups, norm, scale) → SwiGLU experts + the shared experts.
 *
 * then output_norm → output (tied to token_embd when output.weight is absent).
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys, tensorName as tn, Tensors } from "../gguf/names.ts";
import { gv } from "../gguf/value.ts";
import {
  checkMoeConfig,
  type CommonConfig,
  type GatingFunc,
  type MlaConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  type TensorPlanEntry,
  writeCommonConfig,
  yarnAttnFactor,
} from "./config.ts";
import { denseFfnPlan, headPlan, mlaAttentionPlan, moePlan } from "./plan.ts";
import {
  type ArchSpec,
  normalInit,
  type ResolvedSyntheticSpec,
  syntheticCommonConfig,
} from "./arch.ts";

/** llama.cpp's `expert_gating_func` values: 0 (absent) and 1 are softmax, 2 sigmoid. */
function gatingFunc(ARCH: string, v: number): GatingFunc {
  if (v === 0 || v === 1) return "softmax";
  if (v === 2) return "sigmoid";
  throw new ModelConfigError(
    `${ARCH}: expert_gating_func ${v} is not supported (1 = softmax, 2 = sigmoid)`,
  );
}

/** What a deepseek2 file says beyond the common hyperparameters. */
interface DeepseekKeys {
  mla: MlaConfig;
  nNextn: number;
  nFfExp: number;
  nExpertShared: number;
  nFf: number;
  nLayerDenseLead: number;
  gating: GatingFunc;
  normTopK: boolean;
  /** `rope.scaling.yarn_log_multiplier` / 0.1 (mscale_all_dim). */
  yarnLogMul: number;
  /** `rope.scaling.attn_factor`. */
  ropeAttnFactor: number;
}

/** The config from the common hyperparameters (trunk layers only) and the deepseek2 keys. */
function deepseekConfig(common: CommonConfig, d: DeepseekKeys): ModelConfig {
  const { mla } = d;
  const keyMla = mla.nopeDim + mla.ropeDim;
  const attnFactor = yarnAttnFactor({
    freqScale: common.ropeFreqScale,
    extFactor: common.yarnExtFactor,
    ropeAttnFactor: d.ropeAttnFactor,
    yarnLogMul: d.yarnLogMul,
    mscaleIsLogMul: true,
  });
  // deepseek2.cpp: undo the RoPE kernel's own YaRN factor, fold mscale² into the score scale.
  const ln = Math.log(1 / common.ropeFreqScale);
  const mscale = attnFactor * (1 + 0.1 * ln) * (1 + 0.1 * d.yarnLogMul * ln);
  const c: ModelConfig = {
    ...common,
    headDimK: keyMla,
    headDimV: mla.vHeadDim,
    ropeType: "normal",
    yarnAttnFactor: attnFactor,
    nFfExp: d.nFfExp,
    nFfShexp: d.nFfExp * d.nExpertShared,
    sharedExpertGated: false,
    gating: d.gating,
    normTopK: d.normTopK,
    qkNorm: "none",
    attnScale: (mscale * mscale) / Math.sqrt(keyMla),
    nLayerDenseLead: d.nLayerDenseLead,
    nFf: d.nFf,
    mla,
    ...(d.nNextn > 0 ? { nNextn: d.nNextn } : {}),
    ...(d.yarnLogMul !== 0 ? { yarnLogMul: d.yarnLogMul } : {}),
  };
  checkMoeConfig(c);
  return c;
}

function readConfig(md: GgufMetadata, ARCH: string): ModelConfig {
  const k = (key: string) => archKey(key, ARCH);
  const common0 = readCommonConfig(md, ARCH);
  // llama.cpp: n_layer = block_count − nextn_predict_layers; the MTP blocks come last.
  const nNextn = md.number(k(Keys.nextnPredictLayers), 0);
  if (!Number.isInteger(nNextn) || nNextn < 0 || nNextn >= common0.nLayer) {
    throw new ModelConfigError(
      `${ARCH}: nextn_predict_layers ${nNextn} must be an integer in 0…block_count − 1 ` +
        `(block_count ${common0.nLayer})`,
    );
  }
  const common = { ...common0, nLayer: common0.nLayer - nNextn };
  const keyMla = md.number(k(Keys.keyLengthMla), 0);
  const valueMla = md.number(k(Keys.valueLengthMla), 0);
  if (keyMla === 0 || valueMla === 0) {
    throw new ModelConfigError(
      `${ARCH}: attention.key_length_mla / value_length_mla are missing: this is an older ` +
        "conversion with an unsplit attn_kv_b, which od-moe does not run; reconvert the model " +
        "with a current llama.cpp convert_hf_to_gguf.py (it writes attn_k_b and attn_v_b)",
    );
  }
  // Mistral-Large-3's per-position query temperature also comes in deepseek2 files.
  if (md.number(k(Keys.attentionTemperatureScale), 0) !== 0) {
    throw new ModelConfigError(
      `${ARCH}: attention.temperature_scale (query temperature tuning) is not supported`,
    );
  }
  const ropeDim = common.nRot;
  const mla: MlaConfig = {
    qLoraRank: md.number(k(Keys.qLoraRank), 0),
    kvLoraRank: md.number(k(Keys.kvLoraRank)),
    nopeDim: keyMla - ropeDim,
    ropeDim,
    vHeadDim: valueMla,
  };
  if (mla.nopeDim < 1) {
    throw new ModelConfigError(
      `${ARCH}: key_length_mla ${keyMla} must exceed rope.dimension_count ${ropeDim}`,
    );
  }
  if (common.headDimK !== mla.kvLoraRank + ropeDim || common.headDimV !== mla.kvLoraRank) {
    throw new ModelConfigError(
      `${ARCH}: key_length ${common.headDimK} / value_length ${common.headDimV} must be ` +
        `kv_lora_rank + rope (${mla.kvLoraRank + ropeDim}) / kv_lora_rank (${mla.kvLoraRank})`,
    );
  }
  if (common.nHeadKv !== 1) {
    throw new ModelConfigError(
      `${ARCH}: head_count_kv is ${common.nHeadKv}; latent attention caches one shared latent (1)`,
    );
  }
  return deepseekConfig(common, {
    mla,
    nNextn,
    nFfExp: md.number(k(Keys.expertFeedForwardLength)),
    nExpertShared: md.number(k(Keys.expertSharedCount)),
    nFf: md.number(k(Keys.feedForwardLength), 0),
    nLayerDenseLead: md.number(k(Keys.leadingDenseBlockCount), 0),
    gating: gatingFunc(ARCH, md.number(k(Keys.expertGatingFunc), 0)),
    normTopK: md.bool(k(Keys.expertWeightsNorm), false),
    // llama.cpp stores mscale_all_dim × 0.1 in the file and divides it back out.
    yarnLogMul: md.number(k(Keys.ropeScalingYarnLogMul), 0) / 0.1,
    ropeAttnFactor: md.number(k(Keys.ropeScalingAttnFactor), 1),
  });
}

function writeConfig(c: ModelConfig): ReturnType<ArchSpec["writeConfig"]> {
  const k = (key: string) => archKey(key, c.arch);
  const m = c.mla!;
  // the absorbed view (one kv head of [latent | k_pe]) as key/value_length, the decompressed one as _mla
  const out = writeCommonConfig(
    { ...c, headDimK: m.kvLoraRank + m.ropeDim, headDimV: m.kvLoraRank, nRot: m.ropeDim },
    { nFf: c.nFf ?? 0, vocabSize: true },
  );
  out.push(
    [k(Keys.keyLengthMla), gv.u32(c.headDimK)],
    [k(Keys.valueLengthMla), gv.u32(c.headDimV)],
    // llama.cpp reads q_lora_rank unconditionally for non-"lite" layer counts
    [k(Keys.qLoraRank), gv.u32(m.qLoraRank)],
    [k(Keys.kvLoraRank), gv.u32(m.kvLoraRank)],
    [k(Keys.leadingDenseBlockCount), gv.u32(c.nLayerDenseLead ?? 0)],
    [k(Keys.expertFeedForwardLength), gv.u32(c.nFfExp)],
    [k(Keys.expertSharedCount), gv.u32(c.nFfShexp / c.nFfExp)],
    [k(Keys.expertGatingFunc), gv.u32(c.gating === "sigmoid" ? 2 : 1)],
  );
  if (c.nNextn) out.push([k(Keys.nextnPredictLayers), gv.u32(c.nNextn)]);
  if (c.normTopK) out.push([k(Keys.expertWeightsNorm), gv.bool(true)]);
  return out;
}

function tensorPlan(c: ModelConfig): TensorPlanEntry[] {
  const plan = headPlan(c, true);
  for (let i = 0; i < c.nLayer; i++) plan.push(...blockPlan(c, i));
  return plan;
}

function blockPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  return [
    ...mlaAttentionPlan(c, i),
    ...(i < (c.nLayerDenseLead ?? 0)
      ? denseFfnPlan(c, i)
      : moePlan(c, i, { selectionBias: "optional" })),
  ];
}

/** The MTP blocks after the trunk: a full block plus its `nextn.*` tensors each (not run). */
function mtpPlan(c: ModelConfig): TensorPlanEntry[] {
  const plan: TensorPlanEntry[] = [];
  const E = c.nEmbd;
  for (let i = c.nLayer; i < c.nLayer + (c.nNextn ?? 0); i++) {
    plan.push(
      ...blockPlan(c, i),
      // the MTP head: [embedding | hidden] → hidden, its norms, its own output head
      { name: tn(Tensors.nextnEhProj, i), shape: [2 * E, E], role: "base" },
      { name: tn(Tensors.nextnEnorm, i), shape: [E], role: "base" },
      { name: tn(Tensors.nextnHnorm, i), shape: [E], role: "base" },
      { name: tn(Tensors.nextnSharedHeadNorm, i), shape: [E], role: "base" },
      { name: tn(Tensors.nextnSharedHeadHead, i), shape: [E, c.nVocab], role: "base" },
    );
  }
  return plan;
}

/** llama.cpp's rules for a synthetic deepseek2 spec. */
function checkSpec(s: ResolvedSyntheticSpec, bad: (msg: string) => never): void {
  if (!Number.isInteger(s.nNextn) || s.nNextn < 0) bad(`nNextn must be an integer ≥ 0`);
  if (s.archName !== "deepseek2" && s.archName !== "mistral4") {
    bad(`archName must be deepseek2 or mistral4, got ${s.archName}`);
  }
  for (const f of ["kvLoraRank", "qkNopeDim", "qkRopeDim", "vHeadDim"] as const) {
    if (!Number.isInteger(s[f]) || s[f] < 1) bad(`${f} must be a positive integer`);
  }
  if (!Number.isInteger(s.qLoraRank) || s.qLoraRank < 0) {
    bad(`qLoraRank must be an integer ≥ 0, got ${s.qLoraRank}`);
  }
  if (s.qkRopeDim % 2 !== 0) bad(`qkRopeDim must be even (RoPE rotates pairs)`);
  if (s.nHeadKv !== 1) bad(`latent attention has one shared kv head: nHeadKv must be 1`);
  if (!Number.isInteger(s.nExpertShared) || s.nExpertShared < 1) {
    bad(`llama.cpp's deepseek2 always loads shared experts: nExpertShared must be ≥ 1`);
  }
  const dense = s.nLayerDenseLead;
  if (!Number.isInteger(dense) || dense < 0 || dense >= s.nLayer) {
    bad(`nLayerDenseLead must be in 0…nLayer − 1, got ${dense}`);
  }
  if (dense > 0 && !(Number.isInteger(s.nFf) && s.nFf > 0)) {
    bad(`dense leading blocks need nFf > 0`);
  }
  const groups = s.nExpertGroups;
  const used = s.nExpertGroupsUsed;
  if (
    s.nExpert % groups !== 0 || used < 1 || used > groups ||
    used * (s.nExpert / groups) < s.nExpertUsed
  ) {
    bad(
      `${groups} expert groups (${used} used) must divide ${s.nExpert} experts and hold the top-${s.nExpertUsed}`,
    );
  }
}

/** The deepseek2 graph under the architecture name `ARCH`. */
function deepseek2Like<N extends string>(ARCH: N, synthetic: boolean): ArchSpec<N> {
  return {
    name: ARCH,
    readConfig: (md) => readConfig(md, ARCH),
    writeConfig,
    tensorPlan,
    synthetic: !synthetic ? undefined : {
      fields: [
        "qLoraRank",
        "kvLoraRank",
        "qkNopeDim",
        "qkRopeDim",
        "vHeadDim",
        "nLayerDenseLead",
        "nFf",
        "nExpertShared",
        "gating",
        "expertWeightsNorm",
        "expertWeightsScale",
        "nExpertGroups",
        "nExpertGroupsUsed",
        "expProbsBias",
        "yarnMscaleAllDim",
        "archName",
        "nNextn",
      ],
      defaults: { nExpertShared: 1 },
      check: checkSpec,
      config(s) {
        const common = syntheticCommonConfig(s);
        const ropeDim = s.qkRopeDim;
        return deepseekConfig(
          // as read from the file: key/value_length are the absorbed view's
          {
            ...common,
            headDimK: s.kvLoraRank + ropeDim,
            headDimV: s.kvLoraRank,
            nRot: ropeDim,
            attnScale: 1 / Math.sqrt(s.kvLoraRank + ropeDim),
          },
          {
            mla: {
              qLoraRank: s.qLoraRank,
              kvLoraRank: s.kvLoraRank,
              nopeDim: s.qkNopeDim,
              ropeDim,
              vHeadDim: s.vHeadDim,
            },
            nNextn: s.nNextn,
            nFfExp: s.nFfExp,
            nExpertShared: s.nExpertShared,
            // feed_forward_length: the dense blocks' width, or one that differs from the experts'
            nFf: s.nLayerDenseLead > 0 ? s.nFf : 3 * s.nFfExp,
            nLayerDenseLead: s.nLayerDenseLead,
            gating: s.gating,
            normTopK: s.expertWeightsNorm,
            yarnLogMul: s.yarnMscaleAllDim,
            ropeAttnFactor: 1,
          },
        );
      },
      init(t) {
        // attn_k_b is stored transposed: [nope, kv_lora, head], its inputs are the latent's
        if (t.base === Tensors.attnKB) return normalInit(t.shape[1]!);
        return undefined;
      },
      writeOptional: (name, s) => s.expProbsBias && name.endsWith(`.exp_probs_b.bias`),
      extraTensors: mtpPlan,
    },
  };
}

/** The `deepseek2` architecture (DeepSeek-V2/V3, Kimi-K2, GLM-4.7-Flash). */
export const deepseek2: ArchSpec<"deepseek2"> = deepseek2Like("deepseek2", true);

/** `mistral4` (Mistral-Small-4): the deepseek2 graph under its own name (synthetic: `archName`). */
export const mistral4: ArchSpec<"mistral4"> = deepseek2Like("mistral4", false);
