/**
 * Tensor-plan building blocks shared by the architectures: the embedding and
 * output head, grouped-query attention, and the routed-expert FFN.
 *
 * @module
 */

import { tensorName as tn, Tensors } from "../gguf/names.ts";
import type { ModelConfig, TensorPlanEntry } from "./config.ts";

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

/** Attention of block `i`: norm, q/k/v (optional biases), output, optional q/k norms. */
export function attentionPlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const q = c.nHead * c.headDimK;
  const kv = c.nHeadKv * c.headDimK;
  const v = c.nHeadKv * c.headDimV;
  const out: TensorPlanEntry[] = [
    { name: tn(Tensors.attnNorm, i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.attnQ, i), shape: [c.nEmbd, q], role: "base" },
    { name: tn(Tensors.attnK, i), shape: [c.nEmbd, kv], role: "base" },
    { name: tn(Tensors.attnV, i), shape: [c.nEmbd, v], role: "base" },
    { name: tn(Tensors.attnQ, i, "bias"), shape: [q], role: "base", optional: true },
    { name: tn(Tensors.attnK, i, "bias"), shape: [kv], role: "base", optional: true },
    { name: tn(Tensors.attnV, i, "bias"), shape: [v], role: "base", optional: true },
    { name: tn(Tensors.attnOut, i), shape: [c.nHead * c.headDimV, c.nEmbd], role: "base" },
    { name: tn(Tensors.attnOut, i, "bias"), shape: [c.nEmbd], role: "base", optional: true },
  ];
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

/** The MoE FFN of block `i`: norm, router, routed experts, and the shared expert if any. */
export function moePlan(c: ModelConfig, i: number): TensorPlanEntry[] {
  const out: TensorPlanEntry[] = [
    { name: tn(Tensors.ffnNorm, i), shape: [c.nEmbd], role: "base" },
    { name: tn(Tensors.ffnGateInp, i), shape: [c.nEmbd, c.nExpert], role: "base" },
    { name: tn(Tensors.ffnGateExps, i), shape: [c.nEmbd, c.nFfExp, c.nExpert], role: "expert" },
    { name: tn(Tensors.ffnUpExps, i), shape: [c.nEmbd, c.nFfExp, c.nExpert], role: "expert" },
    { name: tn(Tensors.ffnDownExps, i), shape: [c.nFfExp, c.nEmbd, c.nExpert], role: "expert" },
  ];
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

/** The usual MoE transformer: head, then attention + MoE FFN in every block. */
export function moeTransformerPlan(c: ModelConfig, outputOptional: boolean): TensorPlanEntry[] {
  const plan = headPlan(c, outputOptional);
  for (let i = 0; i < c.nLayer; i++) plan.push(...attentionPlan(c, i), ...moePlan(c, i));
  return plan;
}
