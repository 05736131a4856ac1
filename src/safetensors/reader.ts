/**
 * safetensors reader: an 8-byte little-endian header length, a JSON header
 * (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, …,
 * "__metadata__": {string: string}}`), then the tensor bytes, back to back.
 *
 * The header is checked as strictly as the Hugging Face implementation does:
 * a header length larger than the file or than {@link MAX_HEADER_BYTES},
 * JSON that is invalid or not an object, an unknown dtype, a byte length
 * that disagrees with shape × dtype, offsets that overlap, leave a gap, do
 * not start at 0 or do not end at the end of the file, and a name given
 * twice all raise a {@link SafetensorsError} naming the file and tensor.
 * Tensor bytes are then zero-copy views of the memory-mapped file.
 *
 * @example
 * ```ts
 * import { openSafetensors } from "./reader.ts";
 * import { writeSafetensors } from "./writer.ts";
 *
 * const path = `${await Deno.makeTempDir()}/t.safetensors`;
 * await writeSafetensors(path, [{ name: "x", dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) }]);
 * using file = openSafetensors(path);
 * console.log(file.bytes("x")); // Uint8Array(3) [ 1, 2, 3 ]
 * ```
 *
 * @module
 */

import { type ByteSource, type FileReader, MappedFile, openFile } from "../../ffi/mmap.ts";
import { dtypeSize, isSafetensorsDtype, type SafetensorsDtype } from "./dtypes.ts";
import { MAX_HEADER_BYTES, SafetensorsError } from "./errors.ts";

/** One tensor of a safetensors file. */
export interface SafetensorsTensor {
  /** The tensor name. */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDtype;
  /** Shape, outermost dimension first (row-major, as PyTorch orders it). */
  readonly shape: readonly number[];
  /** `[begin, end)` relative to the start of the data section, as stored. */
  readonly dataOffsets: readonly [number, number];
  /** Absolute byte offset of the tensor in the file. */
  readonly fileOffset: number;
  /** Bytes of data (`end - begin`). */
  readonly nBytes: number;
}

/** The parsed header of a safetensors file. */
export interface SafetensorsHeader {
  /** Path of the file (or `<memory>`). */
  readonly path: string;
  /** Size of the file in bytes. */
  readonly fileSize: number;
  /** Length of the JSON header (the 8-byte prefix's value). */
  readonly headerLength: number;
  /** Absolute offset of the data section: `8 + headerLength`. */
  readonly dataOffset: number;
  /** The tensors in header order. */
  readonly tensors: readonly SafetensorsTensor[];
  /** The tensors by name. */
  readonly tensorMap: ReadonlyMap<string, SafetensorsTensor>;
  /** The `__metadata__` entries (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The header length announced by the first 8 bytes, checked against the file and the cap. */
function headerLengthOf(prefix: Uint8Array, fileSize: number, path: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw new SafetensorsError(
      "truncated",
      path,
      `file is ${fileSize} bytes, too short for the 8-byte header length (truncated file?)`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(
      "header_size",
      path,
      `header length ${n} is larger than the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`,
    );
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new SafetensorsError(
      "header_size",
      path,
      `header length ${len} runs past the end of the ${fileSize}-byte file (truncated file?)`,
    );
  }
  if (len < 2) {
    throw new SafetensorsError("json", path, `header length ${len} is too short for a JSON object`);
  }
  return len;
}

/**
 * The keys of the top-level object of `text`, in order, duplicates kept.
 * `text` must already be known to be valid JSON whose value is an object:
 * `JSON.parse` keeps only the last of duplicated keys, so they are found here.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i++;
        else if (d === 0x22) break;
      }
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(start, i + 1)) as string);
        expectKey = false;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x2c /* , */ && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Parses and checks a safetensors header from `bytes`: the whole file, or at
 * least its first `8 + headerLength` bytes when `fileSize` gives the size of
 * the whole file. Throws {@link SafetensorsError} for anything malformed.
 */
export function parseSafetensorsHeader(
  bytes: Uint8Array,
  path = "<memory>",
  fileSize: number = bytes.length,
): SafetensorsHeader {
  const headerLength = headerLengthOf(bytes, fileSize, path);
  if (bytes.length < 8 + headerLength) {
    throw new SafetensorsError(
      "truncated",
      path,
      `the header needs ${8 + headerLength} bytes but only ${bytes.length} were given`,
    );
  }
  const raw = bytes.subarray(8, 8 + headerLength);
  if (raw[0] !== 0x7b) {
    throw new SafetensorsError(
      "json",
      path,
      `header must start with "{", found byte 0x${raw[0]!.toString(16).padStart(2, "0")}`,
    );
  }
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new SafetensorsError("json", path, "header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError("json", path, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) {
    throw new SafetensorsError("json", path, "header JSON must be an object");
  }
  const seen = new Set<string>();
  for (const key of topLevelKeys(text)) {
    if (seen.has(key)) {
      throw new SafetensorsError("duplicate", path, "appears twice in the header", key);
    }
    seen.add(key);
  }

  const dataOffset = 8 + headerLength;
  const dataSize = fileSize - dataOffset;
  let metadata: Record<string, string> = {};
  const tensors: SafetensorsTensor[] = [];
  const tensorMap = new Map<string, SafetensorsTensor>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(entry, path);
      continue;
    }
    const t = parseEntry(name, entry, path, dataOffset);
    if (t.dataOffsets[1] > dataSize) {
      throw new SafetensorsError(
        "offsets",
        path,
        `data_offsets [${t.dataOffsets}] end past the ${dataSize}-byte data section (file truncated?)`,
        name,
      );
    }
    tensors.push(t);
    tensorMap.set(name, t);
  }
  checkCoverage(tensors, dataSize, path);
  return { path, fileSize, headerLength, dataOffset, tensors, tensorMap, metadata };
}

