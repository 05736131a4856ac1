/**
 * `olmoe`: AllenAI's OLMoE, as llama.cpp reads it (`src/models/olmoe.cpp`):
 * RMSNorm on q and on k over the whole projection (before the head split),
 * NeoX RoPE, and a softmax router whose top-k weights are used as they are
 * — no renormalisation, no scale. The experts are `feed_forward_length`
 * wide; q/k/v are all `nEmbd` wide (as many kv heads as heads).
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { checkMoeConfig, type ModelConfig, ModelConfigError, readCommonConfig } from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

const ARCH = "olmoe";

/** The `olmoe` architecture. */
export const olmoe: ArchSpec = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    const common = readCommonConfig(md, ARCH);
    const c: ModelConfig = {
      ...common,
      ropeType: "neox",
      // olmoe.cpp sizes the experts by n_ff (feed_forward_length)
      nFfExp: md.number(archKey(Keys.feedForwardLength, ARCH)),
      nFfShexp: 0,
      sharedExpertGated: false,
      gating: "softmax",
      normTopK: false,
      // expert_weights_scale is not read for olmoe
      expertWeightsScale: 0,
      qkNorm: "full",
    };
    if (
      c.nHeadKv !== c.nHead || c.nHead * c.headDimK !== c.nEmbd || c.headDimV !== c.headDimK ||
      c.nRot !== c.headDimK
    ) {
      throw new ModelConfigError(
        `${ARCH}: q, k and v must each be embedding_length wide (head_count_kv = head_count, ` +
          "head_count × key_length = embedding_length) and rope.dimension_count = key_length",
      );
    }
    checkMoeConfig(c);
    return c;
  },
  tensorPlan: (c) => moeTransformerPlan(c, false),
};
