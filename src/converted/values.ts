/**
 * GGUF metadata values as JSON, losslessly: each value keeps its stored type
 * (`{"type": "u32", "value": 5}`), 64-bit integers travel as decimal
 * strings, and floats that JSON cannot spell (NaN, ±Infinity, -0) as
 * strings. The converter writes a model's metadata this way into
 * `config.json` and `tokenizer.json`, and the reader rebuilds the same
 * {@link GgufMetadata} from them.
 *
 * @module
 */

import type { GgufArrayValue, GgufTypeName, GgufValue } from "../gguf/value.ts";
import { GgufValueType } from "../gguf/value.ts";

/** A GGUF value as JSON. */
export type JsonGgufValue =
  | { type: GgufTypeName; value: number | string | boolean }
  | { type: "array"; itemType: GgufTypeName; value: unknown[] };

/** A value in a JSON file is not a GGUF value this module wrote. */
export class GgufJsonError extends Error {
  /** Builds the error; `where` names the file and key. */
  constructor(where: string, detail: string) {
    super(`${where}: ${detail}`);
    this.name = "GgufJsonError";
  }
}

function encodeFloat(x: number): number | string {
  if (Number.isFinite(x) && !Object.is(x, -0)) return x;
  return Object.is(x, -0) ? "-0" : String(x);
}

function decodeFloat(v: unknown, where: string): number {
  if (typeof v === "number") return v;
  if (v === "NaN") return NaN;
  if (v === "Infinity") return Infinity;
  if (v === "-Infinity") return -Infinity;
  if (v === "-0") return -0;
  throw new GgufJsonError(where, `expected a float, found ${JSON.stringify(v)}`);
}

function encodeItems(v: GgufArrayValue): unknown[] {
  switch (v.itemType) {
    case "f32":
    case "f64":
      return Array.from(v.value, encodeFloat);
    case "u64":
    case "i64":
      return Array.from(v.value, (x) => x.toString());
    case "array":
      return v.value.map(encodeGgufValue);
    case "string":
    case "bool":
      return [...v.value];
    default:
      return Array.from(v.value as ArrayLike<number>);
  }
}

/** A GGUF value as JSON (see the module doc). */
export function encodeGgufValue(v: GgufValue): JsonGgufValue {
  if (v.type === "array") return { type: "array", itemType: v.itemType, value: encodeItems(v) };
  if (v.type === "f32" || v.type === "f64") return { type: v.type, value: encodeFloat(v.value) };
  if (v.type === "u64" || v.type === "i64") return { type: v.type, value: v.value.toString() };
  return { type: v.type, value: v.value } as JsonGgufValue;
}

const INT_RANGE: Record<string, [number, number]> = {
  u8: [0, 0xff],
  i8: [-0x80, 0x7f],
  u16: [0, 0xffff],
  i16: [-0x8000, 0x7fff],
  u32: [0, 0xffffffff],
  i32: [-0x80000000, 0x7fffffff],
};

function decodeInt(v: unknown, type: string, where: string): number {
  const [lo, hi] = INT_RANGE[type]!;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
    throw new GgufJsonError(where, `expected a ${type}, found ${JSON.stringify(v)}`);
  }
  return v;
}

function decodeBig(v: unknown, type: "u64" | "i64", where: string): bigint {
  if (typeof v !== "string" || !/^-?\d+$/.test(v)) {
    throw new GgufJsonError(
      where,
      `expected a ${type} as a decimal string, found ${JSON.stringify(v)}`,
    );
  }
  const b = BigInt(v);
  const ok = type === "u64" ? b >= 0n && b < 2n ** 64n : b >= -(2n ** 63n) && b < 2n ** 63n;
  if (!ok) throw new GgufJsonError(where, `${v} is out of range for ${type}`);
  return b;
}

function isTypeName(t: unknown): t is GgufTypeName {
  return typeof t === "string" && Object.hasOwn(GgufValueType, t);
}

