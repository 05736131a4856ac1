/**
 * Token selection on the GPU (`shaders/sample.wgsl`): greedy argmax over
 * logits, writing the token id where the next token's embedding reads it,
 * and the winning logit for the caller's statistics. The file is the home of
 * the sampler; temperature, top-k and top-p are to come as further entry
 * points.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { bindFrom, checkInt, placeholder } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 256;

/** An element of a GPU buffer: `buffer[index]` (4-byte units). */
export interface BufSlot {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** Element index. */
  readonly index: number;
}

/**
 * Which logits rows to pick from: `"first"` (row 0 only, e.g. a logits
 * buffer of the last token alone), `"last"` (row nTokens − 1 of the batch,
 * read from the step buffer), `"all"` (every row t, written to index + t).
 */
export type ArgmaxRows = "first" | "last" | "all";

/** Options of {@linkcode prepareArgmax}. */
export interface ArgmaxOptions {
  /** Logits `[T, n]` (row stride from the view). */
  logits: ActView;
  /** Vocabulary size (row length). */
  n: number;
  /** Where the token id goes (u32); with `rows: "all"` row t goes to `index + t`. */
  out: BufSlot;
  /** Where the chosen logit goes (f32), likewise; omitted = not written. */
  maxLogit?: BufSlot;
  /** Rows to pick from; default `"first"`. */
  rows?: ArgmaxRows;
  /** The step buffer; required for `rows: "last"`. */
  step?: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
}

/** Prepares greedy selection: the first index of the largest logit of each selected row. */
export async function prepareArgmax(gpu: Gpu, o: ArgmaxOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  const rows = o.rows ?? "first";
  if (rows === "last" && !o.step) {
    throw new TypeError(`${o.label}: rows "last" reads the batch size from the step buffer.`);
  }
  const kernel = await getPipeline(gpu, "sample", { entryPoint: "argmax", constants: { WG_SIZE } });
  const logits = bindFrom(gpu, o.logits.buffer, o.logits.offset, o.n);
  const out = bindFrom(gpu, o.out.buffer, o.out.index);
  const mx = o.maxLogit ? bindFrom(gpu, o.maxLogit.buffer, o.maxLogit.index) : undefined;
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    n: "u32",
    offset: "u32",
    stride: "u32",
    mode: "u32",
    outOffset: "u32",
    hasMax: "u32",
    maxOffset: "u32",
  });
  params.write({
    n: o.n,
    offset: logits.offset,
    stride: o.logits.stride,
    mode: rows === "first" ? 0 : rows === "last" ? 1 : 2,
    outOffset: out.offset,
    hasMax: mx ? 1 : 0,
    maxOffset: mx?.offset ?? 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [
      logits.binding,
      o.step ?? placeholder(gpu, "read"),
      out.binding,
      mx?.binding ?? placeholder(gpu, "write"),
      params.buffer,
    ],
    workgroups: rows === "all" ? (nTokens: number) => nTokens : 1,
  };
}
