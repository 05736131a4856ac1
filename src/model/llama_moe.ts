/**
 * `llama` with routed experts: Mixtral and other Mistral-family MoE models.
 * Softmax router, top-k weights renormalised, RoPE on adjacent pairs.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { checkMoeConfig, type ModelConfig, ModelConfigError, readCommonConfig } from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

/** The `llama` architecture (MoE form). */
export const llamaMoe: ArchSpec = {
  name: "llama",
  readConfig(md: GgufMetadata): ModelConfig {
    const common = readCommonConfig(md, "llama");
    const c: ModelConfig = {
      ...common,
      ropeType: "normal",
      // llama.cpp sizes llama's experts by feed_forward_length; expert_feed_forward_length is not read.
      nFfExp: md.number(archKey(Keys.feedForwardLength, "llama")),
      nFfShexp: md.number(archKey(Keys.expertSharedFeedForwardLength, "llama"), 0),
      sharedExpertGated: false,
      gating: "softmax",
      normTopK: true,
      qkNorm: "none",
    };
    if (c.nExpert === 0) {
      throw new ModelConfigError(
        "llama: this file has no routed experts (expert_count is 0); od-moe runs MoE models only",
      );
    }
    if (c.headDimK !== c.headDimV || c.nRot !== c.headDimK) {
      throw new ModelConfigError(
        "llama: key_length, value_length and rope.dimension_count must agree",
      );
    }
    checkMoeConfig(c);
    return c;
  },
  tensorPlan: (c) => moeTransformerPlan(c, true),
};
