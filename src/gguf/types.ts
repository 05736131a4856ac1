/**
 * The ggml tensor type table: the numeric ids GGUF files store, and for each
 * type how many elements one block holds and how many bytes it takes.
 *
 * Ids and block layouts are facts of the format (ggml.h / ggml-common.h); a
 * removed id (4, 5, 31–33, 36–38) is unknown here and rejected on read.
 *
 * @module
 */

/** Everything known about one ggml tensor type. */
export interface GgmlTypeInfo {
  /** The id stored in GGUF tensor infos. */
  readonly id: number;
  /** The name ggml gives it (`"Q4_K"`). */
  readonly name: string;
  /** Elements per block (1 for plain scalar types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** True for block-quantised types. */
  readonly quantized: boolean;
}

/** The ggml type ids, by name. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
  Q2_0: 42,
} as const;

/** A ggml type name (`"Q4_K"`). */
export type GgmlTypeName = keyof typeof GgmlType;

/** QK_K: the super-block size of the K-quants and most IQ types. */
export const QK_K = 256;

const table: ReadonlyArray<[GgmlTypeName, number, number]> = [
  // name, elements per block, bytes per block
  ["F32", 1, 4],
  ["F16", 1, 2],
  ["Q4_0", 32, 2 + 16],
  ["Q4_1", 32, 4 + 16],
  ["Q5_0", 32, 2 + 4 + 16],
  ["Q5_1", 32, 4 + 4 + 16],
  ["Q8_0", 32, 2 + 32],
  ["Q8_1", 32, 4 + 32],
  ["Q2_K", QK_K, 16 + 64 + 4],
  ["Q3_K", QK_K, 32 + 64 + 12 + 2],
  ["Q4_K", QK_K, 4 + 12 + 128],
  ["Q5_K", QK_K, 4 + 12 + 32 + 128],
  ["Q6_K", QK_K, 128 + 64 + 16 + 2],
  ["Q8_K", QK_K, 4 + 256 + 32],
  ["IQ2_XXS", QK_K, 2 + 64],
  ["IQ2_XS", QK_K, 2 + 64 + 8],
  ["IQ3_XXS", QK_K, 2 + 96],
  ["IQ1_S", QK_K, 2 + 32 + 16],
  ["IQ4_NL", 32, 2 + 16],
  ["IQ3_S", QK_K, 2 + 64 + 8 + 32 + 4],
  ["IQ2_S", QK_K, 2 + 64 + 8 + 8],
  ["IQ4_XS", QK_K, 2 + 2 + 4 + 128],
  ["I8", 1, 1],
  ["I16", 1, 2],
  ["I32", 1, 4],
  ["I64", 1, 8],
  ["F64", 1, 8],
  ["IQ1_M", QK_K, 32 + 16 + 8],
  ["BF16", 1, 2],
  ["TQ1_0", QK_K, 48 + 4 + 2],
  ["TQ2_0", QK_K, 64 + 2],
  ["MXFP4", 32, 1 + 16],
  ["NVFP4", 64, 4 + 32],
  ["Q1_0", 128, 2 + 16],
  ["Q2_0", 64, 2 + 16],
];

const byId = new Map<number, GgmlTypeInfo>(
  table.map(([name, blockSize, typeSize]) => {
    const id = GgmlType[name];
    return [id, { id, name, blockSize, typeSize, quantized: blockSize > 1 }];
  }),
);

/** The type info for an id, or `undefined` for an id ggml does not define. */
export function ggmlTypeInfo(id: number): GgmlTypeInfo | undefined {
  return byId.get(id);
}

/** The type info for an id; throws for an unknown id. */
export function requireGgmlType(id: number): GgmlTypeInfo {
  const info = byId.get(id);
  if (!info) throw new RangeError(`unknown ggml type id ${id}`);
  return info;
}

/** The name of a type id, or `"type#<id>"` for an unknown one. */
export function ggmlTypeName(id: number): string {
  return byId.get(id)?.name ?? `type#${id}`;
}

/** Every known type. */
export function allGgmlTypes(): GgmlTypeInfo[] {
  return [...byId.values()];
}

/**
 * Bytes taken by `nElements` elements of a type laid out as rows of `rowLength`.
 * Throws if a row is not a whole number of blocks.
 */
export function tensorBytes(type: GgmlTypeInfo, shape: readonly number[]): number {
  const rowLength = shape[0] ?? 1;
  if (rowLength % type.blockSize !== 0) {
    throw new RangeError(
      `row length ${rowLength} is not a multiple of the ${type.name} block size ${type.blockSize}`,
    );
  }
  let rows = 1;
  for (let i = 1; i < shape.length; i++) rows *= shape[i]!;
  return (rowLength / type.blockSize) * type.typeSize * rows;
}

/** Bytes of one row of `rowLength` elements. */
export function rowBytes(type: GgmlTypeInfo, rowLength: number): number {
  return tensorBytes(type, [rowLength]);
}
