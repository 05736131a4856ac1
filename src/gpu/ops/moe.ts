/**
 * The MoE combine (`shaders/moe.wgsl`): the weighted sum of each token's
 * chosen experts' outputs, plus the shared expert (optionally gated by
 * `sigmoid(ffn_gate_inp_shexp · x)`, Qwen2-MoE) and the residual, in one
 * kernel.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { bindFrom, checkInt, placeholder, tokenGrid } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareMoeCombine}. */
export interface MoeCombineOptions {
  /** The chosen experts' outputs `[T, k, n]` (token stride from the view). */
  y: ActView;
  /** Elements between the k outputs of one token; default `n`. */
  yExpertStride?: number;
  /** The router's weights `[T, k]`. */
  weights: ActView;
  /** Shared expert output `[T, n]`. */
  shared?: ActView;
  /** Shared expert gate logit `[T]` (stride 1 per token, or as given): shared · σ(gate). */
  sharedGate?: ActView;
  /** Residual `[T, n]` added last; may be `out` itself. */
  residual?: ActView;
  /** Shorthand for `residual: out` (`out += combine`). */
  accumulate?: boolean;
  /** Output `[T, n]`. */
  out: ActView;
  /** Experts per token. */
  k: number;
  /** Row width (nEmbd). */
  n: number;
  /** Name for errors and timings. */
  label: string;
  /** Combine this many tokens whatever the batch size. */
  fixedTokens?: number;
}

/** Prepares `out = Σ_k w·y (+ shared·σ(gate)) (+ residual)` over `[T, n]`. */
export async function prepareMoeCombine(gpu: Gpu, o: MoeCombineOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  checkInt(o.label, "k", o.k, 1);
  if (o.sharedGate && !o.shared) throw new TypeError(`${o.label}: sharedGate without shared.`);
  if (o.accumulate && o.residual) {
    throw new TypeError(`${o.label}: give either residual or accumulate, not both.`);
  }
  const residualView = o.accumulate ? o.out : o.residual;
  const kernel = await getPipeline(gpu, "moe", { entryPoint: "combine", constants: { WG_SIZE } });
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const w = bindFrom(gpu, o.weights.buffer, o.weights.offset, o.k);
  const s = o.shared ? bindFrom(gpu, o.shared.buffer, o.shared.offset) : undefined;
  const g = o.sharedGate ? bindFrom(gpu, o.sharedGate.buffer, o.sharedGate.offset) : undefined;
  const r = residualView ? bindFrom(gpu, residualView.buffer, residualView.offset) : undefined;
  const out = bindFrom(gpu, o.out.buffer, o.out.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    n: "u32",
    k: "u32",
    yOffset: "u32",
    yStride: "u32",
    yExpertStride: "u32",
    wOffset: "u32",
    wStride: "u32",
    hasShared: "u32",
    sOffset: "u32",
    sStride: "u32",
    hasGate: "u32",
    gOffset: "u32",
    gStride: "u32",
    hasResidual: "u32",
    rOffset: "u32",
    rStride: "u32",
    oOffset: "u32",
    oStride: "u32",
  });
  params.write({
    n: o.n,
    k: o.k,
    yOffset: y.offset,
    yStride: o.y.stride,
    yExpertStride: o.yExpertStride ?? o.n,
    wOffset: w.offset,
    wStride: o.weights.stride,
    hasShared: s ? 1 : 0,
    sOffset: s?.offset ?? 0,
    sStride: o.shared?.stride ?? 0,
    hasGate: g ? 1 : 0,
    gOffset: g?.offset ?? 0,
    gStride: o.sharedGate?.stride ?? 0,
    hasResidual: r ? 1 : 0,
    rOffset: r?.offset ?? 0,
    rStride: residualView?.stride ?? 0,
    oOffset: out.offset,
    oStride: o.out.stride,
  });
  const read = placeholder(gpu, "read");
  return {
    label: o.label,
    kernel,
    bindings: [
      y.binding,
      w.binding,
      s?.binding ?? read,
      g?.binding ?? read,
      r?.binding ?? placeholder(gpu, "write"),
      out.binding,
      params.buffer,
    ],
    workgroups: tokenGrid(Math.ceil(o.n / WG_SIZE), o.fixedTokens),
  };
}
