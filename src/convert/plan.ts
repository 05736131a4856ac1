/**
 * What a conversion writes, worked out from the GGUF header alone: which
 * tensors go to the base (every tensor that is not a routed-expert stack,
 * checked against the architecture's tensor plan), how they are split into
 * shards, the per-expert files of every MoE layer, and the dtype, shape and
 * size of every output tensor. `--dry-run` prints this plan; the converter
 * carries it out.
 *
 * @module
 */

import type { GgufModelFile, GgufTensorInfo } from "../gguf/reader.ts";
import { isExpertTensor } from "../gguf/names.ts";
import { GgmlType, type GgmlTypeInfo, requireGgmlType } from "../gguf/types.ts";
import { canDequantize } from "../gguf/dequant.ts";
import { expertLayout, type ExpertTensorLayout } from "../experts/layout.ts";
import type { ModelConfig, TensorPlanEntry } from "../model/config.ts";
import { archSpec, UnsupportedArchitectureError } from "../model/registry.ts";
import type { SafetensorsDtype } from "../safetensors/dtypes.ts";
import { buildSafetensorsHeader } from "../safetensors/writer.ts";
import { ConvertError } from "./errors.ts";
import {
  baseShardName,
  ConvertedFormats,
  expertTensorName,
  MetadataKeys,
  nameWidth,
} from "../converted/layout.ts";

/** What `--output-dtype` asks for. */
export type OutputDtype = "keep" | "float16" | "bfloat16" | "float32";

/** Every {@link OutputDtype}. */
export const OUTPUT_DTYPES: readonly OutputDtype[] = ["keep", "float16", "bfloat16", "float32"];

/** The default base shard size: 5 GiB. */
export const DEFAULT_SHARD_SIZE_GB = 5;

/** How one tensor is written. */
export interface TensorOutput {
  /** safetensors dtype of the output. */
  readonly dtype: SafetensorsDtype;
  /** safetensors shape (outermost first; `[nBytes]` for raw ggml blocks). */
  readonly shape: readonly number[];
  /** ggml type of the output bytes (the source type unless dequantised). */
  readonly ggmlType: GgmlTypeInfo;
  /** ggml-order shape (`shape[0]` is the row length). */
  readonly ggmlShape: readonly number[];
  /** Bytes written. */
  readonly nBytes: number;
  /** Whether the bytes are dequantised (otherwise copied unchanged). */
  readonly dequantize: boolean;
}

const NATIVE: ReadonlyMap<number, SafetensorsDtype> = new Map([
  [GgmlType.F32, "F32"],
  [GgmlType.F16, "F16"],
  [GgmlType.BF16, "BF16"],
  [GgmlType.F64, "F64"],
  [GgmlType.I8, "I8"],
  [GgmlType.I16, "I16"],
  [GgmlType.I32, "I32"],
  [GgmlType.I64, "I64"],
]);

const TARGET: Record<Exclude<OutputDtype, "keep">, number> = {
  float16: GgmlType.F16,
  bfloat16: GgmlType.BF16,
  float32: GgmlType.F32,
};

const NOT_FLOAT = new Set<number>([
  GgmlType.I8,
  GgmlType.I16,
  GgmlType.I32,
  GgmlType.I64,
  GgmlType.F64,
]);

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * How a tensor of ggml `type` and ggml-order `shape` is written for
 * `outputDtype`:
 *
 * - `keep`: the bytes unchanged. Block-quantised types become `U8 [nBytes]`;
 *   plain types (F32, F16, BF16, integers) keep their own dtype with the shape
 *   reversed to row-major order.
 * - `float16` / `bfloat16` / `float32`: matrices are dequantised to that
 *   type; 1-D tensors (norms, biases) become F32, as llama.cpp keeps them;
 *   integer and F64 tensors are copied unchanged.
 *
 * Throws {@link ConvertError} naming the tensor for a type without a CPU
 * dequantiser.
 */
export function tensorOutput(
  name: string,
  type: GgmlTypeInfo,
  shape: readonly number[],
  outputDtype: OutputDtype,
): TensorOutput {
  const nElements = product(shape);
  const sourceBytes = (nElements / type.blockSize) * type.typeSize;
  const keep = (): TensorOutput => {
    const native = NATIVE.get(type.id);
    return {
      dtype: native ?? "U8",
      shape: native ? [...shape].reverse() : [sourceBytes],
      ggmlType: type,
      ggmlShape: shape,
      nBytes: sourceBytes,
      dequantize: false,
    };
  };
  if (outputDtype === "keep" || NOT_FLOAT.has(type.id)) return keep();
  const target = requireGgmlType(shape.length === 1 ? GgmlType.F32 : TARGET[outputDtype]);
  if (target.id === type.id) return keep();
  if (!canDequantize(type.id)) {
    throw new ConvertError(
      `tensor ${name}: ggml type ${type.name} has no CPU dequantiser, so it cannot be written as ${outputDtype}; ` +
        `use --output-dtype keep`,
    );
  }
  return {
    dtype: NATIVE.get(target.id)!,
    shape: [...shape].reverse(),
    ggmlType: target,
    ggmlShape: shape,
    nBytes: nElements * target.typeSize,
    dequantize: true,
  };
}

