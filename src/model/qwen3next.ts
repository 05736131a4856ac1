/**
 * The hybrid Qwen MoE models: `qwen3next` (Qwen3-Next-80B-A3B) and
 * `qwen35moe` (Qwen3.5/3.6-35B-A3B and larger siblings), as llama.cpp reads
 * them (`src/models/qwen3next.cpp`, `qwen35moe.cpp`, `delta-net-base.cpp`).
 * Three blocks of four (the interval from metadata) are gated DeltaNet
 * layers, the rest gated full attention; every block's FFN is a
 * softmax-routed MoE with renormalised top-k weights plus a sigmoid-gated
 * shared expert, after `post_attention_norm`. Multi-token-prediction blocks
 * after the trunk are not run. The two differ in how value heads share q/k
 * heads (qwen3next: v head h uses k head h / (nV / nK); qwen35moe: h % nK),
 * in qwen3next's fused beta/alpha projection `ssm_ba`, and in qwen35moe's
 * IMRoPE sections — which, with every section at the same position as for
 * text, rotate exactly as NeoX does.
 *
 * Forward pass (`transformer.ts` with `blocks/`), per block:
 * 1. DeltaNet blocks, `x += deltaNetBlock(x)`: attn_norm → attn_qkv, z =
 *    attn_gate, beta/alpha → sigmoid(beta), decay exp(softplus(alpha +
 *    dt) · a) → causal conv1d over the conv state → SiLU → the delta rule
 *    over each value head's state (q, k L2-normalised) → RMSNorm per head ×
 *    silu(z) → ssm_out. Attention blocks, `x += gatedAttention(x)`:
 *    attn_norm → Q (per head [q | gate]) → q norm → K, V → k norm → NeoX
 *    RoPE on `nRot` dims → cache → attention → × sigmoid(gate) →
 *    attn_output.
 * 2. `x += moeFfn(x)`: post_attention_norm → router (softmax, top-k
 *    renormalised) → SwiGLU experts + the shared expert ×
 *    sigmoid(ffn_gate_inp_shexp · x).
 *
 * then output_norm → output (tied to token_embd when absent).
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { archKey, Keys, tensorName as tn, Tensors } from "../gguf/names.ts";
import { type GgufValue, gv } from "../gguf/value.ts";
import {
  checkMoeConfig,
  type DeltaNetConfig,
  type ModelConfig,
  ModelConfigError,
  readCommonConfig,
  type TensorPlanEntry,
  writeCommonConfig,
} from "./config.ts";
import { headPlan, moePlan } from "./plan.ts";
import { type ArchSpec, normalInit, syntheticCommonConfig } from "./arch.ts";

type HybridArch = "qwen3next" | "qwen35moe";

/** The graph choices: the same in every file of both. */
const GRAPH = {
  ropeType: "neox",
  sharedExpertGated: true,
  gating: "softmax",
  normTopK: true,
  qkNorm: "head",
  attnGated: true,
  ffnNorm: Tensors.attnPostNorm,
} as const satisfies Partial<ModelConfig>;

/** DeltaNet layers: all but every `interval`-th (llama.cpp's default pattern). */
function recurrentPattern(nLayer: number, interval: number): boolean[] {
  return Array.from({ length: nLayer }, (_, i) => (i + 1) % interval !== 0);
}

function check(c: ModelConfig): ModelConfig {
  const d = c.deltaNet!;
  if (!(d.nVHeads > 0 && d.nKHeads > 0 && d.nVHeads % d.nKHeads === 0 && d.stateSize > 0)) {
    throw new ModelConfigError(
      `${c.arch}: ssm.group_count ${d.nKHeads} must divide ssm.time_step_rank ${d.nVHeads} ` +
        `and ssm.state_size ${d.stateSize} must be positive`,
    );
  }
  if (!(d.convKernel >= 1)) {
    throw new ModelConfigError(`${c.arch}: ssm.conv_kernel ${d.convKernel} must be ≥ 1`);
  }
  if (c.headDimK !== c.headDimV) {
    throw new ModelConfigError(`${c.arch}: key_length and value_length must agree`);
  }
  if (!(c.nFfShexp > 0)) {
    throw new ModelConfigError(
      `${c.arch}: the shared expert needs expert_shared_feed_forward_length`,
    );
  }
  checkMoeConfig(c);
  return c;
}

