/**
 * The I-quant lattice grids, sign table and IQ4 values as byte arrays, decoded once from
 * the generated hex in `iq_tables.ts`. One source for the CPU dequantisers
 * (`dequant.ts`) and the WGSL kernels (`src/gpu/ops/quant_wgsl.ts`, which
 * writes these bytes into the shader as constants).
 *
 * Entry `i` of a grid is bytes `[w * i, w * (i + 1))` with `w` its
 * {@link IqGrid.width} (8 for the 64-bit grids, 4 for the IQ3 grids): ggml's
 * table entry in little-endian order, so byte `j` is the grid value of element
 * `j`. IQ1_S/IQ1_M's grid holds signed bytes (-1, 0, 1).
 *
 * @module
 */

import {
  IQ1S_GRID,
  IQ2S_GRID,
  IQ2XS_GRID,
  IQ2XXS_GRID,
  IQ3S_GRID,
  IQ3XXS_GRID,
  KSIGNS_IQ2XS,
  KVALUES_IQ4NL,
} from "./iq_tables.ts";

/** One decoded grid. */
export interface IqGrid {
  /** ggml's table name (`"iq2xxs_grid"`). */
  readonly name: string;
  /** Bytes per entry: 8, or 4 for the IQ3 grids. */
  readonly width: number;
  /** Number of entries. */
  readonly count: number;
  /** `count * width` bytes, entry after entry, element order. */
  readonly bytes: Uint8Array;
}

function decode(name: string, lines: readonly string[], width: number): IqGrid {
  const hex = lines.join(" ").split(" ");
  const bytes = new Uint8Array(hex.length * width);
  hex.forEach((h, i) => {
    if (h.length !== 2 * width) throw new Error(`${name}: entry ${i} "${h}" is not ${width} bytes`);
    // Little-endian: the last two hex digits are byte 0.
    for (let j = 0; j < width; j++) {
      bytes[i * width + j] = parseInt(h.slice(2 * (width - 1 - j), 2 * (width - j)), 16);
    }
  });
  return { name, width, count: hex.length, bytes };
}

/** IQ2_XXS grid: 256 entries of 8 values in {8, 25, 43}. */
export const IQ2XXS: IqGrid = decode("iq2xxs_grid", IQ2XXS_GRID, 8);
/** IQ2_XS grid: 512 entries of 8. */
export const IQ2XS: IqGrid = decode("iq2xs_grid", IQ2XS_GRID, 8);
/** IQ2_S grid: 1024 entries of 8. */
export const IQ2S: IqGrid = decode("iq2s_grid", IQ2S_GRID, 8);
/** IQ3_XXS grid: 256 entries of 4 values. */
export const IQ3XXS: IqGrid = decode("iq3xxs_grid", IQ3XXS_GRID, 4);
/** IQ3_S grid: 512 entries of 4 values. */
export const IQ3S: IqGrid = decode("iq3s_grid", IQ3S_GRID, 4);
/** IQ1_S / IQ1_M grid: 2048 entries of 8 signed values (-1, 0, 1 as 0xff, 0, 1). */
export const IQ1S: IqGrid = decode("iq1s_grid", IQ1S_GRID, 8);

/**
 * ggml's `ksigns_iq2xs`: 7 sign bits (element 0..6) to 8, the eighth bit
 * making the count of minus signs even. Bit `j` set: element `j` is negated.
 */
export const KSIGNS: Uint8Array = decode("ksigns_iq2xs", KSIGNS_IQ2XS, 1).bytes;

/** ggml's `kvalues_iq4nl`: the 16 non-linear values of IQ4_NL and IQ4_XS. */
export const KVALUES_IQ4: Int8Array = new Int8Array(
  decode("kvalues_iq4nl", KVALUES_IQ4NL, 1).bytes.buffer,
);
