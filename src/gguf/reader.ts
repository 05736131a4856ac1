/**
 * GGUF v2/v3 reader: metadata, tensor table, alignment and data offset, and
 * split files (`name-00001-of-00003.gguf`). Reads only the header; tensor
 * bytes are reached through the offsets it returns (memory-mapped by the
 * caller). Every malformed input raises a {@link GgufError} naming the file,
 * the byte offset and what was expected — never a crash, hang or huge
 * allocation.
 *
 * @module
 */

import { GgufError } from "./errors.ts";
import { type GgmlTypeInfo, ggmlTypeInfo } from "./types.ts";
import { Keys } from "./names.ts";
import {
  type GgufArrayValue,
  type GgufTypeName,
  type GgufValue,
  scalarSize,
  valueTypeName,
} from "./value.ts";

/** The magic number `GGUF` read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
/** The default data alignment when `general.alignment` is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's maximum number of tensor dimensions. */
export const GGML_MAX_DIMS = 4;

/** One entry of the tensor table. */
export interface GgufTensorInfo {
  /** The tensor name (`blk.0.ffn_up_exps.weight`). */
  readonly name: string;
  /** The ggml type id and its block layout. */
  readonly type: GgmlTypeInfo;
  /** ggml dimension order: `shape[0]` is the row length (contiguous). */
  readonly shape: readonly number[];
  /** Number of elements. */
  readonly nElements: number;
  /** Bytes of data. */
  readonly nBytes: number;
  /** Offset from the start of the data section, as stored. */
  readonly dataOffset: number;
  /** Absolute byte offset in its file. */
  readonly fileOffset: number;
  /** Index of the file holding the tensor (0 unless the model is split). */
  readonly fileIndex: number;
}

/** Typed access to metadata, with errors that name the file and key. */
export class GgufMetadata {
  /** The raw entries, in file order. */
  readonly entries: Map<string, GgufValue>;
  readonly #file: string;

  /** Wraps parsed entries of `file`. */
  constructor(entries: Map<string, GgufValue>, file: string) {
    this.entries = entries;
    this.#file = file;
  }

  /** Whether a key is present. */
  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** The tagged value of a key, or undefined. */
  get(key: string): GgufValue | undefined {
    return this.entries.get(key);
  }

  /** A numeric value (any integer or float type; 64-bit ones must fit a double). */
  number(key: string): number;
  /** A numeric value, or `fallback` when the key is absent. */
  number<T>(key: string, fallback: T): number | T;
  number<T>(key: string, ...fallback: [T] | []): number | T {
    const v = this.entries.get(key);
    if (v === undefined) {
      if (fallback.length) return fallback[0] as T;
      throw this.#missing(key, "a number");
    }
    if (typeof v.value === "number") return v.value;
    if (typeof v.value === "bigint") {
      const n = Number(v.value);
      if (!Number.isSafeInteger(n)) throw this.#wrong(key, "a number below 2^53", v);
      return n;
    }
    if (typeof v.value === "boolean") return v.value ? 1 : 0;
    throw this.#wrong(key, "a number", v);
  }

  /** A string value. */
  string(key: string): string;
  /** A string value, or `fallback` when the key is absent. */
  string<T>(key: string, fallback: T): string | T;
  string<T>(key: string, ...fallback: [T] | []): string | T {
    const v = this.entries.get(key);
    if (v === undefined) {
      if (fallback.length) return fallback[0] as T;
      throw this.#missing(key, "a string");
    }
    if (v.type !== "string") throw this.#wrong(key, "a string", v);
    return v.value;
  }

  /** A boolean value, or `fallback` when absent. */
  bool(key: string, fallback: boolean): boolean {
    const v = this.entries.get(key);
    if (v === undefined) return fallback;
    if (v.type === "bool") return v.value;
    if (typeof v.value === "number") return v.value !== 0;
    throw this.#wrong(key, "a boolean", v);
  }

