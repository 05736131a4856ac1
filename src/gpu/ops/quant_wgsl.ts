/**
 * The per-type WGSL dequantisers: `shaders/quant.wgsl` holds a common part
 * and one `//#type NAME` section per ggml type; a kernel template gets the
 * common part plus its type's section at its `{{QUANT}}` placeholder.
 * Sections may `//#include` shaders/lib files; the I-quant grids, sign table
 * and IQ4 values are generated includes written here from
 * `src/gguf/iq_grids.ts`, the same bytes the CPU dequantisers read.
 *
 * @module
 */

import { GgmlType, type GgmlTypeInfo, ggmlTypeName } from "../../gguf/types.ts";
import { KVALUES_FP4 } from "../../gguf/dequant.ts";
import {
  IQ1S,
  IQ2S,
  IQ2XS,
  IQ2XXS,
  IQ3S,
  IQ3XXS,
  KSIGNS,
  KVALUES_IQ4,
} from "../../gguf/iq_grids.ts";
import type { Gpu } from "../device.ts";
import { defineShaderLib, loadShaderText, SHADER_DIR, ShaderSourceError } from "../shaders.ts";

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
  [GgmlType.IQ4_XS, "iq4_xs"],
  [GgmlType.IQ2_XXS, "iq2_xxs"],
  [GgmlType.IQ2_XS, "iq2_xs"],
  [GgmlType.IQ2_S, "iq2_s"],
  [GgmlType.IQ3_XXS, "iq3_xxs"],
  [GgmlType.IQ3_S, "iq3_s"],
  [GgmlType.IQ1_S, "iq1_s"],
  [GgmlType.IQ1_M, "iq1_m"],
  [GgmlType.TQ1_0, "tq1_0"],
  [GgmlType.TQ2_0, "tq2_0"],
  [GgmlType.MXFP4, "mxfp4"],
]);

/** Little-endian words of `bytes`. */
function words(bytes: Uint8Array): Uint32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  return Uint32Array.from({ length: bytes.length / 4 }, (_, i) => view.getUint32(4 * i, true));
}

/** IQ1_S's grid of -1/0/1 values, 2 bits a value (value + 1), 16 bits an entry, 2 entries a word. */
function iq1sPacked(): Uint32Array {
  const packed = new Uint32Array(IQ1S.count / 2);
  for (let i = 0; i < IQ1S.count; i++) {
    let bits = 0;
    for (let j = 0; j < 8; j++) {
      bits |= ((((IQ1S.bytes[8 * i + j]! << 24) >> 24) + 1) & 3) << (2 * j);
    }
    packed[i >> 1] = (packed[i >> 1]! | (bits << (16 * (i & 1)))) >>> 0;
  }
  return packed;
}

/**
 * The I-quant tables as one array of u32 words, bound read-only to the
 * kernels of the types that need them (a storage buffer: the grids are
 * looked up at data-dependent indices, which WGSL constants handle badly —
 * compilers copy a constant array per lookup). Parts, in order, with the
 * WGSL constant holding each one's first word: ksigns_iq2xs (4 bytes a word,
 * `QT_KSIGNS`), the grids of IQ2_XXS, IQ2_XS, IQ2_S (2 words an entry),
 * IQ3_XXS, IQ3_S (1 word an entry) and IQ1_S/M (packed, 2 entries a word),
 * then the 16 values of IQ4_NL/IQ4_XS and of MXFP4 as f32 bits.
 */
const TABLE_PARTS: ReadonlyArray<[string, () => Uint32Array]> = [
  ["QT_KSIGNS", () => words(KSIGNS)],
  ["QT_IQ2XXS", () => words(IQ2XXS.bytes)],
  ["QT_IQ2XS", () => words(IQ2XS.bytes)],
  ["QT_IQ2S", () => words(IQ2S.bytes)],
  ["QT_IQ3XXS", () => words(IQ3XXS.bytes)],
  ["QT_IQ3S", () => words(IQ3S.bytes)],
  ["QT_IQ1S", iq1sPacked],
  ["QT_KVALUES_IQ4", () => f32Words(KVALUES_IQ4)],
  ["QT_KVALUES_FP4", () => f32Words(KVALUES_FP4)],
];

