/**
 * Weights on the GPU: {@linkcode uploadWeight} turns a tensor's raw ggml
 * bytes into a {@linkcode GpuWeight} split by rows into chunks that each fit
 * one storage binding, and the binding helpers give kernels a range that
 * meets the device's offset alignment with the byte offset that is left.
 *
 * @module
 */

import { type GgmlTypeInfo, requireGgmlType, rowBytes as ggmlRowBytes } from "../../gguf/types.ts";
import { f32ToBf16, f32ToF16 } from "../../gguf/f16.ts";
import { align4, createBuffer, upload } from "../buffers.ts";
import type { Gpu } from "../device.ts";
import type { BufferBinding } from "../dispatch.ts";
import type { GpuWeight, WeightChunk } from "./op.ts";

/** Options of {@linkcode uploadWeight}. */
export interface UploadWeightOptions {
  /**
   * Most bytes one chunk may take; default the device's
   * `maxStorageBufferBindingSize`. Tests pass a small value to get chunks.
   */
  maxBindingBytes?: number;
  /** Follow the uploads with one flush (default true). */
  flush?: boolean;
}

/**
 * Uploads a weight tensor's raw ggml bytes (an mmapped view works: nothing
 * is copied in JS) and describes it as a {@linkcode GpuWeight}.
 *
 * `shape` is ggml's `ne`: `[nCols, nRows]` for a matrix, `[nCols, nRows,
 * nMats]` for a stack of experts. A matrix is split by rows into chunks of at
 * most `maxBindingBytes`, one buffer each (size padded to a multiple of 4); a
 * stack is one chunk and must fit one binding. Uploads use `writeBuffer`,
 * followed by one flush.
 *
 * @throws {RangeError} when the byte count does not match the shape, a row
 *   or a stack does not fit one binding.
 *
 * @example
 * ```ts ignore
 * const w = uploadWeight(gpu, "blk.0.attn_q.weight", GgmlType.Q4_K, [4096, 4096], bytes);
 * ```
 */
export function uploadWeight(
  gpu: Gpu,
  name: string,
  type: GgmlTypeInfo | number,
  shape: readonly number[],
  bytes: Uint8Array,
  opts: UploadWeightOptions = {},
): GpuWeight {
  const info = typeof type === "number" ? requireGgmlType(type) : type;
  if (
    shape.length < 1 || shape.length > 3 || shape.some((n) => !Number.isSafeInteger(n) || n < 1)
  ) {
    throw new RangeError(
      `uploadWeight "${name}": shape [${shape.join(", ")}] must be 1 to 3 positive integers ` +
        `(ggml ne: nCols, nRows, nMats).`,
    );
  }
  const nCols = shape[0]!;
  const nRows = shape[1] ?? 1;
  const nMats = shape[2] ?? 1;
  let rb: number;
  try {
    rb = ggmlRowBytes(info, nCols);
  } catch (cause) {
    throw new RangeError(`uploadWeight "${name}": ${(cause as Error).message}.`, { cause });
  }
  const matStride = rb * nRows;
  const total = matStride * nMats;
  if (bytes.byteLength !== total) {
    throw new RangeError(
      `uploadWeight "${name}": ${info.name} [${shape.join(", ")}] takes ${total} bytes, ` +
        `got ${bytes.byteLength}.`,
    );
  }
  const max = opts.maxBindingBytes ?? gpu.limits.maxStorageBufferBindingSize;
  const chunks: WeightChunk[] = [];
  const chunkBuffer = (label: string, data: Uint8Array): GPUBuffer => {
    const buffer = createBuffer(gpu, { label, size: align4(data.byteLength) });
    upload(gpu, buffer, data);
    return buffer;
  };
  if (nMats > 1) {
    if (total > max) {
      throw new RangeError(
        `uploadWeight "${name}": the stack of ${nMats} matrices takes ${total} bytes, over ` +
          `the ${max}-byte binding limit; upload the matrices (experts) separately.`,
      );
    }
    chunks.push({ buffer: chunkBuffer(name, bytes), byteOffset: 0, rowStart: 0, nRows });
  } else {
    const rowsPerChunk = Math.floor(max / rb);
    if (rowsPerChunk < 1) {
      throw new RangeError(
        `uploadWeight "${name}": one row takes ${rb} bytes, over the ${max}-byte binding limit.`,
      );
    }
    const nChunks = Math.ceil(nRows / rowsPerChunk);
    for (let rowStart = 0; rowStart < nRows; rowStart += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, nRows - rowStart);
      const label = nChunks > 1 ? `${name}[rows ${rowStart}..${rowStart + n - 1}]` : name;
      const data = bytes.subarray(rowStart * rb, (rowStart + n) * rb);
      chunks.push({ buffer: chunkBuffer(label, data), byteOffset: 0, rowStart, nRows: n });
    }
  }
  if (opts.flush ?? true) gpu.flush();
  return Object.freeze({
    name,
    type: info,
    nCols,
    nRows,
    nMats,
    matStride,
    rowBytes: rb,
    chunks: Object.freeze(chunks),
  });
}

/** A storage binding of a weight chunk and where the chunk starts inside it. */
export interface WeightBinding {
  /** The range to bind (offset meets `minStorageBufferOffsetAlignment`). */
  readonly binding: BufferBinding;
  /** Bytes from the binding's start to row 0 of matrix 0 of the chunk. */
  readonly byteOffset: number;
}

/**
 * The binding of a chunk of `w`: from the chunk's byte offset rounded down
 * to the device's storage offset alignment, long enough for every matrix of
 * the stack (rounded up to 4).
 *
 * @throws {RangeError} when the chunk overruns its buffer or the range
 *   exceeds `maxStorageBufferBindingSize`.
 */