  /** An array value, or undefined when absent. */
  array(key: string): GgufArrayValue | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== "array") throw this.#wrong(key, "an array", v);
    return v;
  }

  /** An array of strings, or undefined when absent. */
  strings(key: string): string[] | undefined {
    const v = this.array(key);
    if (v === undefined) return undefined;
    if (v.itemType !== "string") throw this.#wrong(key, "an array of strings", v);
    return v.value;
  }

  /** An array of numbers (any numeric item type), or undefined when absent. */
  numbers(key: string): number[] | undefined {
    const v = this.array(key);
    if (v === undefined) return undefined;
    if (v.itemType === "string" || v.itemType === "array") {
      throw this.#wrong(key, "an array of numbers", v);
    }
    return Array.from(v.value as ArrayLike<number | bigint | boolean>, Number);
  }

  #missing(key: string, what: string): Error {
    return new GgufError("metadata", this.#file, 0, `metadata key ${key} is missing (${what})`);
  }

  #wrong(key: string, what: string, v: GgufValue): Error {
    const found = v.type === "array" ? `array of ${v.itemType}` : v.type;
    return new GgufError(
      "metadata",
      this.#file,
      0,
      `metadata key ${key} should be ${what}, found ${found}`,
    );
  }
}

/** The parsed header of one GGUF file. */
export interface GgufHeader {
  /** Path of the file. */
  readonly path: string;
  /** Size of the file in bytes. */
  readonly fileSize: number;
  /** GGUF version (2 or 3). */
  readonly version: number;
  /** Metadata. */
  readonly metadata: GgufMetadata;
  /** Tensor table, in file order. */
  readonly tensors: readonly GgufTensorInfo[];
  /** Data alignment. */
  readonly alignment: number;
  /** Absolute offset of the data section. */
  readonly dataOffset: number;
}

/** A whole model: one file, or every shard of a split model merged. */
export interface GgufModelFile {
  /** The shards' headers, in shard order (one entry for an unsplit file). */
  readonly files: readonly GgufHeader[];
  /** Metadata of the first shard (where llama.cpp reads hyperparameters). */
  readonly metadata: GgufMetadata;
  /** Every tensor of every shard. */
  readonly tensors: readonly GgufTensorInfo[];
  /** Tensors by name. */
  readonly tensorMap: ReadonlyMap<string, GgufTensorInfo>;
  /** `general.architecture`. */
  readonly architecture: string;
}

class NeedMore {
  constructor(readonly end: number) {}
}

// ignoreBOM: a vocabulary entry may start with U+FEFF, which must be kept.
const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

