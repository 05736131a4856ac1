/**
 * `minimax-m2`: MiniMax-M2, as llama.cpp reads it
 * (`src/models/minimax-m2.cpp`): RMSNorm on q and on k over the whole
 * projection before the head split (k over `head_count_kv × key_length`),
 * NeoX RoPE on the first `rope.dimension_count` dimensions of each head
 * (64 of 128 in the released model), no attention biases, and a router with
 * the gating function of `expert_gating_func` (sigmoid in the released
 * model), the selection-only bias `exp_probs_b`, and renormalised top-k
 * weights — no scale (`expert_weights_scale` is not read). The experts are
 * `feed_forward_length` wide (llama.cpp sizes them with n_ff).
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v → q/k RMSNorm over the
 *    whole projection (`qkNorm: "full"`) → NeoX RoPE on `nRot` dims →
 *    cache → attention → attn_output.
 * 2. `x += moeFfn(x)`: ffn_norm → router (sigmoid or softmax, + exp_probs_b
 *    for the choice only, top-k renormalised) → SwiGLU experts.
 *
 * then output_norm → output.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys } from "../gguf/names.ts";
import { gv } from "../gguf/value.ts";
import {
  checkMoeConfig,
  type GatingFunc,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  writeCommonConfig,
} from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import { type ArchSpec, syntheticCommonConfig } from "./arch.ts";

const ARCH = "minimax-m2";

/** The graph choices: the same in every minimax-m2 file. */
const GRAPH = {
  ropeType: "neox",
  nFfShexp: 0,
  sharedExpertGated: false,
  normTopK: true,
  // expert_weights_scale is not read for minimax-m2
  expertWeightsScale: 0,
  qkNorm: "full",
} as const satisfies Partial<ModelConfig>;

/** `expert_gating_func`: 1 softmax, 2 sigmoid (llama.cpp aborts on its absence, 0). */
function gatingFunc(v: number): GatingFunc {
  if (v === 1) return "softmax";
  if (v === 2) return "sigmoid";
  throw new ModelConfigError(
    `${ARCH}: expert_gating_func ${v} is not supported (1 = softmax, 2 = sigmoid; llama.cpp needs one)`,
  );
}

function check(c: ModelConfig): ModelConfig {
  if (c.headDimK !== c.headDimV) {
    throw new ModelConfigError(
      `${ARCH}: key_length ${c.headDimK} must equal value_length ${c.headDimV}`,
    );
  }
  checkMoeConfig(c);
  return c;
}

/** The `minimax-m2` architecture. */
export const minimaxM2: ArchSpec<typeof ARCH> = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    const k = (key: string) => archKey(key, ARCH);
    return check({
      ...readCommonConfig(md, ARCH),
      ...GRAPH,
      nFfExp: md.number(k(Keys.feedForwardLength)),
      gating: gatingFunc(md.number(k(Keys.expertGatingFunc), 0)),
    });
  },
  writeConfig: (c) => [
    ...writeCommonConfig(c, { nFf: c.nFfExp }),
    [archKey(Keys.expertFeedForwardLength, c.arch), gv.u32(c.nFfExp)],
    [archKey(Keys.expertGatingFunc, c.arch), gv.u32(c.gating === "sigmoid" ? 2 : 1)],
  ],
  tensorPlan: (c) =>
    moeTransformerPlan(c, { tiedOutput: false, attnBiases: "none", selectionBias: "required" }),
  synthetic: {
    fields: ["gating"],
    defaults: { gating: "sigmoid" },
    config: (s) =>
      check({ ...syntheticCommonConfig(s), ...GRAPH, nFfExp: s.nFfExp, gating: s.gating }),
  },
};
