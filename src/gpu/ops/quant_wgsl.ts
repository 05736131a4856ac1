/**
 * The per-type WGSL dequantisers: `shaders/quant.wgsl` holds a common part
 * and one `//#type NAME` section per ggml type; a kernel template gets the
 * common part plus its type's section at its `{{QUANT}}` placeholder.
 *
 * @module
 */

import { GgmlType, type GgmlTypeInfo, ggmlTypeName } from "../../gguf/types.ts";
import { loadShaderText, SHADER_DIR, ShaderSourceError } from "../shaders.ts";

/** Section name in `shaders/quant.wgsl` of each ggml type the GPU kernels read. */
const SECTIONS: ReadonlyMap<number, string> = new Map([
  [GgmlType.F32, "f32"],
  [GgmlType.F16, "f16"],
  [GgmlType.BF16, "bf16"],
  [GgmlType.Q4_0, "q4_0"],
  [GgmlType.Q4_1, "q4_1"],
  [GgmlType.Q5_0, "q5_0"],
  [GgmlType.Q5_1, "q5_1"],
  [GgmlType.Q8_0, "q8_0"],
  [GgmlType.Q2_K, "q2_k"],
  [GgmlType.Q3_K, "q3_k"],
  [GgmlType.Q4_K, "q4_k"],
  [GgmlType.Q5_K, "q5_k"],
  [GgmlType.Q6_K, "q6_k"],
  [GgmlType.IQ4_NL, "iq4_nl"],
  [GgmlType.MXFP4, "mxfp4"],
]);

/** The ggml type ids the matrix and embedding kernels read, ascending. */
export const GPU_WEIGHT_TYPES: readonly number[] = Object.freeze(
  [...SECTIONS.keys()].sort((a, b) => a - b),
);

/** Whether the GPU kernels read weights of this ggml type id. */
export function isGpuWeightType(type: number): boolean {
  return SECTIONS.has(type);
}

/** A weight's type has no GPU dequantiser. */
export class UnsupportedWeightTypeError extends Error {
  /** The tensor's name. */
  readonly tensor: string;
  /** The ggml type id. */
  readonly type: number;

  /** Builds the error naming the tensor, its type and the supported ones. */
  constructor(tensor: string, type: number, what = "the GPU matrix kernels") {
    super(
      `Tensor "${tensor}" has ggml type ${ggmlTypeName(type)} (id ${type}), which ${what} ` +
        `cannot read; supported: ${GPU_WEIGHT_TYPES.map(ggmlTypeName).join(", ")}. ` +
        `Requantise the file to one of them.`,
    );
    this.name = "UnsupportedWeightTypeError";
    this.tensor = tensor;
    this.type = type;
  }
}

/**
 * The readable variant name of a type (`"q4_k"`), used in pipeline keys.
 *
 * @throws {UnsupportedWeightTypeError} for a type without a section.
 */
export function quantVariant(type: GgmlTypeInfo | number, tensor = "?"): string {
  const id = typeof type === "number" ? type : type.id;
  const name = SECTIONS.get(id);
  if (name === undefined) throw new UnsupportedWeightTypeError(tensor, id);
  return name;
}

/**
 * Elements per "block" as the kernels see them: the ggml block size, or 8
 * for the float types (whose rows may end inside such a block).
 */
export function kernelBlockSize(type: GgmlTypeInfo): number {
  return type.quantized ? type.blockSize : 8;
}

/**
 * The byte alignment the kernels need for the start of every row of a
 * weight of this type: 4 where whole words are loaded (block sizes that are
 * multiples of 4), 2 where the block holds f16 fields at even offsets, 1 for
 * MXFP4's 17-byte blocks.
 */
export function rowAlignment(type: GgmlTypeInfo): number {
  if (type.typeSize % 4 === 0) return 4;
  if (type.typeSize % 2 === 0) return 2;
  return 1;
}

/** `shaders/quant.wgsl` cut into its parts. */
export interface QuantLibrary {
  /** The text before the first section: helpers every type uses. */
  readonly common: string;
  /** Section name (`"q4_k"`) → its text. */
  readonly sections: ReadonlyMap<string, string>;
}

const libraries = new Map<string, Promise<QuantLibrary>>();

/** Splits quant.wgsl text into its common part and its `//#type` sections. */
export function parseQuantLibrary(text: string): QuantLibrary {
  const parts = text.split(/^\/\/#type[ \t]+/m);
  const common = parts[0]!;
  const sections = new Map<string, string>();
  for (const part of parts.slice(1)) {
    const nl = part.indexOf("\n");
    const name = part.slice(0, nl < 0 ? part.length : nl).trim();
    if (sections.has(name)) {
      throw new ShaderSourceError(`quant.wgsl defines section "${name}" twice.`);
    }
    sections.set(name, `// ---- ${name} ----\n${nl < 0 ? "" : part.slice(nl + 1)}`);
  }
  return { common, sections };
}

function library(baseUrl: URL): Promise<QuantLibrary> {
  let lib = libraries.get(baseUrl.href);
  if (!lib) {
    lib = loadShaderText("quant", baseUrl).then(parseQuantLibrary);
    lib.catch(() => libraries.delete(baseUrl.href));
    libraries.set(baseUrl.href, lib);
  }
  return lib;
}

/**
 * The WGSL dequantiser of a type: quant.wgsl's common part and the type's
 * section, ready for a template's `{{QUANT}}` placeholder.
 *
 * @throws {UnsupportedWeightTypeError} for a type without a section.
 */
export async function quantWgsl(
  type: GgmlTypeInfo | number,
  tensor = "?",
  baseUrl: URL = SHADER_DIR,
): Promise<string> {
  const name = quantVariant(type, tensor);
  const lib = await library(baseUrl);
  const section = lib.sections.get(name);
  if (section === undefined) {
    throw new ShaderSourceError(`shaders/quant.wgsl has no "//#type ${name}" section.`);
  }
  return `${lib.common}\n${section}`;
}