/** Rebuilds a GGUF value from {@link encodeGgufValue}'s JSON; throws {@link GgufJsonError} naming `where`. */
export function decodeGgufValue(j: unknown, where: string, depth = 0): GgufValue {
  if (typeof j !== "object" || j === null || Array.isArray(j)) {
    throw new GgufJsonError(where, `expected {"type", "value"}, found ${JSON.stringify(j)}`);
  }
  const { type, value, itemType } = j as Record<string, unknown>;
  if (!isTypeName(type)) {
    throw new GgufJsonError(where, `unknown value type ${JSON.stringify(type)}`);
  }
  switch (type) {
    case "string":
      if (typeof value !== "string") throw new GgufJsonError(where, "expected a string");
      return { type, value };
    case "bool":
      if (typeof value !== "boolean") throw new GgufJsonError(where, "expected a boolean");
      return { type, value };
    case "f32":
    case "f64":
      return { type, value: decodeFloat(value, where) };
    case "u64":
    case "i64":
      return { type, value: decodeBig(value, type, where) };
    case "array":
      return decodeArray(itemType, value, where, depth);
    default:
      return { type, value: decodeInt(value, type, where) };
  }
}

function decodeArray(
  itemType: unknown,
  value: unknown,
  where: string,
  depth: number,
): GgufArrayValue {
  if (!isTypeName(itemType)) {
    throw new GgufJsonError(where, `unknown array item type ${JSON.stringify(itemType)}`);
  }
  if (!Array.isArray(value)) throw new GgufJsonError(where, "expected an array of items");
  if (depth > 4) throw new GgufJsonError(where, "arrays nested deeper than 4 levels");
  const at = (i: number) => `${where}[${i}]`;
  switch (itemType) {
    case "string":
      value.forEach((x, i) => {
        if (typeof x !== "string") throw new GgufJsonError(at(i), "expected a string");
      });
      return { type: "array", itemType, value: value as string[] };
    case "bool":
      value.forEach((x, i) => {
        if (typeof x !== "boolean") throw new GgufJsonError(at(i), "expected a boolean");
      });
      return { type: "array", itemType, value: value as boolean[] };
    case "f32":
      return {
        type: "array",
        itemType,
        value: Float32Array.from(value, (x, i) => decodeFloat(x, at(i))),
      };
    case "f64":
      return {
        type: "array",
        itemType,
        value: Float64Array.from(value, (x, i) => decodeFloat(x, at(i))),
      };
    case "u64":
      return {
        type: "array",
        itemType,
        value: BigUint64Array.from(value, (x, i) => decodeBig(x, "u64", at(i))),
      };
    case "i64":
      return {
        type: "array",
        itemType,
        value: BigInt64Array.from(value, (x, i) => decodeBig(x, "i64", at(i))),
      };
    case "array":
      return {
        type: "array",
        itemType,
        value: value.map((x, i) => {
          const v = decodeGgufValue(x, at(i), depth + 1);
          if (v.type !== "array") throw new GgufJsonError(at(i), "expected an array");
          return v;
        }),
      };
    default: {
      const ints = value.map((x, i) => decodeInt(x, itemType, at(i)));
      const ctor = {
        u8: Uint8Array,
        i8: Int8Array,
        u16: Uint16Array,
        i16: Int16Array,
        u32: Uint32Array,
        i32: Int32Array,
      }[itemType];
      return { type: "array", itemType, value: ctor.from(ints) } as GgufArrayValue;
    }
  }
}

/** Metadata entries as a JSON object, key order kept. */
export function encodeMetadata(
  entries: Iterable<[string, GgufValue]>,
): Record<string, JsonGgufValue> {
  const out: Record<string, JsonGgufValue> = {};
  for (const [k, v] of entries) out[k] = encodeGgufValue(v);
  return out;
}

/** Rebuilds metadata entries from {@link encodeMetadata}'s JSON; `where` names the file. */
export function decodeMetadata(j: unknown, where: string): Map<string, GgufValue> {
  if (typeof j !== "object" || j === null || Array.isArray(j)) {
    throw new GgufJsonError(where, "gguf_metadata must be an object");
  }
  const out = new Map<string, GgufValue>();
  for (const [k, v] of Object.entries(j)) out.set(k, decodeGgufValue(v, `${where}: ${k}`));
  return out;
}
