/**
 * GGUF metadata values: the on-disk type ids, a tagged representation that
 * keeps the stored type (so a read file can be written back unchanged), and
 * constructors for writing.
 *
 * @module
 */

/** GGUF metadata value type ids (`enum gguf_type`). */
export const GgufValueType = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

/** A metadata value type name. */
export type GgufTypeName = keyof typeof GgufValueType;

/** Names of the scalar types that hold a JS number. */
export type GgufNumberType = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64";

/** The JS array used for an array of each item type. */
export interface GgufArrayItems {
  u8: Uint8Array;
  i8: Int8Array;
  u16: Uint16Array;
  i16: Int16Array;
  u32: Uint32Array;
  i32: Int32Array;
  f32: Float32Array;
  f64: Float64Array;
  u64: BigUint64Array;
  i64: BigInt64Array;
  bool: boolean[];
  string: string[];
  array: GgufArrayValue[];
}

/** An array value: its item type and its items. */
export type GgufArrayValue = {
  [K in keyof GgufArrayItems]: { type: "array"; itemType: K; value: GgufArrayItems[K] };
}[keyof GgufArrayItems];

/** One metadata value, tagged with its stored type. */
export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: "u64" | "i64"; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | GgufArrayValue;

/** The name of a value type id, or undefined for an unknown id. */
export function valueTypeName(id: number): GgufTypeName | undefined {
  for (const [name, v] of Object.entries(GgufValueType)) {
    if (v === id) return name as GgufTypeName;
  }
  return undefined;
}

/** Bytes taken by one scalar of a fixed-size type (strings and arrays: undefined). */
export function scalarSize(type: GgufTypeName): number | undefined {
  switch (type) {
    case "u8":
    case "i8":
    case "bool":
      return 1;
    case "u16":
    case "i16":
      return 2;
    case "u32":
    case "i32":
    case "f32":
      return 4;
    case "u64":
    case "i64":
    case "f64":
      return 8;
    default:
      return undefined;
  }
}

/** Constructors for metadata values, for writers. */
export const gv = {
  u8: (value: number): GgufValue => ({ type: "u8", value }),
  i8: (value: number): GgufValue => ({ type: "i8", value }),
  u16: (value: number): GgufValue => ({ type: "u16", value }),
  i16: (value: number): GgufValue => ({ type: "i16", value }),
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  f64: (value: number): GgufValue => ({ type: "f64", value }),
  u64: (value: bigint | number): GgufValue => ({ type: "u64", value: BigInt(value) }),
  i64: (value: bigint | number): GgufValue => ({ type: "i64", value: BigInt(value) }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  strings: (value: string[]): GgufValue => ({ type: "array", itemType: "string", value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({
    type: "array",
    itemType: "f32",
    value: Float32Array.from(value),
  }),
  i32s: (value: ArrayLike<number>): GgufValue => ({
    type: "array",
    itemType: "i32",
    value: Int32Array.from(value),
  }),
  u32s: (value: ArrayLike<number>): GgufValue => ({
    type: "array",
    itemType: "u32",
    value: Uint32Array.from(value),
  }),
  bools: (value: boolean[]): GgufValue => ({ type: "array", itemType: "bool", value }),
};

/** A short human description of a value (for inspect output and errors). */
export function describeValue(v: GgufValue, maxItems = 8): string {
  if (v.type !== "array") {
    return v.type === "string" ? JSON.stringify(v.value) : String(v.value);
  }
  const items = v.value as ArrayLike<unknown>;
  const shown: string[] = [];
  for (let i = 0; i < Math.min(items.length, maxItems); i++) {
    const x = items[i];
    shown.push(
      typeof x === "string"
        ? JSON.stringify(x)
        : typeof x === "object" && x !== null
        ? describeValue(x as GgufValue, 2)
        : String(x),
    );
  }
  const more = items.length > maxItems ? `, … (${items.length} items)` : "";
  return `${v.itemType}[${shown.join(", ")}${more}]`;
}
