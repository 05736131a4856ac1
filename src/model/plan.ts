/**
 * Tensor-plan building blocks shared by the architectures: the embedding and
 * output head, grouped-query and latent (MLA) attention, the routed-expert
 * FFN and the dense FFN.
 *
 * @module
 */

import { tensorName as tn, Tensors } from "../gguf/names.ts";
import { ffnNormName, type ModelConfig, type TensorPlanEntry } from "./config.ts";

/** `token_embd`, `output_norm` and `output` (optional: tied to the embedding when absent). */
export function headPlan(c: ModelConfig, outputOptional: boolean): TensorPlanEntry[] {
  return [
    { name: tn(Tensors.tokenEmbd), shape: [c.nEmbd, c.nVocab], role: "base" },
    { name: tn(Tensors.outputNorm), shape: [c.nEmbd], role: "base" },
    {
      name: tn(Tensors.output),
      shape: [c.nEmbd, c.nVocab],
      role: "base",
      optional: outputOptional,
    },
  ];
}

/**
 * Which attention biases an architecture has: `"qkv"` (Qwen2-MoE) or
 * `"qkvo"` (GPT-OSS) required; `"none"` (its graph adds none, as
 * MiniMax-M2's); otherwise all four optional (llama.cpp reads them when
 * present, as for llama).
 */
export type AttentionBiases = "optional" | "none" | "qkv" | "qkvo";

/** Attention of block `i`: norm, q/k/v (biases), output (bias), q/k norms per `c.qkNorm`. */
export function attentionPlan(
  c: ModelConfig,
  i: number,
  biases: AttentionBiases = "optional",
): TensorPlanEntry[] {
  const q = c.nHead * c.headDimK;
  const kv = c.nHeadKv * c.headDimK;
  const v = c.nHeadKv * c.headDimV;
  const qkvOptional = biases === "optional";
  const oOptional = biases !== "qkvo";
  const all: TensorPlanEntry[] = [
    { name: tn(Tensors.attnNorm, i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.attnQ, i), shape: [c.nEmbd, q], role: "base" },
    { name: tn(Tensors.attnK, i), shape: [c.nEmbd, kv], role: "base" },
    { name: tn(Tensors.attnV, i), shape: [c.nEmbd, v], role: "base" },
    { name: tn(Tensors.attnQ, i, "bias"), shape: [q], role: "base", optional: qkvOptional },
    { name: tn(Tensors.attnK, i, "bias"), shape: [kv], role: "base", optional: qkvOptional },
    { name: tn(Tensors.attnV, i, "bias"), shape: [v], role: "base", optional: qkvOptional },
    { name: tn(Tensors.attnOut, i), shape: [c.nHead * c.headDimV, c.nEmbd], role: "base" },
    { name: tn(Tensors.attnOut, i, "bias"), shape: [c.nEmbd], role: "base", optional: oOptional },
  ];
  const out = all.filter((t) => biases !== "none" || !t.name.endsWith(".bias"));
  if (c.qkNorm === "head") {
    out.push(
      { name: tn(Tensors.attnQNorm, i), shape: [c.headDimK], role: "base" },
      { name: tn(Tensors.attnKNorm, i), shape: [c.headDimK], role: "base" },
    );
  } else if (c.qkNorm === "full") {
    out.push(
      { name: tn(Tensors.attnQNorm, i), shape: [q], role: "base" },
      { name: tn(Tensors.attnKNorm, i), shape: [kv], role: "base" },
    );
  }
  return out;
}

/**
 * Latent attention of block `i` (DeepSeek-V2/V3, Kimi-K2), in the layout
 * llama.cpp's converter writes: `attn_q` (no q compression) or `attn_q_a` +
 * `attn_q_a_norm` + `attn_q_b`; `attn_kv_a_mqa` ([latent | k_pe]),
 * `attn_kv_a_norm`, and `attn_kv_b` split per head into `attn_k_b` (stored
 * transposed, for absorption into q) and `attn_v_b`.
 */
export function mlaAttentionPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const m = c.mla!;
  const qDim = c.nHead * (m.nopeDim + m.ropeDim);
  const out: TensorPlanEntry[] = [
    { name: tn(Tensors.attnNorm, i), shape: [c.nEmbd], role: "base" },
  ];
  if (m.qLoraRank > 0) {
    out.push(
      { name: tn(Tensors.attnQA, i), shape: [c.nEmbd, m.qLoraRank], role: "base" },
      { name: tn(Tensors.attnQANorm, i), shape: [m.qLoraRank], role: "base" },
      { name: tn(Tensors.attnQB, i), shape: [m.qLoraRank, qDim], role: "base" },
    );
  } else {
    out.push({ name: tn(Tensors.attnQ, i), shape: [c.nEmbd, qDim], role: "base" });
  }
  out.push(
    {
      name: tn(Tensors.attnKvAMqa, i),
      shape: [c.nEmbd, m.kvLoraRank + m.ropeDim],
      role: "base",
    },
    { name: tn(Tensors.attnKvANorm, i), shape: [m.kvLoraRank], role: "base" },
    { name: tn(Tensors.attnKB, i), shape: [m.nopeDim, m.kvLoraRank, c.nHead], role: "base" },
    { name: tn(Tensors.attnVB, i), shape: [m.kvLoraRank, m.vHeadDim, c.nHead], role: "base" },
    { name: tn(Tensors.attnOut, i), shape: [c.nHead * m.vHeadDim, c.nEmbd], role: "base" },
  );
  return out;
}