/** Parses a header from `buf`, the first `buf.length` bytes of a file of `fileSize` bytes. */
class Parser {
  pos = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array, readonly fileSize: number, readonly path: string) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  fail(kind: ConstructorParameters<typeof GgufError>[0], detail: string, at = this.pos): never {
    throw new GgufError(kind, this.path, at, detail);
  }

  need(n: number, what: string): void {
    const end = this.pos + n;
    if (end > this.fileSize) {
      this.fail(
        "truncated",
        `file ends at byte ${this.fileSize}, ${what} needs ${n} bytes (truncated file?)`,
      );
    }
    if (end > this.buf.length) throw new NeedMore(end);
  }

  remaining(): number {
    return this.fileSize - this.pos;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  u64(what: string): number {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      this.fail("count", `${what} is ${v}, larger than any file`);
    }
    this.pos += 8;
    return Number(v);
  }

  string(what: string): string {
    const start = this.pos;
    const len = this.u64(`length of ${what}`);
    if (len > this.remaining()) {
      this.fail(
        "string",
        `${what} claims ${len} bytes but only ${this.remaining()} remain in the file`,
        start,
      );
    }
    this.need(len, what);
    const s = utf8.decode(this.buf.subarray(this.pos, this.pos + len));
    this.pos += len;
    return s;
  }

  scalar(type: GgufTypeName, what: string): GgufValue {
    const size = scalarSize(type)!;
    this.need(size, what);
    const p = this.pos;
    const d = this.view;
    this.pos += size;
    switch (type) {
      case "u8":
        return { type, value: d.getUint8(p) };
      case "i8":
        return { type, value: d.getInt8(p) };
      case "u16":
        return { type, value: d.getUint16(p, true) };
      case "i16":
        return { type, value: d.getInt16(p, true) };
      case "u32":
        return { type, value: d.getUint32(p, true) };
      case "i32":
        return { type, value: d.getInt32(p, true) };
      case "f32":
        return { type, value: d.getFloat32(p, true) };
      case "f64":
        return { type, value: d.getFloat64(p, true) };
      case "u64":
        return { type, value: d.getBigUint64(p, true) };
      case "i64":
        return { type, value: d.getBigInt64(p, true) };
      case "bool": {
        const b = d.getUint8(p);
        if (b > 1) this.fail("value_type", `${what}: a bool must be 0 or 1, found ${b}`, p);
        return { type, value: b === 1 };
      }
      default:
        this.fail("value_type", `${what}: ${type} is not a scalar type`, p);
    }
  }

  valueType(what: string): GgufTypeName {
    const at = this.pos;
    const id = this.u32(`type of ${what}`);
    const name = valueTypeName(id);
    if (name === undefined) {
      this.fail("value_type", `${what} has unknown value type ${id} (expected 0–12)`, at);
    }
    return name;
  }

  value(type: GgufTypeName, what: string, depth = 0): GgufValue {
    if (type === "string") return { type, value: this.string(what) };
    if (type !== "array") return this.scalar(type, what);
    const at = this.pos;
    const itemType = this.valueType(`items of ${what}`);
    const count = this.u64(`item count of ${what}`);
    const minItem = itemType === "string" || itemType === "array" ? 8 : scalarSize(itemType)!;
    if (count * minItem > this.remaining()) {
      this.fail(
        "count",
        `${what} claims ${count} ${itemType} items (≥ ${
          count * minItem
        } bytes) but only ${this.remaining()} bytes remain`,
        at,
      );
    }
    if (itemType === "array" && depth >= 4) {
      this.fail("value_type", `${what}: arrays nested deeper than 4 levels`, at);
    }
    return this.array(itemType, count, what, depth);
  }

  array(itemType: GgufTypeName, count: number, what: string, depth: number): GgufArrayValue {
    const size = scalarSize(itemType);
    if (size !== undefined && itemType !== "bool") {
      this.need(count * size, what);
      // Copy so the values do not pin the header buffer and are aligned.
      const bytes = this.buf.slice(this.pos, this.pos + count * size);
      this.pos += count * size;
      const b = bytes.buffer;
      switch (itemType) {
        case "u8":
          return { type: "array", itemType, value: new Uint8Array(b) };
        case "i8":
          return { type: "array", itemType, value: new Int8Array(b) };
        case "u16":
          return { type: "array", itemType, value: new Uint16Array(b) };
        case "i16":
          return { type: "array", itemType, value: new Int16Array(b) };
        case "u32":
          return { type: "array", itemType, value: new Uint32Array(b) };
        case "i32":
          return { type: "array", itemType, value: new Int32Array(b) };
        case "f32":
          return { type: "array", itemType, value: new Float32Array(b) };
        case "f64":
          return { type: "array", itemType, value: new Float64Array(b) };
        case "u64":
          return { type: "array", itemType, value: new BigUint64Array(b) };
        case "i64":
          return { type: "array", itemType, value: new BigInt64Array(b) };
      }
    }
    if (itemType === "bool") {
      const out: boolean[] = new Array(count);
      for (let i = 0; i < count; i++) {
        out[i] = this.scalar("bool", `${what}[${i}]`).value as boolean;
      }
      return { type: "array", itemType, value: out };
    }
    if (itemType === "string") {
      const out: string[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = this.string(`${what}[${i}]`);
      return { type: "array", itemType, value: out };
    }
    const out: GgufArrayValue[] = new Array(count);
    for (let i = 0; i < count; i++) {
      out[i] = this.value("array", `${what}[${i}]`, depth + 1) as GgufArrayValue;
    }
    return { type: "array", itemType: "array", value: out };
  }
}

