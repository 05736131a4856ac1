/**
 * The embedding lookup on the GPU: {@linkcode prepareGetRows} dequantises the
 * rows named by a batch's token ids from a weight in its ggml type
 * (`shaders/get_rows.wgsl`).
 *
 * @module
 */

import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import type { Gpu } from "../device.ts";
import { checkStepBuffer, type IdsView } from "./matmul.ts";
import type { ActView, GpuWeight, Op } from "./op.ts";
import {
  isGpuWeightType,
  kernelBlockSize,
  quantTableBuffer,
  quantVariant,
  quantWgsl,
  rowAlignment,
  UnsupportedWeightTypeError,
  usesQuantTable,
} from "./quant_wgsl.ts";
import { bindView, bindWeightChunk } from "./weights.ts";

/** Options of {@linkcode prepareGetRows}. */
export interface GetRowsOptions {
  /** The table, `[nRows, nCols]` (e.g. `token_embd`, rows = vocabulary); any number of chunks. */
  readonly w: GpuWeight;
  /** Row ids, u32 `[T]` (stride default 1). */
  readonly ids: IdsView;
  /** Output, f32 `[T, nCols]`. */
  readonly out: ActView;
  /** The step buffer (STORAGE usage); `T` at `STEP.nTokens`. */
  readonly step: GPUBuffer;
  /** Name for errors and timings. */
  readonly label: string;
  /** Invocations per workgroup (default 64). */
  readonly workgroupSize?: number;
}

const PARAMS_LAYOUT = {
  w_off: "u32",
  row_bytes: "u32",
  row_start: "u32",
  n_rows: "u32",
  n_cols: "u32",
  ids_off: "u32",
  ids_stride: "u32",
  out_off: "u32",
  out_stride: "u32",
} as const;

/**
 * Prepares `out[t, :] = W[ids[t], :]` for `t < T`, dequantised to f32: one op
 * per weight chunk, each writing only the tokens whose row it holds (an id
 * past the last row writes nothing). Params are written here, once.
 *
 * @throws {UnsupportedWeightTypeError} for a weight type the kernel cannot read.
 * @throws {RangeError} for a stack of matrices or bad views.
 *
 * @example
 * ```ts ignore
 * const ops = await prepareGetRows(gpu, { w: tokenEmbd, ids: { buffer: tokens, offset: 0 },
 *   out: { buffer: hidden, offset: 0, stride: nEmbd }, step, label: "token_embd" });
 * ```
 */
export async function prepareGetRows(gpu: Gpu, opts: GetRowsOptions): Promise<Op[]> {
  const { w, ids, out, step, label } = opts;
  if (!isGpuWeightType(w.type.id)) {
    throw new UnsupportedWeightTypeError(w.name, w.type.id, "the GPU row lookup");
  }
  if (w.nMats !== 1) {
    throw new RangeError(`${label}: "${w.name}" stacks ${w.nMats} matrices; get_rows takes one.`);
  }
  if (w.type.quantized && w.nCols % kernelBlockSize(w.type) !== 0) {
    throw new RangeError(
      `${label}: "${w.name}" rows of ${w.nCols} are not whole ${w.type.name} blocks.`,
    );
  }
  const a = rowAlignment(w.type);
  if (w.rowBytes % a !== 0 || w.chunks.some((c) => c.byteOffset % a !== 0)) {
    throw new RangeError(`${label}: "${w.name}" rows or chunks are not ${a}-byte aligned.`);
  }
  for (const [v, what] of [[ids, "ids"], [out, "out"]] as const) {
    if (!Number.isSafeInteger(v.offset) || v.offset < 0) {
      throw new RangeError(`${label}: ${what} offset ${v.offset} is not an element index.`);
    }
  }
  checkStepBuffer(step, label);
  const kernel = await getPipeline(gpu, "get_rows", {
    variant: quantVariant(w.type, w.name),
    defines: { QUANT: await quantWgsl(w.type, w.name, undefined, 5) },
    constants: { WG: opts.workgroupSize ?? 64 },
  });
  const ib = bindView(gpu, ids.buffer, ids.offset);
  const ob = bindView(gpu, out.buffer, out.offset);
  // The I-quants' grids, after the template's own bindings.
  const table = usesQuantTable(w.type) ? [quantTableBuffer(gpu)] : [];
  return w.chunks.map((chunk, i) => {
    const wb = bindWeightChunk(gpu, w, chunk);
    const name = w.chunks.length > 1 ? `${label}[${i}]` : label;
    const params = new ParamsBuffer(gpu, `${name}.params`, PARAMS_LAYOUT);
    params.write({
      w_off: wb.byteOffset,
      row_bytes: w.rowBytes,
      row_start: chunk.rowStart,
      n_rows: chunk.nRows,
      n_cols: w.nCols,
      ids_off: ib.offset,
      ids_stride: ids.stride ?? 1,
      out_off: ob.offset,
      out_stride: out.stride,
    });
    return {
      label: name,
      kernel,
      bindings: [wb.binding, ib.binding, step, ob.binding, params.buffer, ...table],
      workgroups: (nTokens: number) => nTokens,
    };
  });
}