/** A base tensor and where it goes. */
export interface PlannedBaseTensor {
  /** Name, the same as in the GGUF. */
  readonly name: string;
  /** The GGUF tensor. */
  readonly source: GgufTensorInfo;
  /** How it is written. */
  readonly output: TensorOutput;
}

/** One base shard. */
export interface PlannedShard {
  /** File name in `base_model/`. */
  readonly name: string;
  /** Its tensors, in file order. */
  readonly tensors: readonly PlannedBaseTensor[];
  /** `__metadata__` of the file. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Size of the file, header included. */
  readonly fileBytes: number;
}

/** One tensor of an expert file. */
export interface PlannedExpertTensor {
  /** Name inside the expert file (`ffn_gate.weight`). */
  readonly name: string;
  /** The GGUF expert stack and its per-expert slice. */
  readonly source: ExpertTensorLayout;
  /** How one expert's slice is written. */
  readonly output: TensorOutput;
}

/** The expert files of one MoE layer. */
export interface PlannedExpertLayer {
  /** Layer index. */
  readonly layer: number;
  /** Routed experts (one file each). */
  readonly nExpert: number;
  /** The tensors of each file, in file order (gate, up, down). */
  readonly tensors: readonly PlannedExpertTensor[];
  /** Tensor bytes of one expert. */
  readonly bytesPerExpert: number;
  /** Size of one expert file, header included (the same for every expert of the layer). */
  readonly fileBytes: number;
  /** Offset of the tensor data in each file (the same for every expert of the layer). */
  readonly dataOffset: number;
}

/** Options that shape a plan. */
export interface PlanOptions {
  /** Output dtype (default `keep`). */
  outputDtype?: OutputDtype;
  /** Write only the base (default false). */
  baseOnly?: boolean;
  /** Largest base shard in GiB (default {@link DEFAULT_SHARD_SIZE_GB}); a larger tensor gets a shard of its own. */
  shardSizeGb?: number;
}

/** Everything a conversion will write. */
export interface ConversionPlan {
  /** The GGUF (first shard when split). */
  readonly sourcePath: string;
  /** Its files and their sizes. */
  readonly sourceFiles: readonly { readonly path: string; readonly size: number }[];
  /** `general.architecture`. */
  readonly architecture: string;
  /** Whether od-moe runs this architecture. */
  readonly supported: boolean;
  /** Why not, when it is not. */
  readonly unsupported?: UnsupportedArchitectureError;
  /** Hyperparameters (supported architectures only). */
  readonly config?: ModelConfig;
  /** The architecture's tensor plan (supported architectures only). */
  readonly tensorPlan?: readonly TensorPlanEntry[];
  /** Output dtype. */
  readonly outputDtype: OutputDtype;
  /** Base only. */
  readonly baseOnly: boolean;
  /** Shard size limit in bytes. */
  readonly shardSizeBytes: number;
  /** The base tensors (every non-expert tensor) and their shards. */
  readonly base: {
    readonly tensors: readonly PlannedBaseTensor[];
    readonly shards: readonly PlannedShard[];
    /** Tensor bytes. */
    readonly dataBytes: number;
    /** Bytes of the shard files. */
    readonly fileBytes: number;
  };
  /** The expert files (planned even with `baseOnly`, for the report; not written then). */
  readonly experts: {
    readonly layers: readonly PlannedExpertLayer[];
    /** Expert files (layers × experts). */
    readonly fileCount: number;
    /** Tensor bytes of all experts. */
    readonly dataBytes: number;
    /** Bytes of all expert files. */
    readonly fileBytes: number;
    /** Digits of layer numbers in directory names. */
    readonly layerWidth: number;
    /** Digits of expert numbers in file names. */
    readonly expertWidth: number;
  };
}

/** The `ggml_tensors` metadata value: each tensor's ggml type and ggml-order shape. */
export function ggmlTensorsMetadata(
  tensors: readonly { name: string; output: TensorOutput; sourceName?: string }[],
): string {
  const map: Record<string, { ggml_type: string; shape: readonly number[]; source?: string }> = {};
  for (const t of tensors) {
    map[t.name] = { ggml_type: t.output.ggmlType.name, shape: t.output.ggmlShape };
    if (t.sourceName !== undefined) map[t.name]!.source = t.sourceName;
  }
  return JSON.stringify(map);
}

