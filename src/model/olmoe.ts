/**
 * `olmoe`: AllenAI's OLMoE, as llama.cpp reads it (`src/models/olmoe.cpp`):
 * RMSNorm on q and on k over the whole projection (before the head split),
 * NeoX RoPE, and a softmax router whose top-k weights are used as they are
 * — no renormalisation, no scale. The experts are `feed_forward_length`
 * wide; q/k/v are all `nEmbd` wide (as many kv heads as heads).
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v → q/k RMSNorm over the
 *    whole projection (`qkNorm: "full"`) → NeoX RoPE → cache → attention →
 *    attn_output.
 * 2. `x += moeFfn(x)`: ffn_norm → router (softmax, top-k as is) → SwiGLU
 *    experts.
 *
 * then output_norm → output.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import {
  checkMoeConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  writeCommonConfig,
} from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import { type ArchSpec, syntheticCommonConfig } from "./arch.ts";

const ARCH = "olmoe";

/** The graph choices: the same in every olmoe file. */
const GRAPH = {
  ropeType: "neox",
  nFfShexp: 0,
  sharedExpertGated: false,
  gating: "softmax",
  normTopK: false,
  // expert_weights_scale is not read for olmoe
  expertWeightsScale: 0,
  qkNorm: "full",
} as const satisfies Partial<ModelConfig>;

function check(c: ModelConfig): ModelConfig {
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
}

/** The `olmoe` architecture. */
export const olmoe: ArchSpec<typeof ARCH> = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    return check({
      ...readCommonConfig(md, ARCH),
      ...GRAPH,
      // olmoe.cpp sizes the experts by n_ff (feed_forward_length)
      nFfExp: md.number(archKey(Keys.feedForwardLength, ARCH)),
    });
  },
  writeConfig: (c) => writeCommonConfig(c, { nFf: c.nFfExp }),
  tensorPlan: (c) => moeTransformerPlan(c, { tiedOutput: false }),
  synthetic: {
    check(s, bad) {
      if (s.headDim * s.nHead !== s.nEmbd) {
        bad(
          `llama.cpp's olmoe needs nHead * headDim = nEmbd (its attn_q is nEmbd × nEmbd), got ${s.nHead} * ${s.headDim} ≠ ${s.nEmbd}`,
        );
      }
      if (s.nHeadKv !== s.nHead) {
        bad(`llama.cpp's olmoe norms k with an nEmbd-wide weight: nHeadKv must equal nHead`);
      }
    },
    config: (s) => check({ ...syntheticCommonConfig(s), ...GRAPH, nFfExp: s.nFfExp }),
  },
};
