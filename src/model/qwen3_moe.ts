/**
 * `qwen3moe`: Qwen3-30B-A3B and Qwen3-235B-A22B. RMSNorm on each q and k head
 * before RoPE, head width independent of the model width, softmax router
 * with renormalised top-k weights, NeoX RoPE.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { checkMoeConfig, type ModelConfig, ModelConfigError, readCommonConfig } from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

/** The `qwen3moe` architecture. */
export const qwen3Moe: ArchSpec = {
  name: "qwen3moe",
  readConfig(md: GgufMetadata): ModelConfig {
    const a = "qwen3moe";
    const common = readCommonConfig(md, a);
    const nFf = md.number(archKey(Keys.feedForwardLength, a), 0);
    const c: ModelConfig = {
      ...common,
      ropeType: "neox",
      nFfExp: md.number(archKey(Keys.expertFeedForwardLength, a), 0) ||
        Math.floor(nFf / Math.max(1, common.nExpertUsed)),
      nFfShexp: 0,
      sharedExpertGated: false,
      gating: "softmax",
      normTopK: true,
      qkNorm: "head",
    };
    if (c.headDimK !== c.headDimV || c.nRot !== c.headDimK) {
      throw new ModelConfigError(
        "qwen3moe: key_length, value_length and rope.dimension_count must agree",
      );
    }
    checkMoeConfig(c);
    return c;
  },
  tensorPlan: (c) => moeTransformerPlan(c, true),
};