/** The `__metadata__` of expert file `expert` of a layer (the same length for every expert). */
export function expertFileMetadata(
  layer: PlannedExpertLayer,
  expert: number,
  layerWidth: number,
  expertWidth: number,
): Record<string, string> {
  return {
    [MetadataKeys.format]: ConvertedFormats.expertFile,
    [MetadataKeys.layer]: String(layer.layer).padStart(layerWidth, "0"),
    [MetadataKeys.expert]: String(expert).padStart(expertWidth, "0"),
    [MetadataKeys.ggmlTensors]: ggmlTensorsMetadata(
      layer.tensors.map((t) => ({ name: t.name, output: t.output, sourceName: t.source.name })),
    ),
  };
}

/**
 * Checks the model's tensors against the architecture's plan: every required
 * tensor present with its shape, every base entry outside the expert stacks
 * and every expert entry among them.
 */
function checkAgainstPlan(model: GgufModelFile, plan: readonly TensorPlanEntry[]): void {
  const file = model.files[0]?.path ?? "model";
  for (const entry of plan) {
    const t = model.tensorMap.get(entry.name);
    if (!t) {
      if (entry.optional) continue;
      throw new ConvertError(
        `${file}: tensor ${entry.name} is missing (expected shape ${
          JSON.stringify(entry.shape)
        }), ` +
          `so the ${model.architecture} base would be incomplete`,
      );
    }
    if (t.shape.length !== entry.shape.length || t.shape.some((d, i) => d !== entry.shape[i])) {
      throw new ConvertError(
        `${file}: tensor ${entry.name} has shape ${JSON.stringify(t.shape)}, expected ${
          JSON.stringify(entry.shape)
        } (type ${t.type.name})`,
      );
    }
    if ((entry.role === "expert") !== isExpertTensor(entry.name)) {
      throw new ConvertError(
        `${model.architecture}: the tensor plan makes ${entry.name} a${
          entry.role === "expert" ? "n expert" : " base"
        } tensor but its name says otherwise; the converter would put it in the wrong place`,
      );
    }
  }
}

/**
 * Works out what converting `model` writes. Never throws for an unsupported
 * architecture (the plan says so, for `--dry-run`); throws
 * {@link ConvertError} when a supported model does not match its tensor plan
 * or a tensor cannot be written in the requested dtype.
 */
export function planConversion(model: GgufModelFile, options: PlanOptions = {}): ConversionPlan {
  const outputDtype = options.outputDtype ?? "keep";
  if (!OUTPUT_DTYPES.includes(outputDtype)) {
    throw new ConvertError(
      `unknown output dtype ${outputDtype}; choose one of ${OUTPUT_DTYPES.join(", ")}`,
    );
  }
  const shardSizeGb = options.shardSizeGb ?? DEFAULT_SHARD_SIZE_GB;
  if (!(shardSizeGb > 0) || !Number.isFinite(shardSizeGb)) {
    throw new ConvertError(`shard size must be a positive number of GiB, got ${shardSizeGb}`);
  }
  const shardSizeBytes = Math.max(1, Math.floor(shardSizeGb * 2 ** 30));

  let supported = true;
  let unsupported: UnsupportedArchitectureError | undefined;
  let config: ModelConfig | undefined;
  let tensorPlan: TensorPlanEntry[] | undefined;
  try {
    const spec = archSpec(model.architecture);
    config = spec.readConfig(model.metadata);
    tensorPlan = spec.tensorPlan(config);
  } catch (e) {
    if (!(e instanceof UnsupportedArchitectureError)) throw e;
    supported = false;
    unsupported = e;
  }
  if (tensorPlan) checkAgainstPlan(model, tensorPlan);

  const baseTensors: PlannedBaseTensor[] = model.tensors
    .filter((t) => !isExpertTensor(t.name))
    .map((t) => ({
      name: t.name,
      source: t,
      output: tensorOutput(t.name, t.type, t.shape, outputDtype),
    }));

  // Greedy shards in file order; a tensor larger than the limit gets its own.
  const groups: PlannedBaseTensor[][] = [];
  let current: PlannedBaseTensor[] = [];
  let currentBytes = 0;
  for (const t of baseTensors) {
    if (current.length > 0 && currentBytes + t.output.nBytes > shardSizeBytes) {
      groups.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(t);
    currentBytes += t.output.nBytes;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);
  const shards: PlannedShard[] = groups.map((tensors, i) => {
    const metadata = {
      [MetadataKeys.format]: ConvertedFormats.baseShard,
      [MetadataKeys.ggmlTensors]: ggmlTensorsMetadata(
        tensors.map((t) => ({ name: t.name, output: t.output })),
      ),
    };
    const layout = buildSafetensorsHeader(
      tensors.map((t) => ({ name: t.name, dtype: t.output.dtype, shape: t.output.shape })),
      metadata,
    );
    return { name: baseShardName(i, groups.length), tensors, metadata, fileBytes: layout.fileSize };
  });

  const layouts = expertLayout(model);
  const maxExperts = Math.max(0, ...layouts.map((l) => l.nExpert));
  const layerWidth = nameWidth(Math.max(0, ...layouts.map((l) => l.layer + 1)));
  const expertWidth = nameWidth(maxExperts);
  const layers: PlannedExpertLayer[] = layouts.map((l) => {
    const tensors = l.tensors.map((t): PlannedExpertTensor => {
      const name = expertTensorName(t.role, t.kind);
      return { name, source: t, output: tensorOutput(t.name, t.type, t.sliceShape, outputDtype) };
    });
    const names = new Set(tensors.map((t) => t.name));
    if (names.size !== tensors.length) {
      throw new ConvertError(
        `layer ${l.layer}: two expert tensors map to the same name in the expert file`,
      );
    }
    const partial: PlannedExpertLayer = {
      layer: l.layer,
      nExpert: l.nExpert,
      tensors,
      bytesPerExpert: tensors.reduce((s, t) => s + t.output.nBytes, 0),
      fileBytes: 0,
      dataOffset: 0,
    };
    const header = buildSafetensorsHeader(
      tensors.map((t) => ({ name: t.name, dtype: t.output.dtype, shape: t.output.shape })),
      expertFileMetadata(partial, 0, layerWidth, expertWidth),
    );
    return { ...partial, fileBytes: header.fileSize, dataOffset: header.header.length };
  });

  return {
    sourcePath: model.files[0]?.path ?? "",
    sourceFiles: model.files.map((f) => ({ path: f.path, size: f.fileSize })),
    architecture: model.architecture,
    supported,
    unsupported,
    config,
    tensorPlan,
    outputDtype,
    baseOnly: options.baseOnly ?? false,
    shardSizeBytes,
    base: {
      tensors: baseTensors,
      shards,
      dataBytes: baseTensors.reduce((s, t) => s + t.output.nBytes, 0),
      fileBytes: shards.reduce((s, f) => s + f.fileBytes, 0),
    },
    experts: {
      layers,
      fileCount: layers.reduce((s, l) => s + l.nExpert, 0),
      dataBytes: layers.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0),
      fileBytes: layers.reduce((s, l) => s + l.nExpert * l.fileBytes, 0),
      layerWidth,
      expertWidth,
    },
  };
}

