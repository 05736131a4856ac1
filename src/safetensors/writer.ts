/**
 * safetensors writer. The header is built first from the declared dtypes and
 * shapes (so the data can stream afterwards without being held in memory),
 * padded with spaces to a multiple of 8 bytes as the Hugging Face writer
 * does, and the tensors follow back to back in the order given.
 *
 * {@link writeSafetensors} writes to a temporary name in the same directory,
 * flushes it to disk and renames it into place: a reader sees the complete
 * file or none. A full disk raises {@link DiskFullError} naming the file;
 * data that disagrees with its declared size raises {@link SafetensorsError}.
 * Either way the temporary file is removed.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { dtypeSize, isSafetensorsDtype, type SafetensorsDtype } from "./dtypes.ts";
import { DiskFullError, isNoSpaceError, MAX_HEADER_BYTES, SafetensorsError } from "./errors.ts";

/** A tensor's bytes: all at once, or as chunks produced on demand (sync or async). */
export type TensorData = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

/** A tensor to write. */
export interface SafetensorsTensorSpec {
  /** Tensor name (unique; not `__metadata__`). */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDtype;
  /** Shape, outermost dimension first. */
  readonly shape: readonly number[];
  /** The bytes, little-endian; their total length must be shape × dtype size. */
  readonly data: TensorData;
}

/** The layout {@link buildSafetensorsHeader} computed. */
export interface SafetensorsLayout {
  /** The 8-byte length prefix and the padded JSON header. */
  readonly header: Uint8Array;
  /** `[begin, end)` of each tensor in the data section, in the order given. */
  readonly offsets: readonly (readonly [number, number])[];
  /** Total file size. */
  readonly fileSize: number;
}

const encoder = new TextEncoder();

/**
 * Builds the header for tensors of the given dtypes and shapes, in order.
 * Throws {@link SafetensorsError} for a duplicate or reserved name, an
 * unknown dtype, a bad shape, metadata values that are not strings, or a
 * header larger than the readers' limit.
 */
export function buildSafetensorsHeader(
  tensors: readonly Pick<SafetensorsTensorSpec, "name" | "dtype" | "shape">[],
  metadata: Readonly<Record<string, string>> = {},
  path = "<memory>",
): SafetensorsLayout {
  const json: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new SafetensorsError("metadata", path, `__metadata__.${k} must be a string`);
      }
    }
    json["__metadata__"] = metadata;
  }
  const offsets: [number, number][] = [];
  let pos = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__") {
      throw new SafetensorsError("entry", path, "the name is reserved for metadata", t.name);
    }
    if (Object.hasOwn(json, t.name)) {
      throw new SafetensorsError("duplicate", path, "given twice", t.name);
    }
    if (!isSafetensorsDtype(t.dtype)) {
      throw new SafetensorsError("dtype", path, `unknown dtype ${JSON.stringify(t.dtype)}`, t.name);
    }
    let n = dtypeSize(t.dtype);
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) {
        throw new SafetensorsError(
          "shape",
          path,
          `shape ${JSON.stringify(t.shape)} must hold non-negative integers`,
          t.name,
        );
      }
      n *= d;
    }
    if (!Number.isSafeInteger(n)) {
      throw new SafetensorsError(
        "shape",
        path,
        `shape ${JSON.stringify(t.shape)} is too large`,
        t.name,
      );
    }
    offsets.push([pos, pos + n]);
    json[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [pos, pos + n] };
    pos += n;
  }
  const text = encoder.encode(JSON.stringify(json));
  const len = Math.ceil(text.length / 8) * 8;
  if (len > MAX_HEADER_BYTES) {
    throw new SafetensorsError(
      "header_size",
      path,
      `header would be ${len} bytes, over the ${MAX_HEADER_BYTES}-byte limit readers accept`,
    );
  }
  const header = new Uint8Array(8 + len).fill(0x20);
  new DataView(header.buffer).setBigUint64(0, BigInt(len), true);
  header.set(text, 8);
  return { header, offsets, fileSize: 8 + len + pos };
}

/** Serialises tensors held in memory into one safetensors byte array. */
export function serializeSafetensors(
  tensors: readonly (Omit<SafetensorsTensorSpec, "data"> & { data: Uint8Array })[],
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const layout = buildSafetensorsHeader(tensors, metadata);
  const out = new Uint8Array(layout.fileSize);
  out.set(layout.header);
  tensors.forEach((t, i) => {
    const [begin, end] = layout.offsets[i]!;
    if (t.data.length !== end - begin) {
      throw new SafetensorsError(
        "data",
        "<memory>",
        `${t.data.length} bytes given, ${t.dtype} ${JSON.stringify(t.shape)} needs ${end - begin}`,
        t.name,
      );
    }
    out.set(t.data, layout.header.length + begin);
  });
  return out;
}

/** Options for {@link writeSafetensors}. */
export interface WriteSafetensorsOptions {
  /** `__metadata__` entries. */
  metadata?: Readonly<Record<string, string>>;
  /** Called with the number of bytes each time some are written. */
  onBytes?: (n: number) => void;
  /** Stops the write (the temporary file is removed and the reason thrown). */
  signal?: AbortSignal;
  /** Flush the file to disk before renaming it into place (default `true`). */
  sync?: boolean;
}