export function bindWeightChunk(gpu: Gpu, w: GpuWeight, chunk: WeightChunk): WeightBinding {
  const span = (w.nMats - 1) * w.matStride + chunk.nRows * w.rowBytes;
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor(chunk.byteOffset / align) * align;
  if (chunk.byteOffset + span > chunk.buffer.size) {
    throw new RangeError(
      `Weight "${w.name}": rows ${chunk.rowStart}..${chunk.rowStart + chunk.nRows - 1} ` +
        `(${span} bytes from byte ${chunk.byteOffset}) overrun buffer "${chunk.buffer.label}" ` +
        `of ${chunk.buffer.size} bytes.`,
    );
  }
  const size = Math.min(align4(chunk.byteOffset - start + span), chunk.buffer.size - start);
  if (size > gpu.limits.maxStorageBufferBindingSize) {
    throw new RangeError(
      `Weight "${w.name}": a chunk of ${span} bytes needs a ${size}-byte binding, over this ` +
        `device's maxStorageBufferBindingSize ${gpu.limits.maxStorageBufferBindingSize}; ` +
        `split it into smaller chunks (uploadWeight does).`,
    );
  }
  return {
    binding: { buffer: chunk.buffer, offset: start, size },
    byteOffset: chunk.byteOffset - start,
  };
}

/** A storage binding of a 4-byte-element view and the view's first element inside it. */
export interface ViewBinding {
  /** The buffer, or a range of it when the buffer is larger than one binding. */
  readonly binding: BufferBinding;
  /** Elements from the binding's start to the view's first element. */
  readonly offset: number;
}

/**
 * The binding of a view of f32 or u32 elements starting at element `offset`
 * of `buffer`: the whole buffer when it fits one binding, otherwise the
 * largest range from the view's start rounded down to the offset alignment.
 */
export function bindView(gpu: Gpu, buffer: GPUBuffer, offset: number): ViewBinding {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`View of "${buffer.label}": offset ${offset} is not an element index.`);
  }
  const max = gpu.limits.maxStorageBufferBindingSize;
  if (buffer.size <= max) return { binding: buffer, offset };
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor((offset * 4) / align) * align;
  const size = Math.min(Math.floor(max / 4) * 4, buffer.size - start);
  return { binding: { buffer, offset: start, size }, offset: offset - start / 4 };
}

/** Byte offsets of the f16 scale fields inside one block of each quantised type. */
const HALF_FIELDS: Readonly<Record<string, readonly number[]>> = {
  Q4_0: [0],
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q8_0: [0],
  IQ4_NL: [0],
  Q2_K: [80, 82],
  Q3_K: [108],
  Q4_K: [0, 2],
  Q5_K: [0, 2],
  Q6_K: [208],
  IQ4_XS: [0],
  IQ2_XXS: [0],
  IQ2_XS: [0],
  IQ2_S: [0],
  IQ3_XXS: [0],
  IQ3_S: [0],
  IQ1_S: [0],
  IQ1_M: [], // d is spread over the top nibbles of the scales: set below
  TQ1_0: [52],
  TQ2_0: [64],
};

/**
 * Random but well-formed ggml bytes for `nElements` values of a GPU weight
 * type, for tests and benchmarks: float types get normal samples (σ = 0.5);
 * quantised types get random bytes (every quant, sub-scale, high bit and
 * sign pattern occurs) whose f16 block scales are overwritten with small
 * finite values (0.002 to 0.05) and MXFP4 exponents with 2^-9 to 2^-1.
 *
 * @throws {RangeError} for a type outside the GPU kernels' list or a count
 *   that is not whole blocks.
 */
export function randomWeightBytes(
  type: GgmlTypeInfo | number,
  nElements: number,
  random: () => number = Math.random,
): Uint8Array {
  const info = typeof type === "number" ? requireGgmlType(type) : type;
  if (nElements % info.blockSize !== 0) {
    throw new RangeError(`randomWeightBytes: ${nElements} is not whole ${info.name} blocks.`);
  }
  const nBlocks = nElements / info.blockSize;
  const bytes = new Uint8Array(nBlocks * info.typeSize);
  const normal = () => {
    const u = 1 - random();
    return 0.5 * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
  };
  const view = new DataView(bytes.buffer);
  switch (info.name) {
    case "F32":
      for (let i = 0; i < nElements; i++) view.setFloat32(4 * i, normal(), true);
      return bytes;
    case "F16":
      for (let i = 0; i < nElements; i++) view.setUint16(2 * i, f32ToF16(normal()), true);
      return bytes;
    case "BF16":
      for (let i = 0; i < nElements; i++) view.setUint16(2 * i, f32ToBf16(normal()), true);
      return bytes;
  }
  const fields = info.name === "MXFP4" ? [] : HALF_FIELDS[info.name];
  if (fields === undefined) {
    throw new RangeError(`randomWeightBytes: no generator for ggml type ${info.name}.`);
  }
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  for (let b = 0; b < nBlocks; b++) {
    const o = b * info.typeSize;
    if (info.name === "MXFP4") bytes[o] = 119 + Math.floor(random() * 9);
    for (const f of fields) view.setUint16(o + f, f32ToF16(0.002 + 0.048 * random()), true);
    if (info.name === "IQ1_M") {
      const d = f32ToF16(0.002 + 0.048 * random());
      for (let i = 0; i < 4; i++) {
        const at = o + 49 + 2 * i;
        bytes[at] = (bytes[at]! & 0x0f) | (((d >> (4 * i)) & 0xf) << 4);
      }
    }
  }
  return bytes;
}