/** The f32 bit patterns of `values`. */
function f32Words(values: ArrayLike<number>): Uint32Array {
  return new Uint32Array(Float32Array.from(values).buffer);
}

let table: { words: Uint32Array; wgsl: string } | undefined;

function quantTable(): { words: Uint32Array; wgsl: string } {
  if (table) return table;
  const parts = TABLE_PARTS.map(([name, make]) => [name, make()] as const);
  const total = parts.reduce((n, [, w]) => n + w.length, 0);
  const all = new Uint32Array(total);
  const consts: string[] = [];
  let at = 0;
  for (const [name, w] of parts) {
    all.set(w, at);
    consts.push(`const ${name} = ${at}u;`);
    at += w.length;
  }
  table = {
    words: all,
    wgsl:
      "// First words of the parts of QT, the I-quant table buffer (src/gpu/ops/quant_wgsl.ts).\n" +
      consts.join("\n") + "\n",
  };
  return table;
}

defineShaderLib("quant_table", () => quantTable().wgsl);

/** Section names of the types whose kernels read the table buffer (binding `QT`). */
const TABLE_SECTIONS = new Set([
  "iq2_xxs",
  "iq2_xs",
  "iq2_s",
  "iq3_xxs",
  "iq3_s",
  "iq1_s",
  "iq1_m",
  "iq4_nl",
  "iq4_xs",
  "mxfp4",
]);

/** Whether a weight type's kernels bind the I-quant table buffer ({@linkcode quantTableBuffer}). */
export function usesQuantTable(type: GgmlTypeInfo | number): boolean {
  const name = SECTIONS.get(typeof type === "number" ? type : type.id);
  return name !== undefined && TABLE_SECTIONS.has(name);
}

const tableBuffers = new WeakMap<GPUDevice, GPUBuffer>();

/**
 * The I-quant table buffer of this device (grids and signs, about 22 KB),
 * uploaded on first use and shared by every kernel that reads it.
 */
export function quantTableBuffer(gpu: Gpu): GPUBuffer {
  let buffer = tableBuffers.get(gpu.device);
  if (!buffer) {
    const w = quantTable().words;
    buffer = gpu.device.createBuffer({
      label: "od-moe I-quant tables",
      size: w.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    gpu.device.queue.writeBuffer(buffer, 0, w);
    tableBuffers.set(gpu.device, buffer);
  }
  return buffer;
}

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

/** The block head of a section that has none: nothing shared, `deq_h` is `deq`. */
const GENERIC_HEAD = `
const PH = NP;

struct Head {
  unused: u32,
}

fn head(b: u32, g: u32) -> Head {
  return Head(0u);
}

fn deq_h(b: u32, h: Head, p: u32) -> Piece {
  return deq(b, p);
}
`;

/**
 * The WGSL dequantiser of a type: quant.wgsl's common part and the type's
 * section, ready for a template's `{{QUANT}}` placeholder. For a type that
 * {@linkcode usesQuantTable}, it also declares the table buffer `QT` at
 * `@binding(tableBinding)`, which the caller binds to
 * {@linkcode quantTableBuffer} after the template's own bindings.
 *
 * @throws {UnsupportedWeightTypeError} for a type without a section.
 */
export async function quantWgsl(
  type: GgmlTypeInfo | number,
  tensor = "?",
  baseUrl: URL = SHADER_DIR,
  tableBinding?: number,
): Promise<string> {
  const name = quantVariant(type, tensor);
  const lib = await library(baseUrl);
  const section = lib.sections.get(name);
  if (section === undefined) {
    throw new ShaderSourceError(`shaders/quant.wgsl has no "//#type ${name}" section.`);
  }
  const body = /\bfn deq_h\(/.test(section) ? section : `${section}\n${GENERIC_HEAD}`;
  if (!TABLE_SECTIONS.has(name)) return `${lib.common}\n${body}`;
  if (tableBinding === undefined) {
    throw new ShaderSourceError(
      `quantWgsl: ${name} reads the I-quant table buffer; pass the binding number it gets.`,
    );
  }
  return `${lib.common}\n@group(0) @binding(${tableBinding}) var<storage, read> QT: array<u32>;\n` +
    `//#include quant_table\n${body}`;
}
