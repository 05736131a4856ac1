/**
 * `qwen3moe`: Qwen3-30B-A3B and Qwen3-235B-A22B. RMSNorm on each q and k head
 * before RoPE, head width independent of the model width, softmax router
 * with renormalised top-k weights, NeoX RoPE.
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v → per-head q/k RMSNorm
 *    (`qkNorm: "head"`) → NeoX RoPE → cache → attention → attn_output.
 * 2. `x += moeFfn(x)`: ffn_norm → router (softmax, top-k renormalised) →
 *    SwiGLU experts.
 *
 * then output_norm → output (tied to token_embd when output.weight is absent).
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { gv } from "../gguf/value.ts";
import {
  checkMoeConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  writeCommonConfig,
} from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import { type ArchSpec, syntheticCommonConfig } from "./arch.ts";

const ARCH = "qwen3moe";

/** The graph choices: the same in every qwen3moe file. */
const GRAPH = {
  ropeType: "neox",
  nFfShexp: 0,
  sharedExpertGated: false,
  gating: "softmax",
  normTopK: true,
  qkNorm: "head",
} as const satisfies Partial<ModelConfig>;

function check(c: ModelConfig): ModelConfig {
  if (c.headDimK !== c.headDimV || c.nRot !== c.headDimK) {
    throw new ModelConfigError(
      "qwen3moe: key_length, value_length and rope.dimension_count must agree",
    );
  }
  checkMoeConfig(c);
  return c;
}

/** The `qwen3moe` architecture. */
export const qwen3Moe: ArchSpec<typeof ARCH> = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    const common = readCommonConfig(md, ARCH);
    const nFf = md.number(archKey(Keys.feedForwardLength, ARCH), 0);
    return check({
      ...common,
      ...GRAPH,
      nFfExp: md.number(archKey(Keys.expertFeedForwardLength, ARCH), 0) ||
        Math.floor(nFf / Math.max(1, common.nExpertUsed)),
    });
  },
  writeConfig: (c) => [
    // feed_forward_length is the dense model's width in real files (unread): one that differs
    ...writeCommonConfig(c, { nFf: 3 * c.nFfExp }),
    [archKey(Keys.expertFeedForwardLength, c.arch), gv.u32(c.nFfExp)],
  ],
  tensorPlan: (c) => moeTransformerPlan(c, { tiedOutput: true }),
  synthetic: {
    config: (s) => check({ ...syntheticCommonConfig(s), ...GRAPH, nFfExp: s.nFfExp }),
  },
};
