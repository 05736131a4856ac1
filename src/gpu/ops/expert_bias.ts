/**
 * Per-expert biases read from the expert pool (`shaders/expert_bias.wgsl`):
 * GPT-OSS adds a bias row to each chosen expert's gate, up and down
 * projections. The biases stream with their expert, so the row is found by
 * the expert's pool slot, in the arena that holds it — the same
 * `idBase`/`nSlots` split as the arena's `matmul_id`.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { GgmlType } from "../../gguf/types.ts";
import { bindFrom, checkInt, tokenGrid } from "./elementwise.ts";
import type { ActView, GpuWeight, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareSlotBias}. */
export interface SlotBiasOptions {
  /** An arena's bias part: a stack of `nMats` f32 rows of at least `n` elements, one per slot. */
  bias: GpuWeight;
  /** The slot of `bias`'s first row. */
  idBase: number;
  /** u32 `[T, k]` pool slots of the chosen experts (token stride from the view). */
  slots: ActView;
  /** `[T, k, n]` projections to add to, in place (token stride from the view). */
  y: ActView;
  /** Elements between a token's k rows of `y`; default `n`. */
  yRowStride?: number;
  /** Experts per token. */
  k: number;
  /** Row length. */
  n: number;
  /** Name for errors and timings. */
  label: string;
}

/** Prepares `y[t, k, :] += bias[slots[t, k] − idBase]` for the slots of one arena. */
export async function prepareSlotBias(gpu: Gpu, o: SlotBiasOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  checkInt(o.label, "k", o.k, 1);
  checkInt(o.label, "idBase", o.idBase, 0);
  const w = o.bias;
  if (w.type.id !== GgmlType.F32 || w.chunks.length !== 1 || w.matStride % 4 !== 0) {
    throw new TypeError(
      `${o.label}: expert bias "${w.name}" must be one f32 stack (got ${w.type.name}, ` +
        `${w.chunks.length} chunks)`,
    );
  }
  if (w.nCols * w.nRows < o.n) {
    throw new RangeError(`${o.label}: bias rows of ${w.nCols * w.nRows} < n ${o.n}`);
  }
  const kernel = await getPipeline(gpu, "expert_bias", {
    entryPoint: "add_slot_bias",
    constants: { WG_SIZE },
  });
  const chunk = w.chunks[0]!;
  // the last slot's bias ends its span: a stack inside a larger slot (other parts after it) stops there
  const span = (w.nMats - 1) * (w.matStride / 4) + w.nCols * w.nRows;
  const bias = bindFrom(gpu, chunk.buffer, chunk.byteOffset / 4, span);
  const slots = bindFrom(gpu, o.slots.buffer, o.slots.offset);
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    n: "u32",
    k: "u32",
    idBase: "u32",
    nSlots: "u32",
    biasOffset: "u32",
    biasStride: "u32",
    slotsOffset: "u32",
    slotsStride: "u32",
    yOffset: "u32",
    yStride: "u32",
    yRowStride: "u32",
  });
  params.write({
    n: o.n,
    k: o.k,
    idBase: o.idBase,
    nSlots: w.nMats,
    biasOffset: bias.offset,
    biasStride: w.matStride / 4,
    slotsOffset: slots.offset,
    slotsStride: o.slots.stride,
    yOffset: y.offset,
    yStride: o.y.stride,
    yRowStride: o.yRowStride ?? o.n,
  });
  return {
    label: o.label,
    kernel,
    bindings: [bias.binding, slots.binding, y.binding, params.buffer],
    workgroups: tokenGrid(Math.ceil((o.k * o.n) / WG_SIZE)),
  };
}