function parseHeader(buf: Uint8Array, fileSize: number, path: string): GgufHeader {
  const p: Parser = new Parser(buf, fileSize, path);
  if (fileSize < 4) p.fail("truncated", `file is ${fileSize} bytes, too short for the GGUF magic`);
  p.need(4, "magic");
  const magic = p.view.getUint32(0, true);
  if (magic !== GGUF_MAGIC) {
    const seen = [...buf.subarray(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    p.fail("magic", `not a GGUF file: expected magic "GGUF" (47 47 55 46), found ${seen}`, 0);
  }
  p.pos = 4;
  const version = p.u32("version");
  if (version !== 2 && version !== 3) {
    const hint = version === 1
      ? " (GGUF v1 is obsolete: reconvert the model)"
      : (version & 0xffff) === 0 && version >>> 16 <= 3
      ? " (a big-endian GGUF: not supported)"
      : "";
    p.fail("version", `unsupported GGUF version ${version}, expected 2 or 3${hint}`, 4);
  }
  const tensorCountAt = p.pos;
  const tensorCount = p.u64("tensor count");
  const kvCountAt = p.pos;
  const kvCount = p.u64("metadata count");
  // The smallest kv is 8 (key length) + 4 (type) + 1 byte; the smallest tensor info 8+4+8+4+8.
  if (kvCount * 13 > p.remaining()) {
    p.fail(
      "count",
      `metadata count ${kvCount} cannot fit in the ${p.remaining()} remaining bytes`,
      kvCountAt,
    );
  }
  if (tensorCount * 32 > p.remaining()) {
    p.fail(
      "count",
      `tensor count ${tensorCount} cannot fit in the ${p.remaining()} remaining bytes`,
      tensorCountAt,
    );
  }

  const entries = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const at = p.pos;
    const key = p.string(`metadata key #${i}`);
    if (entries.has(key)) p.fail("duplicate", `metadata key ${key} appears twice`, at);
    const type = p.valueType(`metadata ${key}`);
    entries.set(key, p.value(type, `metadata ${key}`));
  }
  const metadata = new GgufMetadata(entries, path);

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const alignValue = entries.get(Keys.alignment);
  if (alignValue !== undefined) {
    const a = typeof alignValue.value === "number" ? alignValue.value : NaN;
    if (!(a > 0 && (a & (a - 1)) === 0 && Number.isInteger(a))) {
      p.fail(
        "alignment",
        `general.alignment must be a power of two, found ${describe(alignValue)}`,
        0,
      );
    }
    alignment = a;
  }

  interface RawInfo {
    name: string;
    type: GgmlTypeInfo;
    shape: number[];
    nElements: number;
    nBytes: number;
    dataOffset: number;
    at: number;
  }
  const raw: RawInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const at = p.pos;
    const name = p.string(`name of tensor #${i}`);
    if (names.has(name)) p.fail("duplicate", `tensor ${name} appears twice`, at);
    names.add(name);
    const ndimAt = p.pos;
    const nDims = p.u32(`dimension count of ${name}`);
    if (nDims < 1 || nDims > GGML_MAX_DIMS) {
      p.fail(
        "tensor_shape",
        `tensor ${name} has ${nDims} dimensions, expected 1–${GGML_MAX_DIMS}`,
        ndimAt,
      );
    }
    const shape: number[] = [];
    let nElements = 1;
    for (let d = 0; d < nDims; d++) {
      const dimAt = p.pos;
      const n = p.u64(`dimension ${d} of ${name}`);
      nElements *= n;
      if (!Number.isSafeInteger(nElements)) {
        p.fail("tensor_shape", `tensor ${name} has more elements than can be addressed`, dimAt);
      }
      shape.push(n);
    }
    const typeAt = p.pos;
    const typeId = p.u32(`type of ${name}`);
    const type = ggmlTypeInfo(typeId);
    if (!type) p.fail("tensor_type", `tensor ${name} has unknown ggml type ${typeId}`, typeAt);
    if (shape[0]! % type.blockSize !== 0) {
      p.fail(
        "tensor_shape",
        `tensor ${name}: row length ${
          shape[0]
        } is not a multiple of the ${type.name} block size ${type.blockSize}`,
        ndimAt,
      );
    }
    const nBytes = (nElements / type.blockSize) * type.typeSize;
    const offAt = p.pos;
    const dataOffset = p.u64(`data offset of ${name}`);
    if (dataOffset % alignment !== 0) {
      p.fail(
        "alignment",
        `tensor ${name}: data offset ${dataOffset} is not a multiple of the alignment ${alignment}`,
        offAt,
      );
    }
    raw.push({ name, type, shape, nElements, nBytes, dataOffset, at: offAt });
  }

  const dataOffset = Math.ceil(p.pos / alignment) * alignment;
  const dataSize = fileSize - dataOffset;
  if (tensorCount > 0 && dataOffset > fileSize) {
    p.fail(
      "truncated",
      `the data section should start at byte ${dataOffset} but the file has ${fileSize} bytes`,
    );
  }
  for (const t of raw) {
    if (t.dataOffset + t.nBytes > dataSize) {
      p.fail(
        "tensor_offset",
        `tensor ${t.name} (${t.nBytes} bytes at data offset ${t.dataOffset}) ends at byte ${
          dataOffset + t.dataOffset + t.nBytes
        }, past the end of the file (${fileSize} bytes)`,
        t.at,
      );
    }
  }
  const sorted = [...raw].sort((a, b) => a.dataOffset - b.dataOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.dataOffset < prev.dataOffset + prev.nBytes) {
      p.fail(
        "overlap",
        `tensor ${cur.name} (data offset ${cur.dataOffset}) overlaps tensor ${prev.name} (data offsets ${prev.dataOffset}–${
          prev.dataOffset + prev.nBytes
        })`,
        cur.at,
      );
    }
  }

  const tensors: GgufTensorInfo[] = raw.map((t) => ({
    name: t.name,
    type: t.type,
    shape: t.shape,
    nElements: t.nElements,
    nBytes: t.nBytes,
    dataOffset: t.dataOffset,
    fileOffset: dataOffset + t.dataOffset,
    fileIndex: 0,
  }));
  return { path, fileSize, version, metadata, tensors, alignment, dataOffset };
}

