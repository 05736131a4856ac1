/**
 * Read-only access to large model files. {@link MappedFile} memory-maps a file
 * through the system C library (`Deno.dlopen`, so it needs `--allow-ffi`) and
 * hands out zero-copy `Uint8Array` views that can go straight to
 * `GPUQueue.writeBuffer`. {@link FileReader} is the fallback without FFI: it
 * reads through `Deno.FsFile`, one copy per read. Both implement
 * {@link ByteSource}; {@link openFile} picks one.
 *
 * ```ts
 * import { openFile, openMapped } from "./mmap.ts";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([1, 2, 3, 4]));
 *
 * // Needs --allow-ffi; throws FfiUnavailableError saying so otherwise.
 * using mapped = openMapped(path);
 * console.log(mapped.view(1, 2)); // Uint8Array(2) [ 2, 3 ]
 *
 * // Works with --allow-read alone: maps when it can, else reads.
 * using source = openFile(path);
 * console.log(await source.read(0, 4));
 * ```
 *
 * @module
 */

import {
  type Advice,
  FfiUnavailableError,
  type Libc,
  libcUnavailableReason,
  loadLibc,
  NativeError,
} from "./_libc.ts";

export { type Advice, FfiUnavailableError, NativeError };

/**
 * A read-only file of known size, read by byte range. Implemented by
 * {@link MappedFile} (synchronous, zero-copy) and {@link FileReader}
 * (asynchronous, one copy per read). Offsets are `number | bigint` so that
 * callers holding GGUF `u64` offsets need not convert; both must stay below
 * 2^53.
 */
export interface ByteSource extends Disposable {
  /** The path the source was opened with. */
  readonly path: string;
  /** The file size in bytes at open time. */
  readonly size: number;
  /**
   * Bytes `[offset, offset + length)`. Throws `RangeError` when the range is
   * not inside the file, `Deno.errors.BadResource` after {@link close}.
   */
  read(offset: number | bigint, length: number): Uint8Array | Promise<Uint8Array>;
  /** Releases the file. Idempotent. */
  close(): void;
}

/**
 * A file mapped read-only into memory (`mmap` with `PROT_READ`, `MAP_SHARED`).
 *
 * Views share one `ArrayBuffer` over the whole mapping. {@link close} detaches
 * that buffer before unmapping, so views handed out earlier become empty
 * (length 0) instead of pointing at unmapped memory, which would crash the
 * process. A mapping that is dropped without `close()` is unmapped when its
 * buffer and every view of it have been garbage collected.
 *
 * @example
 * ```ts
 * import { MappedFile } from "./mmap.ts";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new TextEncoder().encode("experts"));
 * using file = MappedFile.open(path);
 * file.advise(0, file.size, "willneed");
 * console.log(new TextDecoder().decode(file.view(0, 6))); // "expert"
 * ```
 */
export class MappedFile implements ByteSource {
  /** The path the file was opened with. */
  readonly path: string;
  /** The file size in bytes at open time; the mapping covers exactly this. */
  readonly size: number;
  readonly #lib: Libc;
  readonly #fd: number;
  // null for an empty file: mmap rejects length 0.
  readonly #ptr: Deno.PointerObject | null;
  #buffer: ArrayBuffer;
  #closed = false;

