/**
 * What {@linkcode loadModel} opens before anything reaches the GPU: the base
 * weights' tensor table and bytes (a GGUF or the converter's base
 * directory), the routed experts' source (the GGUF, another GGUF or an
 * expert directory), and the checks that the source holds the experts the
 * architecture plans.
 *
 * @module
 */

import { type GgufModelFile, type GgufTensorInfo, readGgufModel } from "../gguf/reader.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import { isGpuWeightType, UnsupportedWeightTypeError } from "../gpu/ops/quant_wgsl.ts";
import type { TensorPlanEntry } from "./config.ts";
import { type TensorBytes, TensorPlanError } from "./weights.ts";
import { openBaseModel } from "../converted/reader.ts";
import { ExpertDirSource } from "../experts/expert_dir_source.ts";
import { type ExpertSource, GgufExpertSource } from "../experts/source.ts";

/** Where the weights come from (the file options of `LoadModelOptions`). */
export interface ModelFiles {
  /** Path of the GGUF file holding everything (any shard of a split model). */
  model?: string;
  /** The converter's `DIR/base_model` (base weights), with `expertDir` or `ggufExperts`. */
  baseWeights?: string;
  /** The converter's `DIR/experts` (one safetensors file per expert). */
  expertDir?: string;
  /** A GGUF file to stream the routed experts from (with `baseWeights`). */
  ggufExperts?: string;
  /** Where routed experts are read from; default the model's GGUF file(s). */
  expertSource?: ExpertSource;
}

class MappedTensors implements TensorBytes {
  constructor(readonly files: MappedFile[]) {}
  bytes(t: GgufTensorInfo): Uint8Array {
    return this.files[t.fileIndex]!.view(t.fileOffset, t.nBytes);
  }
}

/** The base weights' tensor table and bytes: the GGUF (`model`) or the converter's base directory. */
export function openBase(
  o: ModelFiles,
): { file: GgufModelFile; bytes: TensorBytes; close: () => void } {
  if (o.baseWeights !== undefined) {
    if (o.model !== undefined) throw new TypeError("give either model or baseWeights, not both");
    if (o.expertDir === undefined && o.ggufExperts === undefined && o.expertSource === undefined) {
      throw new TypeError(
        "baseWeights holds no routed experts: add expertDir (the converter's DIR/experts) or ggufExperts (the GGUF)",
      );
    }
    const base = openBaseModel(o.baseWeights);
    // the mapped shards stay open: the tokenizer and metadata come from them too
    return { file: base, bytes: base, close: () => {} };
  }
  if (o.model === undefined) {
    throw new TypeError("a model is required: model (a GGUF) or baseWeights");
  }
  const file = readGgufModel(o.model);
  const mapped = file.files.map((f) => MappedFile.open(f.path));
  return {
    file,
    bytes: new MappedTensors(mapped),
    close: () => mapped.forEach((m) => m.close()),
  };
}

/** The routed experts' source for the options: an expert directory, a GGUF, or the model's own GGUF. */
export function openExperts(o: ModelFiles, file: GgufModelFile): ExpertSource {
  if (o.expertDir !== undefined) return new ExpertDirSource(o.expertDir);
  if (o.ggufExperts !== undefined) return new GgufExpertSource(readGgufModel(o.ggufExperts));
  return new GgufExpertSource(file);
}

/**
 * The source with the layers the trunk runs: experts of multi-token-prediction
 * blocks after it (deepseek2's `nextn_predict_layers`) are never routed to, so
 * the pool neither sizes for them nor loads them.
 */
export function trunkLayers(source: ExpertSource, nLayer: number): ExpertSource {
  if (source.layers.every((l) => l.layer < nLayer)) return source;
  return {
    layers: source.layers.filter((l) => l.layer < nLayer),
    expertParts: (layer, expert) => source.expertParts(layer, expert),
    residentBytes: source.residentBytes &&
      ((layer, expert) => source.residentBytes!(layer, expert)),
    willNeed: source.willNeed && ((layer, expert) => source.willNeed!(layer, expert)),
    close: () => source.close(),
    [Symbol.dispose]: () => source.close(),
  };
}

/** Checks that the expert source holds the experts the architecture plans, with the same shapes. */
export function checkExpertSource(source: ExpertSource, plan: readonly TensorPlanEntry[]): void {
  const byName = new Map<string, { shape: readonly number[]; n: number }>();
  for (const l of source.layers) {
    for (const t of l.tensors) {
      // Here, not in the pool, so that the error names the file's tensor.
      if (t.sliceShape.length >= 2 && !isGpuWeightType(t.type.id)) {
        throw new UnsupportedWeightTypeError(t.name, t.type.id);
      }
      byName.set(t.name, { shape: t.sliceShape, n: l.nExpert });
    }
  }
  for (const e of plan) {
    const got = byName.get(e.name);
    const want = e.shape.slice(0, -1);
    const n = e.shape[e.shape.length - 1];
    if (!got) {
      if (e.optional) continue;
      throw new TensorPlanError(
        `the expert source has no ${e.name} (expected ${n} experts of ${JSON.stringify(want)})`,
      );
    }
    if (
      got.n !== n || got.shape.length !== want.length || got.shape.some((d, i) => d !== want[i])
    ) {
      throw new TensorPlanError(
        `expert tensor ${e.name}: the expert source has ${got.n} experts of ${
          JSON.stringify(got.shape)
        }, ` +
          `the model expects ${n} of ${JSON.stringify(want)} (experts from another model?)`,
      );
    }
  }
}
