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
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import {
  checkMoeConfig,
  type GatingFunc,
  type MlaConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  type TensorPlanEntry,
  yarnAttnFactor,
} from "./config.ts";
import { denseFfnPlan, headPlan, mlaAttentionPlan, moePlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

/** llama.cpp's `expert_gating_func` values: 0 (absent) and 1 are softmax, 2 sigmoid. */
function gatingFunc(ARCH: string, v: number): GatingFunc {
  if (v === 0 || v === 1) return "softmax";
  if (v === 2) return "sigmoid";
  throw new ModelConfigError(
    `${ARCH}: expert_gating_func ${v} is not supported (1 = softmax, 2 = sigmoid)`,
  );
}

/** The deepseek2 graph under the architecture name `ARCH`. */
function deepseek2Like(ARCH: string): ArchSpec {
  return {
    name: ARCH,
    readConfig: (md) => readConfig(md, ARCH),
    tensorPlan,
  };
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
  const nFfExp = md.number(k(Keys.expertFeedForwardLength));
  // llama.cpp stores mscale_all_dim × 0.1 in the file and divides it back out.
  const yarnLogMul = md.number(k(Keys.ropeScalingYarnLogMul), 0) / 0.1;
  const attnFactor = yarnAttnFactor({
    freqScale: common.ropeFreqScale,
    extFactor: common.yarnExtFactor,
    ropeAttnFactor: md.number(k(Keys.ropeScalingAttnFactor), 1),
    yarnLogMul,
    mscaleIsLogMul: true,
  });
  // deepseek2.cpp: undo the RoPE kernel's own YaRN factor, fold mscale² into the score scale.
  const ln = Math.log(1 / common.ropeFreqScale);
  const mscale = attnFactor * (1 + 0.1 * ln) * (1 + 0.1 * yarnLogMul * ln);
  const c: ModelConfig = {
    ...common,
    headDimK: keyMla,
    headDimV: valueMla,
    ropeType: "normal",
    yarnAttnFactor: attnFactor,
    nFfExp,
    nFfShexp: nFfExp * md.number(k(Keys.expertSharedCount)),
    sharedExpertGated: false,
    gating: gatingFunc(ARCH, md.number(k(Keys.expertGatingFunc), 0)),
    normTopK: md.bool(k(Keys.expertWeightsNorm), false),
    qkNorm: "none",
    attnScale: (mscale * mscale) / Math.sqrt(keyMla),
    nLayerDenseLead: md.number(k(Keys.leadingDenseBlockCount), 0),
    nFf: md.number(k(Keys.feedForwardLength), 0),
    mla,
  };
  checkMoeConfig(c);
  return c;
}

function tensorPlan(c: ModelConfig): TensorPlanEntry[] {
  const plan = headPlan(c, true);
  for (let i = 0; i < c.nLayer; i++) {
    plan.push(...mlaAttentionPlan(c, i));
    plan.push(
      ...(i < (c.nLayerDenseLead ?? 0) ? denseFfnPlan(c, i) : moePlan(c, i, {
        selectionBias: true,
      })),
    );
  }
  return plan;
}

/** The `deepseek2` architecture (DeepSeek-V2/V3, Kimi-K2, GLM-4.7-Flash). */
export const deepseek2: ArchSpec = deepseek2Like("deepseek2");

/** `mistral4` (Mistral-Small-4): the deepseek2 graph under its own name. */
export const mistral4: ArchSpec = deepseek2Like("mistral4");