function parseMetadata(entry: unknown, path: string): Record<string, string> {
  if (!isPlainObject(entry)) {
    throw new SafetensorsError(
      "metadata",
      path,
      `__metadata__ must be an object of strings, found ${describe(entry)}`,
    );
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(
        "metadata",
        path,
        `__metadata__.${k} must be a string, found ${describe(v)}`,
      );
    }
    out[k] = v;
  }
  return out;
}

function parseEntry(
  name: string,
  entry: unknown,
  path: string,
  dataOffset: number,
): SafetensorsTensor {
  if (!isPlainObject(entry)) {
    throw new SafetensorsError(
      "entry",
      path,
      `entry must be an object {dtype, shape, data_offsets}, found ${describe(entry)}`,
      name,
    );
  }
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isSafetensorsDtype(dtype)) {
    throw new SafetensorsError("dtype", path, `unknown dtype ${describe(dtype)}`, name);
  }
  if (!Array.isArray(shape)) {
    throw new SafetensorsError(
      "shape",
      path,
      `shape must be a list, found ${describe(shape)}`,
      name,
    );
  }
  let nElements = 1;
  for (const d of shape) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      throw new SafetensorsError(
        "shape",
        path,
        `shape ${describe(shape)} must hold non-negative integers`,
        name,
      );
    }
    nElements *= d;
  }
  const nBytes = nElements * dtypeSize(dtype);
  if (!Number.isSafeInteger(nBytes)) {
    throw new SafetensorsError("shape", path, `shape ${describe(shape)} is too large`, name);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => typeof o === "number" && Number.isSafeInteger(o) && o >= 0)
  ) {
    throw new SafetensorsError(
      "offsets",
      path,
      `data_offsets must be [begin, end] with non-negative integers, found ${describe(offsets)}`,
      name,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) {
    throw new SafetensorsError(
      "offsets",
      path,
      `data_offsets [${begin}, ${end}] end before they begin`,
      name,
    );
  }
  if (end - begin !== nBytes) {
    throw new SafetensorsError(
      "offsets",
      path,
      `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} ${
        JSON.stringify(shape)
      } needs ${nBytes}`,
      name,
    );
  }
  return {
    name,
    dtype,
    shape: shape as number[],
    dataOffsets: [begin, end],
    fileOffset: dataOffset + begin,
    nBytes,
  };
}

/** Tensors must tile the data section exactly: from 0, no gaps, no overlaps, to the end. */
function checkCoverage(tensors: readonly SafetensorsTensor[], dataSize: number, path: string) {
  const sorted = [...tensors].sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let expected = 0;
  let prev: SafetensorsTensor | undefined;
  for (const t of sorted) {
    const [begin] = t.dataOffsets;
    if (begin < expected) {
      throw new SafetensorsError(
        "offsets",
        path,
        `data_offsets [${t.dataOffsets}] overlap tensor ${prev!.name} [${prev!.dataOffsets}]`,
        t.name,
      );
    }
    if (begin > expected) {
      throw new SafetensorsError(
        "offsets",
        path,
        `data_offsets [${t.dataOffsets}] leave a gap: the previous tensor ends at ${expected}`,
        t.name,
      );
    }
    expected = t.dataOffsets[1];
    prev = t;
  }
  if (expected !== dataSize) {
    throw new SafetensorsError(
      "offsets",
      path,
      `tensors cover ${expected} bytes of the ${dataSize}-byte data section: ${
        dataSize - expected
      } bytes belong to no tensor`,
    );
  }
}