/** Bytes in a human unit: `12.3 MiB`. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

/**
 * The plan as the lines `--dry-run` prints: architecture and whether it is
 * supported, tensor and file counts, bytes of the base and of the experts,
 * and the size of one expert.
 */
export function describePlan(plan: ConversionPlan, outputDir?: string): string[] {
  const out = outputDir ?? "DIR";
  const sourceBytes = plan.sourceFiles.reduce((s, f) => s + f.size, 0);
  const lines = [
    `source:        ${plan.sourcePath} (${formatBytes(sourceBytes)}${
      plan.sourceFiles.length > 1 ? `, ${plan.sourceFiles.length} files` : ""
    })`,
    `architecture:  ${plan.architecture || "(none)"} (${
      plan.supported ? "supported" : `not supported: ${plan.unsupported?.message}`
    })`,
    `output dtype:  ${plan.outputDtype}`,
    `base:          ${plan.base.tensors.length} tensors, ${
      formatBytes(plan.base.fileBytes)
    } in ${plan.base.shards.length} shard${
      plan.base.shards.length === 1 ? "" : "s"
    } -> ${out}/base_model/ (+ config.json, tokenizer.json)`,
  ];
  const ex = plan.experts;
  const nExperts = [...new Set(ex.layers.map((l) => l.nExpert))].join("/");
  if (ex.layers.length === 0) {
    lines.push(`experts:       none (no routed-expert tensors)`);
  } else {
    lines.push(
      `experts:       ${ex.layers.length} layers × ${nExperts} experts = ${ex.fileCount} files, ${
        formatBytes(ex.fileBytes)
      } -> ${plan.baseOnly ? "not written (--base-only)" : `${out}/experts/`}`,
    );
    const sizes = [...new Set(ex.layers.map((l) => l.bytesPerExpert))];
    const first = ex.layers[0]!;
    const parts = first.tensors.map((t) =>
      `${t.name} ${t.output.ggmlType.name} ${JSON.stringify(t.output.ggmlShape)}`
    );
    lines.push(`per expert:    ${sizes.map(formatBytes).join(" / ")} (${parts.join(", ")})`);
  }
  const total = plan.base.fileBytes + (plan.baseOnly ? 0 : ex.fileBytes);
  lines.push(`total:         ${formatBytes(total)} (${total} bytes of safetensors files)`);
  return lines;
}