/** What {@link writeSafetensors} wrote. */
export interface WrittenFile {
  /** The final path. */
  readonly path: string;
  /** Bytes in the file. */
  readonly size: number;
  /** SHA-256 of the whole file, hex. */
  readonly sha256: string;
}

/** Largest piece handed to one `write` call, so progress and aborts stay responsive. */
const MAX_WRITE = 16 << 20;
/** Small chunks are gathered into a buffer of this size before writing. */
const GATHER = 1 << 20;

/**
 * A file written through a gather buffer, hashing what it writes, that turns
 * ENOSPC into {@link DiskFullError}. Used for every file the converter
 * writes.
 */
export class HashingFileSink {
  readonly #file: Deno.FsFile;
  readonly #hash = createHash("sha256");
  readonly #buf = new Uint8Array(GATHER);
  #fill = 0;
  #written = 0;

  /** Wraps an open file; `path` names the final file in errors. */
  constructor(
    file: Deno.FsFile,
    readonly path: string,
    readonly onBytes?: (n: number) => void,
    readonly signal?: AbortSignal,
  ) {
    this.#file = file;
  }

  /** Bytes accepted so far. */
  get written(): number {
    return this.#written + this.#fill;
  }

  /** Appends `data` (a view; it is consumed before this resolves). */
  async write(data: Uint8Array): Promise<void> {
    if (data.length < GATHER / 4) {
      if (this.#fill + data.length > GATHER) await this.flush();
      this.#buf.set(data, this.#fill);
      this.#fill += data.length;
      return;
    }
    await this.flush();
    for (let off = 0; off < data.length; off += MAX_WRITE) {
      await this.#writeAll(data.subarray(off, Math.min(data.length, off + MAX_WRITE)));
    }
  }

  /** Writes out the gather buffer. */
  async flush(): Promise<void> {
    if (this.#fill === 0) return;
    const n = this.#fill;
    this.#fill = 0;
    await this.#writeAll(this.#buf.subarray(0, n));
  }

  /** The hex SHA-256 of everything written; call once, after {@link flush}. */
  digest(): string {
    return this.#hash.digest("hex");
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    this.signal?.throwIfAborted();
    this.#hash.update(chunk);
    let off = 0;
    try {
      while (off < chunk.length) off += await this.#file.write(chunk.subarray(off));
    } catch (e) {
      if (isNoSpaceError(e)) {
        throw new DiskFullError(
          this.path,
          `the disk filled after ${this.#written + off} bytes; free some space and rerun`,
          e,
        );
      }
      throw e;
    }
    this.#written += chunk.length;
    this.onBytes?.(chunk.length);
  }
}

/** A unique temporary name beside `path`, recognised by {@link isTemporaryName}. */
export function temporaryName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** Whether a file name was made by {@link temporaryName}. */
export function isTemporaryName(name: string): boolean {
  return /\.tmp-\d+-[0-9a-f]{8}$/.test(name);
}

/**
 * Writes `path` through a temporary file renamed into place: `fill` writes
 * the content into the sink. On any error (or abort) the temporary file is
 * removed and the error rethrown; ENOSPC becomes {@link DiskFullError}.
 */
export async function writeFileAtomic(
  path: string,
  fill: (sink: HashingFileSink) => Promise<void>,
  options: Pick<WriteSafetensorsOptions, "onBytes" | "signal" | "sync"> = {},
): Promise<WrittenFile> {
  options.signal?.throwIfAborted();
  const tmp = temporaryName(path);
  let file: Deno.FsFile | undefined;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    const sink = new HashingFileSink(file, path, options.onBytes, options.signal);
    await fill(sink);
    await sink.flush();
    if (options.sync ?? true) await syncData(file, path);
    file.close();
    file = undefined;
    await Deno.rename(tmp, path);
    return { path, size: sink.written, sha256: sink.digest() };
  } catch (e) {
    try {
      file?.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    if (isNoSpaceError(e)) throw new DiskFullError(path, "free some space and rerun", e);
    throw e;
  }
}

async function syncData(file: Deno.FsFile, path: string): Promise<void> {
  try {
    await file.syncData();
  } catch (e) {
    if (isNoSpaceError(e)) throw new DiskFullError(path, "flushing to disk failed", e);
    throw e;
  }
}

/**
 * Writes a safetensors file, streaming each tensor's data after the header,
 * to a temporary name renamed into place. Returns the size and SHA-256 of
 * what was written. Throws {@link SafetensorsError} (kind `data`) when a
 * tensor's data is not exactly shape × dtype bytes, {@link DiskFullError} on
 * a full disk, and the abort reason when `signal` fires; the temporary file
 * is removed in every case.
 */
export function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensorSpec[],
  options: WriteSafetensorsOptions = {},
): Promise<WrittenFile> {
  const layout = buildSafetensorsHeader(tensors, options.metadata, path);
  return writeFileAtomic(path, async (sink) => {
    await sink.write(layout.header);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const [begin, end] = layout.offsets[i]!;
      const want = end - begin;
      let got = 0;
      const chunks = t.data instanceof Uint8Array ? [t.data] : t.data;
      for await (const chunk of chunks) {
        got += chunk.length;
        if (got > want) break;
        await sink.write(chunk);
      }
      if (got !== want) {
        throw new SafetensorsError(
          "data",
          path,
          `${got > want ? "more than " : ""}${got} bytes given, ${t.dtype} ${
            JSON.stringify(t.shape)
          } needs ${want}`,
          t.name,
        );
      }
    }
  }, options);
}
