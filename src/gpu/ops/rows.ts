/**
 * Row selection: copy the last token's row of a batch into its own buffer,
 * so the output head and sampler run on one token whatever the batch size.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { workgroupCount } from "../dispatch.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** One `rows.wgsl` entry point over `x` (a view) into `out`, with the given u32 buffer as binding 2. */
async function prepareRowsOp(
  gpu: Gpu,
  entryPoint: string,
  a: { x: ActView; out: GPUBuffer; n: number; label: string },
  control: GPUBuffer,
  workgroups: Op["workgroups"],
): Promise<Op> {
  const kernel = await getPipeline(gpu, "rows", { entryPoint, constants: { WG_SIZE } });
  const params = new ParamsBuffer(gpu, `${a.label}.params`, {
    n: "u32",
    offset: "u32",
    stride: "u32",
  });
  params.write({ n: a.n, offset: a.x.offset, stride: a.x.stride });
  return {
    label: a.label,
    kernel,
    bindings: [a.x.buffer, a.out, control, params.buffer],
    workgroups,
  };
}

/** `out[i] = x[last token, i]` for `i < n`, the last token read from the step buffer. */
export function prepareCopyLastRow(
  gpu: Gpu,
  a: { x: ActView; out: GPUBuffer; n: number; step: GPUBuffer; label: string },
): Promise<Op> {
  return prepareRowsOp(gpu, "copy_last_row", a, a.step, workgroupCount(a.n, WG_SIZE));
}

/**
 * `out[r, i] = x[rows[r], i]` for `i < n`: the batch rows listed in the
 * head step buffer `step` (`[1]` rows, `[4 + r]` the batch row of output r),
 * for a batch of several sequences whose last tokens all need logits.
 * Recorded with the number of rows as the batch size.
 */
export function prepareGatherRows(
  gpu: Gpu,
  a: { x: ActView; out: GPUBuffer; n: number; step: GPUBuffer; label: string },
): Promise<Op> {
  return prepareRowsOp(
    gpu,
    "gather_rows",
    a,
    a.step,
    (rows: number) => [workgroupCount(a.n, WG_SIZE), rows],
  );
}

/**
 * `out[t] = x[t]` for every token row of the batch while `misses[0] == 0`:
 * keeps the residual stream that entered the first MoE step that missed an
 * expert, so the token can resume there once the expert is uploaded.
 */
export function prepareSaveIfClean(
  gpu: Gpu,
  a: { x: ActView; out: GPUBuffer; n: number; misses: GPUBuffer; label: string },
): Promise<Op> {
  return prepareRowsOp(
    gpu,
    "save_if_clean",
    a,
    a.misses,
    (nTokens: number) => workgroupCount(a.n * nTokens, WG_SIZE),
  );
}
