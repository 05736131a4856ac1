/**
 * GGUF v3 writer (v2 on request): metadata of every value type, tensor table
 * and aligned data. Used by the test-model generator and tests.
 *
 * @module
 */

import { requireGgmlType, tensorBytes } from "./types.ts";
import { Keys } from "./names.ts";
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC } from "./reader.ts";
import { type GgufArrayValue, type GgufValue, GgufValueType, scalarSize } from "./value.ts";

/** One tensor to write. */
export interface GgufTensorSpec {
  /** Tensor name. */
  name: string;
  /** ggml type id. */
  type: number;
  /** ggml dimension order: `shape[0]` is the row length. */
  shape: readonly number[];
  /** The tensor's bytes, already in the ggml layout of `type`. */
  data: Uint8Array;
}

/**
 * One tensor to write whose bytes are made only when the writer reaches it
 * (so a file larger than memory is written holding one tensor at a time).
 */
export interface GgufLazyTensorSpec {
  /** Tensor name. */
  name: string;
  /** ggml type id. */
  type: number;
  /** ggml dimension order: `shape[0]` is the row length. */
  shape: readonly number[];
  /** Makes the tensor's bytes in the ggml layout of `type`; called once. */
  produce: () => Uint8Array;
}

/**
 * One tensor to write whose bytes arrive in pieces, in order (e.g. one
 * expert's slice of a stacked expert tensor at a time), so even a single
 * tensor larger than memory can be written.
 */
export interface GgufStreamedTensorSpec {
  /** Tensor name. */
  name: string;
  /** ggml type id. */
  type: number;
  /** ggml dimension order: `shape[0]` is the row length. */
  shape: readonly number[];
  /** Yields the tensor's bytes in order, in pieces of any size; iterated once. */
  chunks: () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** A tensor for {@linkcode writeGgufFileLazy}: its bytes, made on demand or in pieces. */
export type GgufAnyTensorSpec = GgufTensorSpec | GgufLazyTensorSpec | GgufStreamedTensorSpec;

/** Everything a GGUF file holds. */
export interface GgufWriteSpec {
  /** Metadata entries, in the order to write them. */
  metadata: Iterable<[string, GgufValue]>;
  /** Tensors, in the order to write them. */
  tensors: readonly GgufTensorSpec[];
  /** Data alignment (default 32; written as `general.alignment` when not 32). */
  alignment?: number;
  /** GGUF version (default 3). */
  version?: 2 | 3;
}

const utf8 = new TextEncoder();

class ByteSink {
  buf = new Uint8Array(1 << 16);
  view = new DataView(this.buf.buffer);
  pos = 0;

  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.pos, v, true);
    this.pos += 4;
  }

  u64(v: number | bigint): void {
    this.reserve(8);
    this.view.setBigUint64(this.pos, BigInt(v), true);
    this.pos += 8;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  string(s: string): void {
    const b = utf8.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }

  scalar(type: string, v: number | bigint | boolean): void {
    const size = scalarSize(type as never)!;
    this.reserve(size);
    const d = this.view;
    const p = this.pos;
    switch (type) {
      case "u8":
        d.setUint8(p, v as number);
        break;
      case "i8":
        d.setInt8(p, v as number);
        break;
      case "u16":
        d.setUint16(p, v as number, true);
        break;
      case "i16":
        d.setInt16(p, v as number, true);
        break;
      case "u32":
        d.setUint32(p, v as number, true);
        break;
      case "i32":
        d.setInt32(p, v as number, true);
        break;
      case "f32":
        d.setFloat32(p, v as number, true);
        break;
      case "f64":
        d.setFloat64(p, v as number, true);
        break;
      case "u64":
        d.setBigUint64(p, BigInt(v as bigint), true);
        break;
      case "i64":
        d.setBigInt64(p, BigInt(v as bigint), true);
        break;
      case "bool":
        d.setUint8(p, v ? 1 : 0);
        break;
      default:
        throw new TypeError(`not a scalar GGUF type: ${type}`);
    }
    this.pos += size;
  }

  value(v: GgufValue): void {
    if (v.type === "string") return this.string(v.value);
    if (v.type !== "array") return this.scalar(v.type, v.value);
    this.array(v);
  }

  array(v: GgufArrayValue): void {
    this.u32(GgufValueType[v.itemType]);
    const items = v.value as ArrayLike<unknown>;
    this.u64(items.length);
    const size = scalarSize(v.itemType);
    if (ArrayBuffer.isView(items) && size !== undefined && v.itemType !== "bool") {
      // Typed arrays are little-endian on every platform Deno runs on.
      this.bytes(new Uint8Array(items.buffer, items.byteOffset, items.byteLength));
      return;
    }
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      if (v.itemType === "string") this.string(item as string);
      else if (v.itemType === "array") {
        this.array(item as GgufArrayValue);
      } else this.scalar(v.itemType, item as number);
    }
  }
}

