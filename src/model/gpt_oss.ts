/**
 * `gpt-oss`: OpenAI's GPT-OSS, as llama.cpp reads it
 * (`src/models/openai-moe.cpp`): q/k/v and output biases, one sink logit
 * per head added to each attention softmax's denominator, sliding-window
 * attention on the even blocks (`attention.sliding_window`; the period is
 * `attention.sliding_window_pattern`, default 2) and full attention on the
 * others, NeoX RoPE with YaRN, `post_attention_norm` as the FFN's input
 * norm, a router with a bias whose top-k logits are softmaxed among
 * themselves, per-expert biases on gate, up and down (they stream with the
 * expert), and the clamped SwiGLU `g′·σ(1.702·g′)·(u′ + 1)`. The experts are
 * usually MXFP4 (`MXFP4_MOE` files), which the matmul kernels read as is.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys, tensorName as tn, Tensors } from "../gguf/names.ts";
import {
  checkMoeConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  type TensorPlanEntry,
} from "./config.ts";
import { attentionPlan, headPlan, moePlan } from "./plan.ts";
import type { ArchSpec } from "./registry.ts";

const ARCH = "gpt-oss";

/** The `gpt-oss` architecture. */
export const gptOss: ArchSpec = {
  name: ARCH,
  readConfig(md: GgufMetadata): ModelConfig {
    const k = (key: string) => archKey(key, ARCH);
    const common = readCommonConfig(md, ARCH);
    const window = md.number(k(Keys.slidingWindow));
    const period = md.number(k(Keys.slidingWindowPattern), 2);
    if (!(window > 0) || !(period >= 1)) {
      throw new ModelConfigError(
        `${ARCH}: attention.sliding_window ${window} and sliding_window_pattern ${period} must be positive`,
      );
    }
    const c: ModelConfig = {
      ...common,
      ropeType: "neox",
      nFfExp: md.number(k(Keys.expertFeedForwardLength)),
      nFfShexp: 0,
      sharedExpertGated: false,
      gating: "topk_softmax",
      normTopK: false,
      // expert_weights_scale is not read for gpt-oss
      expertWeightsScale: 0,
      qkNorm: "none",
      // the head width is n_rot (openai-moe.cpp sizes q/k/v with it)
      attnScale: 1 / Math.sqrt(common.nRot),
      // llama_hparams::set_swa_pattern(period): the last block of each period has full attention
      windows: Array.from(
        { length: common.nLayer },
        (_, l) => (l % period < period - 1 ? window : 0),
      ),
      ropeFreqBaseSwa: md.number(k(Keys.ropeFreqBaseSwa), common.ropeFreqBase),
      expertAct: "swiglu_oai",
    };
    if (c.headDimK !== c.nRot || c.headDimV !== c.nRot) {
      throw new ModelConfigError(
        `${ARCH}: key_length ${c.headDimK} and value_length ${c.headDimV} must equal rope.dimension_count ${c.nRot}`,
      );
    }
    checkMoeConfig(c);
    return c;
  },
  tensorPlan(c: ModelConfig): TensorPlanEntry[] {
    const plan = headPlan(c, false);
    for (let i = 0; i < c.nLayer; i++) {
      plan.push(
        ...attentionPlan(c, i),
        { name: tn(Tensors.attnSinks, i), shape: [c.nHead], role: "base" },
        ...moePlan(c, i, { norm: Tensors.attnPostNorm, biases: true }),
      );
    }
    return plan;
  },
};