function describe(v: GgufValue): string {
  return `${v.type} ${String(v.value)}`;
}

/**
 * Parses a GGUF header held in memory (`bytes` must be the whole file, or at
 * least its header when `fileSize` says how long the file is).
 */
export function parseGguf(
  bytes: Uint8Array,
  path = "<memory>",
  fileSize = bytes.length,
): GgufHeader {
  try {
    return parseHeader(bytes, fileSize, path);
  } catch (e) {
    if (e instanceof NeedMore) {
      throw new GgufError("truncated", path, bytes.length, "header continues past the bytes given");
    }
    throw e;
  }
}

/** Reads and parses the header of one GGUF file (not its tensor data). */
export function readGgufHeader(path: string): GgufHeader {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`GGUF file not found: ${path}`);
    }
    throw e;
  }
  try {
    const fileSize = file.statSync().size;
    let chunk = Math.min(fileSize, 1 << 20);
    for (;;) {
      const buf = new Uint8Array(chunk);
      file.seekSync(0, Deno.SeekMode.Start);
      let got = 0;
      while (got < chunk) {
        const n = file.readSync(buf.subarray(got));
        if (n === null || n === 0) break;
        got += n;
      }
      try {
        return parseHeader(buf.subarray(0, got), fileSize, path);
      } catch (e) {
        if (!(e instanceof NeedMore) || got < chunk) throw e;
        chunk = Math.min(fileSize, Math.max(chunk * 2, e.end + (1 << 20)));
      }
    }
  } finally {
    file.close();
  }
}

const SPLIT_RE = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;

/** The shard paths of a split model, given any shard; `[path]` for an unsplit file. */
export function splitPaths(path: string): string[] {
  const m = SPLIT_RE.exec(path);
  if (!m) return [path];
  const count = Number(m[3]);
  const out: string[] = [];
  for (let i = 1; i <= count; i++) {
    out.push(`${m[1]}-${String(i).padStart(5, "0")}-of-${m[3]}.gguf`);
  }
  return out;
}

/**
 * Opens a model: one GGUF file, or all shards of a split model
 * (`*-00001-of-0000N.gguf`, any shard may be named). Checks that the shards
 * agree with each other (`split.count`, `split.no`, tensor counts) and that no
 * tensor appears in two shards.
 */
export function readGgufModel(path: string): GgufModelFile {
  const paths = splitPaths(path);
  const files = paths.map((p) => readGgufHeader(p));
  const first = files[0]!;
  if (paths.length > 1) {
    files.forEach((f, i) => {
      const count = f.metadata.number(Keys.splitCount, undefined);
      const no = f.metadata.number(Keys.splitNo, undefined);
      if (count !== paths.length || no !== i) {
        throw new GgufError(
          "split",
          f.path,
          0,
          `shard ${i + 1} of ${paths.length}: metadata says split.no=${no}, split.count=${count}`,
        );
      }
    });
    const expected = first.metadata.number(Keys.splitTensorsCount, undefined);
    const total = files.reduce((s, f) => s + f.tensors.length, 0);
    if (expected !== undefined && expected !== total) {
      throw new GgufError(
        "split",
        first.path,
        0,
        `split.tensors.count says ${expected} tensors but the ${files.length} shards hold ${total}`,
      );
    }
  }
  const tensors: GgufTensorInfo[] = [];
  const tensorMap = new Map<string, GgufTensorInfo>();
  files.forEach((f, fileIndex) => {
    for (const t of f.tensors) {
      const info = { ...t, fileIndex };
      if (tensorMap.has(t.name)) {
        throw new GgufError("duplicate", f.path, 0, `tensor ${t.name} appears in two shards`);
      }
      tensorMap.set(t.name, info);
      tensors.push(info);
    }
  });
  const architecture = first.metadata.string(Keys.architecture, "");
  return { files, metadata: first.metadata, tensors, tensorMap, architecture };
}