  private constructor(
    lib: Libc,
    path: string,
    fd: number,
    size: number,
    ptr: Deno.PointerObject | null,
  ) {
    this.#lib = lib;
    this.path = path;
    this.#fd = fd;
    this.size = size;
    this.#ptr = ptr;
    this.#buffer = ptr === null
      ? new ArrayBuffer(0)
      : Deno.UnsafePointerView.getArrayBuffer(ptr, size);
    leaks.register(this.#buffer, { lib, path, fd, size, ptr }, this.#buffer);
  }

  /**
   * Maps `path` read-only. Throws `Deno.errors.NotFound` (message names the
   * path) when it does not exist, `Deno.errors.PermissionDenied` when the OS
   * refuses, {@link NativeError} for other failures (a directory, out of
   * address space), {@link FfiUnavailableError} without `--allow-ffi`.
   */
  static open(path: string): MappedFile {
    const lib = loadLibc();
    const fd = lib.openRead(path);
    try {
      const size = lib.regularFileSize(fd, path);
      const ptr = size === 0 ? null : lib.mapRead(fd, size, path);
      return new MappedFile(lib, path, fd, size, ptr);
    } catch (e) {
      lib.close(fd, path);
      throw e;
    }
  }

  /** Whether {@link close} has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A zero-copy view of bytes `[offset, offset + length)`. Reading it may
   * fault pages in from disk. The view stays valid across
   * {@link dropPageCache} and becomes empty after {@link close}.
   */
  view(offset: number | bigint, length: number): Uint8Array {
    this.#assertOpen("view");
    const start = checkRange("MappedFile.view", this.path, this.size, offset, length);
    return new Uint8Array(this.#buffer, start, length);
  }

  /** Same as {@link view}; here to satisfy {@link ByteSource}. */
  read(offset: number | bigint, length: number): Uint8Array {
    return this.view(offset, length);
  }

  /**
   * Copies bytes `[offset, offset + target.length)` into `target` with the
   * `pread` system call instead of touching the mapping, and returns
   * `target`. The kernel's readahead then sees one large read rather than a
   * run of page faults, which can be faster for a cold, contiguous range.
   */
  pread(offset: number | bigint, target: Uint8Array): Uint8Array {
    this.#assertOpen("pread");
    const start = checkRange("MappedFile.pread", this.path, this.size, offset, target.length);
    this.#lib.preadFully(this.#fd, target, start, this.path);
    return target;
  }

  /**
   * Tells the kernel how `[offset, offset + length)` will be used
   * (`madvise`): `"willneed"` starts reading it in, `"dontneed"` drops this
   * process's page mappings (the data stays in the OS page cache; see
   * {@link dropPageCache}), `"random"` turns readahead off, `"sequential"`
   * makes it aggressive, `"normal"` restores the default. The start is
   * rounded down to a page boundary, so neighbouring bytes in the same pages
   * are advised too.
   */
  advise(offset: number | bigint, length: number, advice: Advice): void {
    this.#assertOpen("advise");
    const start = checkRange("MappedFile.advise", this.path, this.size, offset, length);
    const page = this.#pageRange(start, length);
    if (page === undefined) return;
    this.#lib.madvise(page.ptr, page.length, advice, this.path);
  }

  /**
   * Makes the next access to every byte of the file cold (read from disk):
   * replaces the mapping with a fresh one at the same address, so this
   * process no longer maps any page, then asks the kernel to evict the
   * file's pages from its page cache (Linux: `posix_fadvise(DONTNEED)`).
   *
   * Replacing in place (`mmap` with `MAP_FIXED`) instead of munmap + mmap
   * keeps every view handed out valid. Pages another process maps, or that
   * are dirty, stay cached. On macOS eviction is best effort: there is no
   * `posix_fadvise`, and `msync(MS_INVALIDATE)` is used instead.
   */
  dropPageCache(): void {
    this.#assertOpen("dropPageCache");
    if (this.#ptr !== null) this.#lib.mapRead(this.#fd, this.size, this.path, this.#ptr);
    this.#lib.dropFileCache(this.#fd, this.#ptr, this.size, this.path);
  }

  /**
   * How many bytes of `[offset, offset + length)` are in memory now
   * (`mincore`, page granular), whether or not this process has touched
   * them. Allocates one byte per page of the range.
   */
  residentBytes(offset: number | bigint, length: number): number {
    this.#assertOpen("residentBytes");
    const start = checkRange("MappedFile.residentBytes", this.path, this.size, offset, length);
    const page = this.#pageRange(start, length);
    if (page === undefined) return 0;
    const pages = this.#lib.mincore(page.ptr, page.length, this.path);
    const pageSize = this.#lib.pageSize;
    const end = start + length;
    let resident = 0;
    for (let i = 0; i < pages.length; i++) {
      if (((pages[i] ?? 0) & 1) === 0) continue;
      const pageStart = page.start + i * pageSize;
      resident += Math.min(end, pageStart + pageSize) - Math.max(start, pageStart);
    }
    return resident;
  }

  /**
   * Unmaps the file and closes its descriptor. Idempotent. Views handed out
   * earlier become empty; later calls of any method except `close` throw
   * `Deno.errors.BadResource`.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    leaks.unregister(this.#buffer);
    // Detach (transfer to a zero-length buffer) before unmapping: afterwards
    // every view over the old buffer reads as empty rather than faulting.
    this.#buffer.transfer(0);
    this.#buffer = new ArrayBuffer(0);
    try {
      if (this.#ptr !== null) this.#lib.unmap(this.#ptr, this.size, this.path);
    } finally {
      this.#lib.close(this.#fd, this.path);
    }
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #assertOpen(what: string): void {
    if (this.#closed) {
      throw new Deno.errors.BadResource(
        `MappedFile.${what}: '${this.path}' is closed; open it again with MappedFile.open()`,
      );
    }
  }

  // The page-aligned pointer and length covering [start, start + length).
  #pageRange(start: number, length: number):
    | { ptr: Deno.PointerObject; start: number; length: number }
    | undefined {
    if (this.#ptr === null || length === 0) return undefined;
    const pageStart = start - (start % this.#lib.pageSize);
    const ptr = Deno.UnsafePointer.create(Deno.UnsafePointer.value(this.#ptr) + BigInt(pageStart));
    if (ptr === null) return undefined;
    return { ptr, start: pageStart, length: start + length - pageStart };
  }
}

interface Mapping {
  lib: Libc;
  path: string;
  fd: number;
  size: number;
  ptr: Deno.PointerObject | null;
}

// Keyed on the whole-mapping ArrayBuffer, not on the MappedFile: every view
// holds the buffer, so it is collected only when no view can reach the memory.
const leaks = new FinalizationRegistry<Mapping>((m) => {
  try {
    if (m.ptr !== null) m.lib.unmap(m.ptr, m.size, m.path);
    m.lib.close(m.fd, m.path);
  } catch {
    // Nobody is left to report to; the worst case is a leaked descriptor.
  }
});

/**
 * The fallback when FFI is unavailable: reads byte ranges through
 * `Deno.FsFile` (seek + read until full), one copy per read. Needs only
 * `--allow-read`. Concurrent {@link read} calls are queued, since they share
 * the file position.
 *
 * @example
 * ```ts
 * import { FileReader } from "./mmap.ts";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([9, 8, 7]));
 * using file = FileReader.open(path);
 * console.log(await file.read(1, 2)); // Uint8Array(2) [ 8, 7 ]
 * ```
 */
export class FileReader implements ByteSource {
  /** The path the file was opened with. */
  readonly path: string;
  /** The file size in bytes at open time. */
  readonly size: number;
  #file: Deno.FsFile | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #pending = 0;

  private constructor(path: string, file: Deno.FsFile, size: number) {
    this.path = path;
    this.#file = file;
    this.size = size;
  }

  /**
   * Opens `path` for reading. Throws `Deno.errors.NotFound` naming the path
   * when it does not exist, and an `Error` when it is not a regular file.
   */
  static open(path: string): FileReader {
    const file = Deno.openSync(path, { read: true });
    try {
      const stat = file.statSync();
      if (!stat.isFile) throw new Error(`cannot read '${path}': not a regular file`);
      return new FileReader(path, file, stat.size);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Whether {@link close} has been called. */
  get closed(): boolean {
    return this.#file === undefined;
  }

  /** A fresh copy of bytes `[offset, offset + length)`. */
  read(offset: number | bigint, length: number): Promise<Uint8Array> {
    const file = this.#open("read");
    const start = checkRange("FileReader.read", this.path, this.size, offset, length);
    this.#pending++;
    const result = this.#queue.then(async () => {
      try {
        const out = new Uint8Array(length);
        await file.seek(start, Deno.SeekMode.Start);
        for (let done = 0; done < length;) {
          const n = await file.read(out.subarray(done));
          if (n === null) throw this.#truncated(start + done);
          done += n;
        }
        return out;
      } finally {
        this.#pending--;
      }
    });
    this.#queue = result.catch(() => {});
    return result;
  }

  /**
   * Synchronous {@link read}. Throws while an asynchronous read is pending,
   * because both move the same file position.
   */
  readSync(offset: number | bigint, length: number): Uint8Array {
    const file = this.#open("readSync");
    const start = checkRange("FileReader.readSync", this.path, this.size, offset, length);
    if (this.#pending > 0) {
      throw new Error(
        `FileReader.readSync '${this.path}': ${this.#pending} read() calls still pending; await them`,
      );
    }
    const out = new Uint8Array(length);
    file.seekSync(start, Deno.SeekMode.Start);
    for (let done = 0; done < length;) {
      const n = file.readSync(out.subarray(done));
      if (n === null) throw this.#truncated(start + done);
      done += n;
    }
    return out;
  }

  /** Closes the file. Idempotent; later reads throw `Deno.errors.BadResource`. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #open(what: string): Deno.FsFile {
    if (this.#file === undefined) {
      throw new Deno.errors.BadResource(
        `FileReader.${what}: '${this.path}' is closed; open it again with FileReader.open()`,
      );
    }
    return this.#file;
  }

  #truncated(at: number): Error {
    return new Error(
      `FileReader '${this.path}': end of file at byte ${at}; was it truncated while open?`,
    );
  }
}

/**
 * Why {@link openMapped} would fail in this process (no `--allow-ffi`, an OS
 * other than Linux or macOS, the C library did not load), or `undefined`
 * when it can map. Never prompts for permission. Useful for logging which
 * path {@link openFile} took.
 */
export function mmapUnavailableReason(): string | undefined {
  return libcUnavailableReason();
}

/**
 * Maps `path` read-only; same as {@link MappedFile.open}. Without FFI
 * permission it throws {@link FfiUnavailableError} whose message says to run
 * with `--allow-ffi` (or `-A`), or to use {@link openFile} for the
 * `Deno.FsFile` fallback.
 */
export function openMapped(path: string): MappedFile {
  return MappedFile.open(path);
}

/** Options for {@link openFile}. */
export interface OpenFileOptions {
  /**
   * Map the file when FFI is available (default `true`). `false` always
   * gives a {@link FileReader}, e.g. to compare the two paths.
   */
  preferMmap?: boolean;
}

/**
 * Opens `path` as a {@link ByteSource}: a {@link MappedFile} when memory
 * mapping is available and preferred, otherwise a {@link FileReader} (the
 * documented fallback without `--allow-ffi`, or on other OSes). Check
 * `instanceof MappedFile` for zero-copy views, or
 * {@link mmapUnavailableReason} for why it fell back. Errors opening the
 * file itself (missing, a directory) are not masked by the fallback.
 */
export function openFile(path: string, options: OpenFileOptions = {}): ByteSource {
  if ((options.preferMmap ?? true) && libcUnavailableReason() === undefined) {
    return MappedFile.open(path);
  }
  return FileReader.open(path);
}

// Validates a byte range and returns its start as a number.
function checkRange(
  what: string,
  path: string,
  size: number,
  offset: number | bigint,
  length: number,
): number {
  const start =
    typeof offset === "bigint" && offset >= 0n && offset <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(offset)
      : offset;
  if (typeof start !== "number" || !Number.isSafeInteger(start) || start < 0) {
    throw new RangeError(
      `${what} '${path}': offset must be a non-negative integer below 2^53, got ${offset}`,
    );
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`${what} '${path}': length must be a non-negative integer, got ${length}`);
  }
  if (start + length > size) {
    throw new RangeError(
      `${what} '${path}': bytes [${start}, ${
        start + length
      }) (offset ${start}, length ${length}) ` +
        `are outside the file (size ${size} bytes)`,
    );
  }
  return start;
}