function readConfig(md: GgufMetadata, arch: HybridArch): ModelConfig {
  const k = (key: string) => archKey(key, arch);
  const common0 = readCommonConfig(md, arch);
  // llama.cpp: n_layer = block_count − nextn_predict_layers; the MTP blocks come last and are not run.
  const nNextn = md.number(k(Keys.nextnPredictLayers), 0);
  if (!Number.isInteger(nNextn) || nNextn < 0 || nNextn >= common0.nLayer) {
    throw new ModelConfigError(
      `${arch}: nextn_predict_layers ${nNextn} must be in 0…block_count − 1 (${common0.nLayer})`,
    );
  }
  const common = { ...common0, nLayer: common0.nLayer - nNextn };
  const nLayer = common.nLayer;
  let recurrent: boolean[];
  const listed = md.numbers(k(Keys.attentionRecurrentLayers));
  if (listed) {
    if (listed.length < nLayer) {
      throw new ModelConfigError(
        `${arch}: attention.recurrent_layers has ${listed.length} entries for ${nLayer} blocks`,
      );
    }
    recurrent = listed.slice(0, nLayer).map((v) => v !== 0);
  } else {
    const interval = md.number(k(Keys.fullAttentionInterval), 4);
    if (!(Number.isInteger(interval) && interval >= 1)) {
      throw new ModelConfigError(`${arch}: full_attention_interval ${interval} must be ≥ 1`);
    }
    recurrent = recurrentPattern(nLayer, interval);
  }
  const deltaNet: DeltaNetConfig = {
    convKernel: md.number(k(Keys.ssmConvKernel)),
    stateSize: md.number(k(Keys.ssmStateSize)),
    nVHeads: md.number(k(Keys.ssmTimeStepRank)),
    nKHeads: md.number(k(Keys.ssmGroupCount)),
    recurrent,
    interleaved: arch === "qwen3next",
    fusedBa: arch === "qwen3next",
  };
  const inner = md.number(k(Keys.ssmInnerSize));
  if (inner !== deltaNet.stateSize * deltaNet.nVHeads) {
    throw new ModelConfigError(
      `${arch}: ssm.inner_size ${inner} must equal ssm.state_size ${deltaNet.stateSize} × ` +
        `ssm.time_step_rank ${deltaNet.nVHeads}`,
    );
  }
  const nFf = md.number(k(Keys.feedForwardLength), 0);
  return check({
    ...common,
    ...GRAPH,
    nFfExp: md.number(k(Keys.expertFeedForwardLength), 0) ||
      Math.floor(nFf / Math.max(1, common.nExpertUsed)),
    nFfShexp: md.number(k(Keys.expertSharedFeedForwardLength), 0) || nFf,
    deltaNet,
    ...(nNextn > 0 ? { nNextn } : {}),
  });
}

function writeConfig(c: ModelConfig): [string, GgufValue][] {
  const k = (key: string) => archKey(key, c.arch);
  const d = c.deltaNet!;
  const out: [string, GgufValue][] = [
    ...writeCommonConfig(c, { nFf: c.nFfShexp }),
    [k(Keys.expertFeedForwardLength), gv.u32(c.nFfExp)],
    [k(Keys.expertSharedFeedForwardLength), gv.u32(c.nFfShexp)],
    [k(Keys.ssmConvKernel), gv.u32(d.convKernel)],
    [k(Keys.ssmStateSize), gv.u32(d.stateSize)],
    [k(Keys.ssmInnerSize), gv.u32(d.stateSize * d.nVHeads)],
    [k(Keys.ssmTimeStepRank), gv.u32(d.nVHeads)],
    [k(Keys.ssmGroupCount), gv.u32(d.nKHeads)],
  ];
  // the interval, when the layers follow one (as every released model does); else the list
  const interval = Array.from({ length: c.nLayer }, (_, i) => i + 1).find((n) =>
    recurrentPattern(c.nLayer, n).every((r, i) => r === d.recurrent[i])
  );
  if (interval !== undefined) {
    out.push([k(Keys.fullAttentionInterval), gv.u32(interval)]);
  } else {
    out.push([k(Keys.attentionRecurrentLayers), gv.bools([...d.recurrent])]);
  }
  if (c.arch === "qwen35moe") {
    // IMRoPE's sections (Qwen3.5: [11, 11, 10, 0] of 32 pairs); text gives every section one position
    const pairs = c.nRot / 2;
    const third = Math.floor(pairs / 3);
    out.push([k(Keys.ropeDimensionSections), gv.i32s([pairs - 2 * third, third, third, 0])]);
  }
  if (c.nNextn) out.push([k(Keys.nextnPredictLayers), gv.u32(c.nNextn)]);
  return out;
}

