/**
 * Non-finite detection on the GPU: a check after each layer (and after the
 * output head) that lowers a one-word flag to the index of the first layer
 * whose output holds a NaN or an infinity. The flag is read back with the
 * tokens, so a generation ends with an error naming the layer instead of
 * sampling token 0 from NaN logits, at no extra sync.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { workgroupCount } from "../dispatch.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** The flag's value while every checked output has been finite. */
export const FINITE = 0xffff_ffff;

/**
 * `flag[0] = min(flag[0], layer)` when any of the batch's rows of `x`
 * (`n` elements each; `tokens` rows, or the step buffer's count) holds a
 * NaN or an infinity, unless an expert missed in this pass (`misses[0]`).
 */
export async function prepareCheckFinite(
  gpu: Gpu,
  a: {
    x: ActView;
    n: number;
    flag: GPUBuffer;
    misses: GPUBuffer;
    step: GPUBuffer;
    layer: number;
    /** Rows to check whatever the batch size (the output head's one row). */
    fixedTokens?: number;
    label: string;
  },
): Promise<Op> {
  const kernel = await getPipeline(gpu, "finite", {
    entryPoint: "check_finite",
    constants: { WG_SIZE },
  });
  const params = new ParamsBuffer(gpu, `${a.label}.params`, {
    n: "u32",
    offset: "u32",
    stride: "u32",
    layer: "u32",
    tokens: "u32",
  });
  params.write({
    n: a.n,
    offset: a.x.offset,
    stride: a.x.stride,
    layer: a.layer,
    tokens: a.fixedTokens ?? 0,
  });
  const fixed = a.fixedTokens;
  return {
    label: a.label,
    kernel,
    bindings: [a.x.buffer, a.flag, a.misses, a.step, params.buffer],
    workgroups: fixed === undefined
      ? (nTokens: number) => workgroupCount(a.n * nTokens, WG_SIZE)
      : workgroupCount(a.n * fixed, WG_SIZE),
  };
}