function readFully(file: Deno.FsFile, buf: Uint8Array, at: number): number {
  file.seekSync(at, Deno.SeekMode.Start);
  let got = 0;
  while (got < buf.length) {
    const n = file.readSync(buf.subarray(got));
    if (n === null || n === 0) break;
    got += n;
  }
  return got;
}

/**
 * Reads and checks the header of a safetensors file (reads only the header,
 * not the tensor data). Throws `Deno.errors.NotFound` naming the path when
 * it does not exist, {@link SafetensorsError} when it is malformed.
 */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`safetensors file not found: ${path}`);
    }
    throw e;
  }
  try {
    const fileSize = file.statSync().size;
    const prefix = new Uint8Array(8);
    readFully(file, prefix, 0);
    const len = headerLengthOf(prefix, fileSize, path);
    const buf = new Uint8Array(8 + len);
    buf.set(prefix);
    readFully(file, buf.subarray(8), 8);
    return parseSafetensorsHeader(buf, path, fileSize);
  } finally {
    file.close();
  }
}

/** Options for {@link openSafetensors}. */
export interface OpenSafetensorsOptions {
  /** Map the file when FFI is available (default `true`); otherwise each view is a copy. */
  preferMmap?: boolean;
}

/**
 * An open safetensors file: its checked header, and the bytes of each tensor
 * as zero-copy views of the memory-mapped file (copies when mapping is not
 * available). Views become empty after {@link close}.
 */
export class SafetensorsFile {
  /** The path the file was opened with. */
  readonly path: string;
  /** The checked header. */
  readonly header: SafetensorsHeader;
  readonly #source: ByteSource;

  private constructor(path: string, header: SafetensorsHeader, source: ByteSource) {
    this.path = path;
    this.header = header;
    this.#source = source;
  }

  /**
   * Opens and checks `path`. Throws `Deno.errors.NotFound` naming the path
   * when it does not exist, {@link SafetensorsError} when it is malformed.
   */
  static open(path: string, options: OpenSafetensorsOptions = {}): SafetensorsFile {
    const header = readSafetensorsHeader(path);
    const source = openFile(path, { preferMmap: options.preferMmap ?? true });
    if (source.size !== header.fileSize) {
      source.close();
      throw new SafetensorsError(
        "truncated",
        path,
        `file changed size while opening (${header.fileSize} → ${source.size} bytes)`,
      );
    }
    return new SafetensorsFile(path, header, source);
  }

  /** The tensors in header order. */
  get tensors(): readonly SafetensorsTensor[] {
    return this.header.tensors;
  }

  /** The `__metadata__` entries. */
  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** Whether the file holds a tensor called `name`. */
  has(name: string): boolean {
    return this.header.tensorMap.has(name);
  }

  /** The tensor called `name`; throws a {@link SafetensorsError} (kind `missing`) listing what is there. */
  tensor(name: string): SafetensorsTensor {
    const t = this.header.tensorMap.get(name);
    if (t === undefined) {
      const names = [...this.header.tensorMap.keys()];
      const shown = names.slice(0, 8).join(", ") + (names.length > 8 ? ", …" : "");
      throw new SafetensorsError(
        "missing",
        this.path,
        `not in the file (it holds: ${shown || "nothing"})`,
        name,
      );
    }
    return t;
  }

  /** The bytes of a tensor: a zero-copy view when the file is mapped. */
  bytes(tensor: string | SafetensorsTensor): Uint8Array {
    const t = typeof tensor === "string" ? this.tensor(tensor) : tensor;
    return this.range(t.fileOffset, t.nBytes);
  }

  /** Bytes `[offset, offset + length)` of the file: a zero-copy view when mapped. */
  range(offset: number, length: number): Uint8Array {
    const s = this.#source;
    if (s instanceof MappedFile) return s.view(offset, length);
    return (s as FileReader).readSync(offset, length);
  }

  /** The mapped file, when the file is memory-mapped (for `advise`, `pread`). */
  get mapped(): MappedFile | undefined {
    return this.#source instanceof MappedFile ? this.#source : undefined;
  }

  /** Releases the file. Idempotent; views handed out become empty. */
  close(): void {
    this.#source.close();
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens and checks a safetensors file; same as {@link SafetensorsFile.open}. */
export function openSafetensors(path: string, options?: OpenSafetensorsOptions): SafetensorsFile {
  return SafetensorsFile.open(path, options);
}
