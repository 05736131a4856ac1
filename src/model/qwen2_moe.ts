/**
 * `qwen2moe`: Qwen1.5-MoE and Qwen2-57B-A14B. q/k/v biases, a shared expert
 * scaled by sigmoid(`ffn_gate_inp_shexp` · x), softmax router whose top-k
 * weights are NOT renormalised, NeoX RoPE.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { checkMoeConfig, type ModelConfig, ModelConfigError, readCommonConfig } from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

/** The `qwen2moe` architecture. */
export const qwen2Moe: ArchSpec = {
  name: "qwen2moe",
  readConfig(md: GgufMetadata): ModelConfig {
    const a = "qwen2moe";
    const common = readCommonConfig(md, a);
    const nFf = md.number(archKey(Keys.feedForwardLength, a), 0);
    const nExpertUsed = common.nExpertUsed;
    const c: ModelConfig = {
      ...common,
      ropeType: "neox",
      nFfExp: md.number(archKey(Keys.expertFeedForwardLength, a), 0) ||
        Math.floor(nFf / Math.max(1, nExpertUsed)),
      nFfShexp: md.number(archKey(Keys.expertSharedFeedForwardLength, a), 0) || nFf,
      sharedExpertGated: true,
      gating: "softmax",
      normTopK: false,
      qkNorm: "none",
    };
    if (c.nHead * c.headDimK !== c.nEmbd || c.headDimK !== c.headDimV || c.nRot !== c.headDimK) {
      throw new ModelConfigError(
        "qwen2moe: head_count × key_length must equal embedding_length and rope.dimension_count must equal key_length",
      );
    }
    checkMoeConfig(c);
    return c;
  },
  tensorPlan: (c) => moeTransformerPlan(c, false),
};
