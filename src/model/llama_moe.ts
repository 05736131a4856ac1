/**
 * `llama` with routed experts: Mixtral and other Mistral-family MoE models.
 * Softmax router, top-k weights renormalised, RoPE on adjacent pairs.
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v (+ biases if the file has
 *    them) → RoPE (adjacent pairs) → cache → attention → attn_output.
 * 2. `x += moeFfn(x)`: ffn_norm → router (softmax, top-k renormalised) →
 *    SwiGLU experts (+ a shared expert if `expert_shared_feed_forward_length`).
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

const ARCH = "llama";

/** The graph choices: the same in every MoE llama file. */
const GRAPH = {
  ropeType: "normal",
  sharedExpertGated: false,
  gating: "softmax",
  normTopK: true,
  qkNorm: "none",
} as const satisfies Partial<ModelConfig>;

function check(c: ModelConfig): ModelConfig {
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
}

/** The `llama` architecture (MoE form). */
export const llamaMoe: ArchSpec<typeof ARCH> = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    return check({
      ...readCommonConfig(md, ARCH),
      ...GRAPH,
      // llama.cpp sizes llama's experts by feed_forward_length; expert_feed_forward_length is not read.
      nFfExp: md.number(archKey(Keys.feedForwardLength, ARCH)),
      nFfShexp: md.number(archKey(Keys.expertSharedFeedForwardLength, ARCH), 0),
    });
  },
  writeConfig(c) {
    const out = writeCommonConfig(c, { nFf: c.nFfExp, vocabSize: true });
    if (c.nFfShexp > 0) {
      out.push([archKey(Keys.expertSharedFeedForwardLength, c.arch), gv.u32(c.nFfShexp)]);
    }
    return out;
  },
  tensorPlan: (c) => moeTransformerPlan(c, { tiedOutput: true }),
  synthetic: {
    config: (s) => check({ ...syntheticCommonConfig(s), ...GRAPH, nFfExp: s.nFfExp, nFfShexp: 0 }),
  },
};
