/**
 * Where each routed expert's bytes are in a GGUF model: for every layer, the
 * gate/up/down slices of expert `e` in the `ffn_*_exps` tensors. ggml stores
 * a 3-D expert tensor as `[nIn, nOut, nExpert]` with the expert dimension
 * outermost, so each expert's slice of one tensor is one contiguous range.
 *
 * @module
 */

import type { GgufModelFile, GgufTensorInfo } from "../gguf/reader.ts";
import { EXPERT_TENSOR_PATTERN } from "../gguf/names.ts";
import type { GgmlTypeInfo } from "../gguf/types.ts";

/** One expert tensor of a layer (`ffn_up_exps.weight`). */
export interface ExpertTensorLayout {
  /** The tensor's name. */
  readonly name: string;
  /** `gate`, `up`, `down` or `gate_up`. */
  readonly role: string;
  /** `weight`, `bias` or `scale`. */
  readonly kind: string;
  /** ggml type of the tensor. */
  readonly type: GgmlTypeInfo;
  /** Shape of one expert's slice (ggml order). */
  readonly sliceShape: readonly number[];
  /** Bytes of one expert's slice. */
  readonly sliceBytes: number;
  /** File index (split models) holding the tensor. */
  readonly fileIndex: number;
  /** Absolute offset of expert 0's slice in that file. */
  readonly fileOffset: number;
}

/** The routed experts of one layer. */
export interface LayerExpertLayout {
  /** Layer (block) index. */
  readonly layer: number;
  /** Number of routed experts. */
  readonly nExpert: number;
  /** The expert tensors of the layer, gate/up/down order first. */
  readonly tensors: readonly ExpertTensorLayout[];
  /** Bytes of one expert: the sum of its slices. */
  readonly bytesPerExpert: number;
  /**
   * Whether one expert's slices lie back to back in the file (one read per
   * expert). False for GGUF files, which store gate, up and down as separate
   * tensors; the converter's per-expert files are contiguous.
   */
  readonly slicesAdjacent: boolean;
}

const ROLE_ORDER = ["gate", "up", "gate_up", "down"];

/** File range of expert `e`'s slice of a tensor. */
export function expertSliceRange(
  t: ExpertTensorLayout,
  e: number,
): { offset: number; length: number } {
  return { offset: t.fileOffset + e * t.sliceBytes, length: t.sliceBytes };
}

/** The expert layout of every MoE layer of a model, in layer order. */
export function expertLayout(model: Pick<GgufModelFile, "tensors">): LayerExpertLayout[] {
  const byLayer = new Map<number, GgufTensorInfo[]>();
  for (const t of model.tensors) {
    const m = EXPERT_TENSOR_PATTERN.exec(t.name);
    if (!m) continue;
    const layer = Number(m[1]);
    const list = byLayer.get(layer) ?? [];
    list.push(t);
    byLayer.set(layer, list);
  }
  const out: LayerExpertLayout[] = [];
  for (const layer of [...byLayer.keys()].sort((a, b) => a - b)) {
    const infos = byLayer.get(layer)!;
    const tensors = infos.map((t): ExpertTensorLayout => {
      const m = EXPERT_TENSOR_PATTERN.exec(t.name)!;
      const nExpert = t.shape[t.shape.length - 1]!;
      return {
        name: t.name,
        role: m[2]!,
        kind: m[3]!,
        type: t.type,
        sliceShape: t.shape.slice(0, -1),
        sliceBytes: t.nBytes / nExpert,
        fileIndex: t.fileIndex,
        fileOffset: t.fileOffset,
      };
    }).sort((a, b) =>
      ROLE_ORDER.indexOf(a.role) - ROLE_ORDER.indexOf(b.role) || a.kind.localeCompare(b.kind)
    );
    const counts = new Set(infos.map((t) => t.shape[t.shape.length - 1]!));
    if (counts.size !== 1) {
      throw new Error(
        `layer ${layer}: expert tensors disagree on the expert count (${[...counts].join(", ")})`,
      );
    }
    const nExpert = [...counts][0]!;
    const bytesPerExpert = tensors.reduce((s, t) => s + t.sliceBytes, 0);
    const slicesAdjacent = nExpert === 1 && tensors.every((t, i) =>
      i === 0 ||
      (t.fileIndex === tensors[i - 1]!.fileIndex &&
        t.fileOffset === tensors[i - 1]!.fileOffset + tensors[i - 1]!.sliceBytes)
    );
    out.push({ layer, nExpert, tensors, bytesPerExpert, slicesAdjacent });
  }
  return out;
}
