/**
 * `qwen2moe`: Qwen1.5-MoE and Qwen2-57B-A14B. q/k/v biases, a shared expert
 * scaled by sigmoid(`ffn_gate_inp_shexp` · x), softmax router whose top-k
 * weights are NOT renormalised, NeoX RoPE.
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v + biases → NeoX RoPE →
 *    cache → attention → attn_output.
 * 2. `x += moeFfn(x)`: ffn_norm → router (softmax, top-k as is) → SwiGLU
 *    experts + the shared expert × sigmoid(ffn_gate_inp_shexp · x).
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
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  writeCommonConfig,
} from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import { type ArchSpec, syntheticCommonConfig } from "./arch.ts";

const ARCH = "qwen2moe";

/** The graph choices: the same in every qwen2moe file. */
const GRAPH = {
  ropeType: "neox",
  sharedExpertGated: true,
  gating: "softmax",
  normTopK: false,
  qkNorm: "none",
} as const satisfies Partial<ModelConfig>;

function check(c: ModelConfig): ModelConfig {
  if (c.nHead * c.headDimK !== c.nEmbd || c.headDimK !== c.headDimV || c.nRot !== c.headDimK) {
    throw new ModelConfigError(
      "qwen2moe: head_count × key_length must equal embedding_length and rope.dimension_count must equal key_length",
    );
  }
  checkMoeConfig(c);
  return c;
}

/** The `qwen2moe` architecture. */
export const qwen2Moe: ArchSpec<typeof ARCH> = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    const common = readCommonConfig(md, ARCH);
    const nFf = md.number(archKey(Keys.feedForwardLength, ARCH), 0);
    return check({
      ...common,
      ...GRAPH,
      nFfExp: md.number(archKey(Keys.expertFeedForwardLength, ARCH), 0) ||
        Math.floor(nFf / Math.max(1, common.nExpertUsed)),
      nFfShexp: md.number(archKey(Keys.expertSharedFeedForwardLength, ARCH), 0) || nFf,
    });
  },
  writeConfig: (c) => [
    // as Qwen1.5-MoE: feed_forward_length is the shared expert's width
    ...writeCommonConfig(c, { nFf: c.nFfShexp }),
    [archKey(Keys.expertFeedForwardLength, c.arch), gv.u32(c.nFfExp)],
    [archKey(Keys.expertSharedFeedForwardLength, c.arch), gv.u32(c.nFfShexp)],
  ],
  tensorPlan: (c) => moeTransformerPlan(c, { tiedOutput: false, attnBiases: "qkv" }),
  synthetic: {
    fields: ["nFfShexp"],
    check(s, bad) {
      if (!Number.isInteger(s.nFfShexp) || s.nFfShexp < 1) {
        bad(`qwen2moe has a shared expert: nFfShexp must be a positive integer, got ${s.nFfShexp}`);
      }
      if (s.headDim * s.nHead !== s.nEmbd) {
        bad(
          `llama.cpp's qwen2moe needs nHead * headDim = nEmbd (its attn_q is nEmbd × nEmbd), got ${s.nHead} * ${s.headDim} ≠ ${s.nEmbd}`,
        );
      }
    },
    config: (s) =>
      check({ ...syntheticCommonConfig(s), ...GRAPH, nFfExp: s.nFfExp, nFfShexp: s.nFfShexp }),
  },
};