/** The dense SwiGLU FFN of block `i` (DeepSeek's leading blocks). */
export function denseFfnPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const f = c.nFf!;
  return [
    { name: tn(Tensors.ffnNorm, i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.ffnGate, i), shape: [c.nEmbd, f], role: "base" },
    { name: tn(Tensors.ffnUp, i), shape: [c.nEmbd, f], role: "base" },
    { name: tn(Tensors.ffnDown, i), shape: [f, c.nEmbd], role: "base" },
  ];
}

/** What a routed-expert FFN carries beyond the router and the three expert stacks. */
export interface MoePlanOptions {
  /** `ffn_{gate,up,down}_exps.bias` (GPT-OSS): required. */
  biases?: boolean;
  /** The selection-only `exp_probs_b.bias`: may be present (DeepSeek) or is required (MiniMax-M2). */
  selectionBias?: "optional" | "required";
}

/** The MoE FFN of block `i`: norm, router, routed experts, and the shared expert if any. */
export function moePlan(c: ModelConfig, i: number, o: MoePlanOptions = {}): TensorPlanEntry[] {
  const out: TensorPlanEntry[] = [
    { name: tn(ffnNormName(c), i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.ffnGateInp, i), shape: [c.nEmbd, c.nExpert], role: "base" },
    { name: tn(Tensors.ffnGateExps, i), shape: [c.nEmbd, c.nFfExp, c.nExpert], role: "expert" },
    { name: tn(Tensors.ffnUpExps, i), shape: [c.nEmbd, c.nFfExp, c.nExpert], role: "expert" },
    { name: tn(Tensors.ffnDownExps, i), shape: [c.nFfExp, c.nEmbd, c.nExpert], role: "expert" },
  ];
  if (c.routerBias) {
    out.push({ name: tn(Tensors.ffnGateInp, i, "bias"), shape: [c.nExpert], role: "base" });
  }
  if (o.biases) {
    out.push(
      { name: tn(Tensors.ffnGateExps, i, "bias"), shape: [c.nFfExp, c.nExpert], role: "expert" },
      { name: tn(Tensors.ffnUpExps, i, "bias"), shape: [c.nFfExp, c.nExpert], role: "expert" },
      { name: tn(Tensors.ffnDownExps, i, "bias"), shape: [c.nEmbd, c.nExpert], role: "expert" },
    );
  }
  if (o.selectionBias) {
    out.push({
      name: tn(Tensors.ffnExpProbsB, i, "bias"),
      shape: [c.nExpert],
      role: "base",
      optional: o.selectionBias === "optional",
    });
  }
  if (c.nFfShexp > 0) {
    out.push(
      { name: tn(Tensors.ffnGateShexp, i), shape: [c.nEmbd, c.nFfShexp], role: "base" },
      { name: tn(Tensors.ffnUpShexp, i), shape: [c.nEmbd, c.nFfShexp], role: "base" },
      { name: tn(Tensors.ffnDownShexp, i), shape: [c.nFfShexp, c.nEmbd], role: "base" },
    );
    if (c.sharedExpertGated) {
      out.push({ name: tn(Tensors.ffnGateInpShexp, i), shape: [c.nEmbd], role: "base" });
    }
  }
  return out;
}

/** What {@linkcode moeTransformerPlan} lays out beyond attention + MoE FFN. */
export interface MoeTransformerPlanOptions extends MoePlanOptions {
  /** llama.cpp falls back to `token_embd` when `output.weight` is absent. */
  tiedOutput: boolean;
  /** Attention biases (default optional). */
  attnBiases?: AttentionBiases;
  /** One sink logit per head (`attn_sinks`, required). */
  sinks?: boolean;
}

/** The usual MoE transformer: head, then attention + MoE FFN in every block. */
export function moeTransformerPlan(
  c: ModelConfig,
  o: MoeTransformerPlanOptions,
): TensorPlanEntry[] {
  const plan = headPlan(c, o.tiedOutput);
  for (let i = 0; i < c.nLayer; i++) {
    plan.push(...attentionPlan(c, i, o.attnBiases));
    if (o.sinks) plan.push({ name: tn(Tensors.attnSinks, i), shape: [c.nHead], role: "base" });
    plan.push(...moePlan(c, i, o));
  }
  return plan;
}