function buildHeader(
  spec: Omit<GgufWriteSpec, "tensors"> & { tensors: ReadonlyArray<GgufAnyTensorSpec> },
): { header: Uint8Array; offsets: number[]; alignment: number } {
  const alignment = spec.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const meta = new Map(spec.metadata);
  if (alignment !== GGUF_DEFAULT_ALIGNMENT) {
    meta.set(Keys.alignment, { type: "u32", value: alignment });
  }
  const s = new ByteSink();
  s.u32(GGUF_MAGIC);
  s.u32(spec.version ?? 3);
  s.u64(spec.tensors.length);
  s.u64(meta.size);
  for (const [key, value] of meta) {
    s.string(key);
    s.u32(GgufValueType[value.type]);
    s.value(value);
  }
  const offsets: number[] = [];
  let offset = 0;
  for (const t of spec.tensors) {
    const type = requireGgmlType(t.type);
    const n = tensorBytes(type, t.shape);
    if ("data" in t && n !== t.data.length) {
      throw new RangeError(
        `tensor ${t.name}: ${type.name} ${
          JSON.stringify(t.shape)
        } needs ${n} bytes, data has ${t.data.length}`,
      );
    }
    s.string(t.name);
    s.u32(t.shape.length);
    for (const d of t.shape) s.u64(d);
    s.u32(t.type);
    s.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(n / alignment) * alignment;
  }
  const headerLen = Math.ceil(s.pos / alignment) * alignment;
  s.reserve(headerLen - s.pos);
  return { header: s.buf.slice(0, headerLen), offsets, alignment };
}

/** Serialises a GGUF file into memory. */
export function serializeGguf(spec: GgufWriteSpec): Uint8Array {
  const { header, offsets } = buildHeader(spec);
  const last = spec.tensors.length - 1;
  const dataLen = last < 0 ? 0 : offsets[last]! + spec.tensors[last]!.data.length;
  const out = new Uint8Array(header.length + dataLen);
  out.set(header);
  spec.tensors.forEach((t, i) => out.set(t.data, header.length + offsets[i]!));
  return out;
}

/**
 * Writes a GGUF file, tensor by tensor, to a temporary name renamed into
 * place at the end, so a reader never sees a half-written file.
 */
export function writeGgufFile(path: string, spec: GgufWriteSpec): Promise<void> {
  return writeGgufFileLazy(path, spec);
}

/**
 * {@linkcode writeGgufFile} for tensors that may be made on demand
 * ({@linkcode GgufLazyTensorSpec}) or in pieces
 * ({@linkcode GgufStreamedTensorSpec}): each is produced, written and
 * dropped before the next, so memory holds one tensor (or one piece) at a
 * time.
 *
 * @throws a `RangeError` naming the tensor whose bytes do not match its type and shape.
 */
export async function writeGgufFileLazy(
  path: string,
  spec: Omit<GgufWriteSpec, "tensors"> & { tensors: ReadonlyArray<GgufAnyTensorSpec> },
): Promise<void> {
  const { header, offsets } = buildHeader(spec);
  const tmp = `${path}.tmp-${Deno.pid}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, header);
    let pos = 0;
    for (let i = 0; i < spec.tensors.length; i++) {
      const t = spec.tensors[i]!;
      const at = offsets[i]!;
      if (at > pos) await writeAll(file, new Uint8Array(at - pos));
      const n = tensorBytes(requireGgmlType(t.type), t.shape);
      if ("chunks" in t) {
        let written = 0;
        for await (const piece of t.chunks()) {
          if (written + piece.length > n) {
            throw new RangeError(`tensor ${t.name}: needs ${n} bytes, chunks() gave more`);
          }
          await writeAll(file, piece);
          written += piece.length;
        }
        if (written !== n) {
          throw new RangeError(`tensor ${t.name}: needs ${n} bytes, chunks() gave ${written}`);
        }
        pos = at + n;
        continue;
      }
      const data = "data" in t ? t.data : t.produce();
      if (data.length !== n) {
        throw new RangeError(`tensor ${t.name}: needs ${n} bytes, produce() gave ${data.length}`);
      }
      await writeAll(file, data);
      pos = at + data.length;
    }
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
  await Deno.rename(tmp, path);
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await file.write(data.subarray(off));
}
