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
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. `x += gqaAttention(x)`: attn_norm → q, k, v + biases → NeoX RoPE (YaRN;
 *    `rope.freq_base_swa` on windowed blocks) → cache → attention with sinks
 *    (`attnSinks`) over the block's window (`windows`) → attn_output + bias.
 * 2. `x += moeFfn(x)`: post_attention_norm (`ffnNorm`) → router + bias
 *    (`routerBias`; `gating: "topk_softmax"`) → experts with biases, clamped
 *    SwiGLU (`expertAct: "swiglu_oai"`).
 *
 * then output_norm → output.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys, Tensors } from "../gguf/names.ts";
import { gv } from "../gguf/value.ts";
import {
  checkMoeConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  writeCommonConfig,
} from "./config.ts";
import { moeTransformerPlan } from "./plan.ts";
import { type ArchSpec, normalInit, syntheticCommonConfig } from "./arch.ts";

const ARCH = "gpt-oss";

/** The graph choices: the same in every gpt-oss file. */
const GRAPH = {
  ropeType: "neox",
  nFfShexp: 0,
  sharedExpertGated: false,
  gating: "topk_softmax",
  normTopK: false,
  // expert_weights_scale is not read for gpt-oss
  expertWeightsScale: 0,
  qkNorm: "none",
  expertAct: "swiglu_oai",
  ffnNorm: Tensors.attnPostNorm,
  attnSinks: true,
  routerBias: true,
} as const satisfies Partial<ModelConfig>;

/** llama_hparams::set_swa_pattern(period): the last block of each period has full attention. */
function swaWindows(nLayer: number, window: number, period: number): number[] {
  return Array.from({ length: nLayer }, (_, l) => (l % period < period - 1 ? window : 0));
}

function check(c: ModelConfig): ModelConfig {
  if (c.headDimK !== c.nRot || c.headDimV !== c.nRot) {
    throw new ModelConfigError(
      `${ARCH}: key_length ${c.headDimK} and value_length ${c.headDimV} must equal rope.dimension_count ${c.nRot}`,
    );
  }
  checkMoeConfig(c);
  return c;
}

/** The `gpt-oss` architecture. */
export const gptOss: ArchSpec<typeof ARCH> = {
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
    return check({
      ...common,
      ...GRAPH,
      nFfExp: md.number(k(Keys.expertFeedForwardLength)),
      // the head width is n_rot (openai-moe.cpp sizes q/k/v with it)
      attnScale: 1 / Math.sqrt(common.nRot),
      windows: swaWindows(common.nLayer, window, period),
      ropeFreqBaseSwa: md.number(k(Keys.ropeFreqBaseSwa), common.ropeFreqBase),
    });
  },
  writeConfig(c) {
    const k = (key: string) => archKey(key, c.arch);
    const windows = c.windows ?? [];
    const period = windows.indexOf(0) + 1;
    const out = writeCommonConfig(c, { nFf: 3 * c.nFfExp });
    out.push(
      [k(Keys.expertFeedForwardLength), gv.u32(c.nFfExp)],
      [k(Keys.slidingWindow), gv.u32(Math.max(0, ...windows))],
    );
    if (period !== 2) out.push([k(Keys.slidingWindowPattern), gv.u32(period)]);
    if (c.ropeFreqBaseSwa !== undefined && c.ropeFreqBaseSwa !== c.ropeFreqBase) {
      out.push([k(Keys.ropeFreqBaseSwa), gv.f32(c.ropeFreqBaseSwa)]);
    }
    return out;
  },
  tensorPlan: (c) =>
    moeTransformerPlan(c, { tiedOutput: false, attnBiases: "qkvo", sinks: true, biases: true }),
  synthetic: {
    fields: ["slidingWindow"],
    check(s, bad) {
      if (!Number.isInteger(s.slidingWindow) || s.slidingWindow < 1) {
        bad(`gpt-oss needs a sliding window ≥ 1, got ${s.slidingWindow}`);
      }
    },
    config(s) {
      const common = syntheticCommonConfig(s);
      return check({
        ...common,
        ...GRAPH,
        nFfExp: s.nFfExp,
        windows: swaWindows(s.nLayer, s.slidingWindow, 2),
        ropeFreqBaseSwa: common.ropeFreqBase,
      });
    },
    init(t) {
      // one logit per head in each softmax's denominator: about as large as the scores
      if (t.base === Tensors.attnSinks) return { kind: "normal", std: 2 };
      if (t.base === Tensors.ffnGateInp && t.suffix === "bias") return { kind: "normal", std: 1 };
      // the clamp (gate ≤ 7, |up| ≤ 7) should bite: gate and up at 3× the unit scale
      if (t.suffix !== "weight") return undefined;
      if (t.base === Tensors.ffnGateExps || t.base === Tensors.ffnUpExps) {
        return normalInit(t.shape[0]!, 3);
      }
      if (t.base === Tensors.ffnDownExps) return normalInit(t.shape[0]!, 1 / 3);
      return undefined;
    },
  },
};
