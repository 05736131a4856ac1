/**
 * RMSNorm (`shaders/norm.wgsl`): `y = x / sqrt(mean(x²) + eps) · w` over rows
 * of length `n`, `rowsPerToken` rows per token — one for the attention,
 * FFN and output norms and for OLMoE's q/k norms over the whole projection,
 * one per head for Qwen3's per-head q/k norms.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import {
  bindFrom,
  type BufRef,
  checkInt,
  placeholder,
  resolveRef,
  tokenGrid,
} from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareRmsNorm}. */
export interface RmsNormOptions {
  /** Input `[T, rowsPerToken, n]` (token stride from the view). */
  x: ActView;
  /** Output, same shape; may be `x` itself (in place). */
  y: ActView;
  /** Row length. */
  n: number;
  /** Rows per token (heads, for per-head q/k norms); default 1. */
  rowsPerToken?: number;
  /** Elements between the rows of one token, in x and y; default `n`. */
  rowStride?: number;
  /** f32 `[n]` weight; omitted = plain normalisation. */
  weight?: BufRef;
  /** Added to the mean square. */
  eps: number;
  /** Name for errors and timings. */
  label: string;
  /** Normalise this many tokens whatever the batch size (1 for a last-row buffer). */
  fixedTokens?: number;
}

/** Prepares an RMSNorm over `[T, rowsPerToken, n]`: one workgroup per row. */
export async function prepareRmsNorm(gpu: Gpu, o: RmsNormOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  const rows = o.rowsPerToken ?? 1;
  checkInt(o.label, "rowsPerToken", rows, 1);
  const rowStride = o.rowStride ?? o.n;
  const kernel = await getPipeline(gpu, "norm", {
    entryPoint: "rms_norm",
    constants: { WG_SIZE },
  });
  const x = bindFrom(gpu, o.x.buffer, o.x.offset);
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const w = o.weight ? resolveRef(o.weight) : undefined;
  const wb = w ? bindFrom(gpu, w.buffer, w.offset) : undefined;
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    n: "u32",
    xOffset: "u32",
    xStride: "u32",
    xRowStride: "u32",
    yOffset: "u32",
    yStride: "u32",
    yRowStride: "u32",
    wOffset: "u32",
    hasWeight: "u32",
    eps: "f32",
  });
  params.write({
    n: o.n,
    xOffset: x.offset,
    xStride: o.x.stride,
    xRowStride: rowStride,
    yOffset: y.offset,
    yStride: o.y.stride,
    yRowStride: rowStride,
    wOffset: wb?.offset ?? 0,
    hasWeight: wb ? 1 : 0,
    eps: o.eps,
  });
  return {
    label: o.label,
    kernel,
    bindings: [x.binding, wb?.binding ?? placeholder(gpu, "read"), y.binding, params.buffer],
    workgroups: tokenGrid(rows, o.fixedTokens),
  };
}
