/**
 * Strided row copies (`shaders/copy_rows.wgsl`): `rows` rows of `n`
 * elements per token from one layout into another — for multi-head latent
 * attention, each head's rotated query part placed after its latent-space
 * part. A row stride of 0 in `x` broadcasts one row.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { bindFrom, checkInt, tokenGrid } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareCopyRows}. */
export interface CopyRowsOptions {
  /** Source `[T, rows, n]`: token stride from the view, rows `xRowStride` apart. */
  x: ActView;
  /** Elements between the rows of one token in `x` (0 broadcasts row 0). */
  xRowStride: number;
  /** Destination, rows `yRowStride` apart; must not overlap `x`. */
  y: ActView;
  /** Elements between the rows of one token in `y`. */
  yRowStride: number;
  /** Rows per token. */
  rows: number;
  /** Elements per row. */
  n: number;
  /** Name for errors and timings. */
  label: string;
}

/** Prepares `y[t, r, i] = x[t, r, i]` for the batch's tokens: workgroups `[⌈rows·n/64⌉, T]`. */
export async function prepareCopyRows(gpu: Gpu, o: CopyRowsOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  checkInt(o.label, "rows", o.rows, 1);
  checkInt(o.label, "xRowStride", o.xRowStride, 0);
  checkInt(o.label, "yRowStride", o.yRowStride, 0);
  const kernel = await getPipeline(gpu, "copy_rows", {
    entryPoint: "copy_rows",
    constants: { WG_SIZE },
  });
  const x = bindFrom(gpu, o.x.buffer, o.x.offset);
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    n: "u32",
    rows: "u32",
    xOffset: "u32",
    xStride: "u32",
    xRowStride: "u32",
    yOffset: "u32",
    yStride: "u32",
    yRowStride: "u32",
  });
  params.write({
    n: o.n,
    rows: o.rows,
    xOffset: x.offset,
    xStride: o.x.stride,
    xRowStride: o.xRowStride,
    yOffset: y.offset,
    yStride: o.y.stride,
    yRowStride: o.yRowStride,
  });
  return {
    label: o.label,
    kernel,
    bindings: [x.binding, y.binding, params.buffer],
    workgroups: tokenGrid(Math.ceil((o.rows * o.n) / WG_SIZE)),
  };
}
