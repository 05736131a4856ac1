/**
 * Loading a model's tensors: check every tensor against the architecture's
 * plan (presence, shape), then put the base weights on the GPU in their ggml
 * type. Vectors (norms, biases) become f32 buffers; matrices keep their
 * quantisation.
 *
 * @module
 */

import type { GgufModelFile, GgufTensorInfo } from "../gguf/reader.ts";
import { dequantize } from "../gguf/dequant.ts";
import type { Gpu } from "../gpu/device.ts";
import { createBuffer } from "../gpu/buffers.ts";
import type { GpuWeight } from "../gpu/ops/op.ts";
import { uploadWeight } from "../gpu/ops/weights.ts";
import type { TensorPlanEntry } from "./config.ts";
import { GgmlType, requireGgmlType } from "../gguf/types.ts";

/** A tensor failed the architecture's plan. */
export class TensorPlanError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "TensorPlanError";
  }
}

/** Bytes of tensors, wherever they live (a mapped file, or memory). */
export interface TensorBytes {
  /** The bytes of a tensor (a view, not a copy, where possible). */
  bytes(t: GgufTensorInfo): Uint8Array;
}

/**
 * Checks the model's tensors against the plan: every required tensor is
 * present with the expected shape; returns the plan entries that are present.
 * Errors name the tensor, the expected and the found shape.
 */
export function checkTensorPlan(
  model: Pick<GgufModelFile, "tensorMap" | "files">,
  plan: readonly TensorPlanEntry[],
): TensorPlanEntry[] {
  const file = model.files[0]?.path ?? "model";
  const present: TensorPlanEntry[] = [];
  for (const entry of plan) {
    const t = model.tensorMap.get(entry.name);
    const alt = entry.alternative;
    if (!t && alt && model.tensorMap.has(alt.name)) {
      const src = model.tensorMap.get(alt.name)!;
      if (src.shape.length !== alt.shape.length || src.shape.some((d, i) => d !== alt.shape[i])) {
        throw new TensorPlanError(
          `${file}: tensor ${alt.name} (the source of ${entry.name}) has shape ${
            JSON.stringify(src.shape)
          }, expected ${JSON.stringify(alt.shape)}`,
        );
      }
      present.push(entry);
      continue;
    }
    if (!t) {
      if (entry.optional) continue;
      throw new TensorPlanError(
        `${file}: tensor ${entry.name} is missing (expected shape ${JSON.stringify(entry.shape)})` +
          (alt ? ` and so is ${alt.name}, which it can be made from` : ""),
      );
    }
    const same = t.shape.length === entry.shape.length &&
      t.shape.every((d, i) => d === entry.shape[i]);
    if (!same) {
      throw new TensorPlanError(
        `${file}: tensor ${entry.name} has shape ${JSON.stringify(t.shape)}, expected ${
          JSON.stringify(entry.shape)
        } (type ${t.type.name})`,
      );
    }
    present.push(entry);
  }
  return present;
}

/** The base weights of a model on the GPU, by tensor name. */
export class GpuWeights {
  /** Matrices (and expert stacks) in their ggml type. */
  readonly matrices: Map<string, GpuWeight> = new Map();
  /** Vectors (norm weights, biases) as f32. */
  readonly vectors: Map<string, GPUBuffer> = new Map();
  /** Bytes of GPU memory held. */
  bytes = 0;

  /** A matrix; throws naming the tensor if it was not loaded. */
  matrix(name: string): GpuWeight {
    const w = this.matrices.get(name);
    if (!w) throw new TensorPlanError(`tensor ${name} was not loaded`);
    return w;
  }

  /** A matrix if present. */
  maybeMatrix(name: string): GpuWeight | undefined {
    return this.matrices.get(name);
  }

  /** An f32 vector; throws naming the tensor if it was not loaded. */
  vector(name: string): GPUBuffer {
    const v = this.vectors.get(name);
    if (!v) throw new TensorPlanError(`tensor ${name} was not loaded`);
    return v;
  }

  /** An f32 vector as a one-row f32 matrix (a dot product with each token's input). */
  vectorAsRow(name: string, nCols: number): GpuWeight {
    const buffer = this.vector(name);
    return {
      name,
      type: requireGgmlType(GgmlType.F32),
      nCols,
      nRows: 1,
      nMats: 1,
      matStride: nCols * 4,
      rowBytes: nCols * 4,
      chunks: [{ buffer, byteOffset: 0, rowStart: 0, nRows: 1 }],
    };
  }

  /** An f32 vector if present. */
  maybeVector(name: string): GPUBuffer | undefined {
    return this.vectors.get(name);
  }

  /** Frees every buffer. */
  destroy(): void {
    for (const w of this.matrices.values()) for (const c of w.chunks) c.buffer.destroy();
    for (const v of this.vectors.values()) v.destroy();
    this.matrices.clear();
    this.vectors.clear();
  }
}

/**
 * Uploads the planned tensors whose role is in `roles` (base weights; expert
 * stacks too when every expert is to be resident).
 */
export function uploadPlannedTensors(
  gpu: Gpu,
  model: Pick<GgufModelFile, "tensorMap">,
  source: TensorBytes,
  plan: readonly TensorPlanEntry[],
  roles: ReadonlyArray<TensorPlanEntry["role"]>,
  into: GpuWeights = new GpuWeights(),
): GpuWeights {
  for (const entry of plan) {
    if (!roles.includes(entry.role)) continue;
    const t = model.tensorMap.get(entry.name);
    if (!t && entry.alternative) {
      // gather the rows from the fused source: ggml rows are whole blocks, any type
      const alt = entry.alternative;
      const src = model.tensorMap.get(alt.name);
      if (!src) continue;
      const from = source.bytes(src);
      const rowBytes = src.nBytes / (src.shape[1]! * (src.shape[2] ?? 1));
      const bytes = new Uint8Array(alt.rows.length * rowBytes);
      alt.rows.forEach((r, i) =>
        bytes.set(from.subarray(r * rowBytes, (r + 1) * rowBytes), i * rowBytes)
      );
      const w = uploadWeight(gpu, entry.name, src.type, entry.shape, bytes);
      into.matrices.set(entry.name, w);
      into.bytes += bytes.byteLength;
      continue;
    }
    if (!t) continue;
    const bytes = source.bytes(t);
    if (t.shape.length === 1 || entry.asF32) {
      const data = dequantize(t.type.id, bytes, t.nElements);
      const buf = createBuffer(gpu, { label: t.name, data });
      into.vectors.set(t.name, buf);
      into.bytes += data.byteLength;
    } else {
      const w = uploadWeight(gpu, t.name, t.type, t.shape, bytes);
      into.matrices.set(t.name, w);
      into.bytes += t.nBytes;
    }
  }
  gpu.flush();
  return into;
}