/** Gated full attention of block `i`: norm, Q (with its gate), K, V, output, per-head q/k norms. */
function gatedAttentionPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const hd = c.headDimK;
  return [
    { name: tn(Tensors.attnNorm, i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.attnQ, i), shape: [c.nEmbd, 2 * c.nHead * hd], role: "base" },
    { name: tn(Tensors.attnK, i), shape: [c.nEmbd, c.nHeadKv * hd], role: "base" },
    { name: tn(Tensors.attnV, i), shape: [c.nEmbd, c.nHeadKv * hd], role: "base" },
    { name: tn(Tensors.attnOut, i), shape: [c.nHead * hd, c.nEmbd], role: "base" },
    { name: tn(Tensors.attnQNorm, i), shape: [hd], role: "base" },
    { name: tn(Tensors.attnKNorm, i), shape: [hd], role: "base" },
  ];
}

/** The gated DeltaNet of block `i`, in the tensors llama.cpp's current converter writes. */
function deltaNetPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const d = c.deltaNet!;
  const keyDim = d.stateSize * d.nKHeads;
  const valueDim = d.stateSize * d.nVHeads;
  const convDim = 2 * keyDim + valueDim;
  // Qwen3-Next files of older converters hold one `ssm_in` [E, nK · (q | k | v | z)]
  // per k head, v and z holding the head's nV / nK value heads: split by rows.
  const legacy = (part: "qkv" | "z") => {
    if (!d.fusedBa) return undefined;
    const S = d.stateSize;
    const vPerK = (d.nVHeads / d.nKHeads) * S;
    const G = 2 * S + 2 * vPerK;
    const rows: number[] = [];
    const take = (offset: number, n: number) => {
      for (let kh = 0; kh < d.nKHeads; kh++) {
        for (let r = 0; r < n; r++) rows.push(kh * G + offset + r);
      }
    };
    if (part === "qkv") {
      take(0, S);
      take(S, S);
      take(2 * S, vPerK);
    } else {
      take(2 * S + vPerK, vPerK);
    }
    return { name: tn(Tensors.ssmIn, i), shape: [c.nEmbd, d.nKHeads * G], rows };
  };
  const out: TensorPlanEntry[] = [
    { name: tn(Tensors.attnNorm, i), shape: [c.nEmbd], role: "base" },
    {
      name: tn(Tensors.attnQkv, i),
      shape: [c.nEmbd, convDim],
      role: "base",
      alternative: legacy("qkv"),
    },
    {
      name: tn(Tensors.attnGate, i),
      shape: [c.nEmbd, valueDim],
      role: "base",
      alternative: legacy("z"),
    },
    {
      name: tn(Tensors.ssmConv1d, i),
      shape: [d.convKernel, convDim],
      role: "base",
      asF32: true,
    },
    { name: tn(Tensors.ssmDt, i, "bias"), shape: [d.nVHeads], role: "base" },
    { name: tn(Tensors.ssmA, i, ""), shape: [d.nVHeads], role: "base" },
  ];
  if (d.fusedBa) {
    out.push({ name: tn(Tensors.ssmBa, i), shape: [c.nEmbd, 2 * d.nVHeads], role: "base" });
  } else {
    out.push(
      { name: tn(Tensors.ssmBeta, i), shape: [c.nEmbd, d.nVHeads], role: "base" },
      { name: tn(Tensors.ssmAlpha, i), shape: [c.nEmbd, d.nVHeads], role: "base" },
    );
  }
  out.push(
    { name: tn(Tensors.ssmNorm, i), shape: [d.stateSize], role: "base" },
    { name: tn(Tensors.ssmOut, i), shape: [valueDim, c.nEmbd], role: "base" },
  );
  return out;
}

function tensorPlan(c: ModelConfig): TensorPlanEntry[] {
  const plan = headPlan(c, true);
  for (let i = 0; i < c.nLayer; i++) {
    plan.push(
      ...(c.deltaNet!.recurrent[i] ? deltaNetPlan(c, i) : gatedAttentionPlan(c, i)),
      ...moePlan(c, i),
    );
  }
  return plan;
}

function hybridArch<N extends HybridArch>(name: N): ArchSpec<N> {
  return {
    name,
    readConfig: (md) => readConfig(md, name),
    writeConfig,
    tensorPlan,
    synthetic: {
      fields: name === "qwen3next"
        ? ["nFfShexp", "ssm", "fullAttnInterval", "legacyInProj"]
        : ["nFfShexp", "ssm", "fullAttnInterval"],
      // an older converter's file: one fused ssm_in instead of attn_qkv and attn_gate
      fileTensors: (entries, s) => {
        if (!s.legacyInProj) return entries;
        const out: TensorPlanEntry[] = [];
        for (const e of entries) {
          if (e.alternative && e.name.endsWith(".attn_qkv.weight")) {
            out.push({ name: e.alternative.name, shape: e.alternative.shape, role: "base" });
          } else if (!e.alternative) {
            out.push(e);
          }
        }
        return out;
      },
      check(s, bad) {
        if (!Number.isInteger(s.nFfShexp) || s.nFfShexp < 1) {
          bad(
            `${name} has a shared expert: nFfShexp must be a positive integer, got ${s.nFfShexp}`,
          );
        }
        for (const [k, v] of Object.entries(s.ssm)) {
          if (!Number.isInteger(v) || v < 1) bad(`ssm.${k} must be a positive integer, got ${v}`);
        }
        if (s.ssm.nVHeads % s.ssm.nKHeads !== 0) {
          bad(`ssm.nKHeads (${s.ssm.nKHeads}) must divide ssm.nVHeads (${s.ssm.nVHeads})`);
        }
        if (!Number.isInteger(s.fullAttnInterval) || s.fullAttnInterval < 1) {
          bad(`fullAttnInterval must be a positive integer, got ${s.fullAttnInterval}`);
        }
      },
      config: (s) =>
        check({
          ...syntheticCommonConfig(s),
          ...GRAPH,
          nFfExp: s.nFfExp,
          nFfShexp: s.nFfShexp,
          deltaNet: {
            ...s.ssm,
            recurrent: recurrentPattern(s.nLayer, s.fullAttnInterval),
            interleaved: name === "qwen3next",
            fusedBa: name === "qwen3next",
          },
        }),
      init(t) {
        // ssm_a = −exp(A_log): decays exp(softplus(·) · a) well inside (0, 1)
        if (t.base === Tensors.ssmA) return { kind: "uniform", lo: -1.5, hi: -0.3 };
        if (t.base === Tensors.ssmConv1d) return normalInit(t.shape[0]!, 1.5);
        const gates: string[] = [Tensors.ssmBeta, Tensors.ssmAlpha, Tensors.ssmBa];
        if (gates.includes(t.base)) return normalInit(t.shape[0]!, 1.5);
        return undefined;
      },
    },
  };
}

/** The `qwen3next` architecture (Qwen3-Next). */
export const qwen3Next: ArchSpec<"qwen3next"> = hybridArch("qwen3next");

/** The `qwen35moe` architecture (Qwen3.5/3.6-MoE). */
export const qwen35Moe: ArchSpec<"qwen35moe"> = hybridArch("qwen35moe");
