/**
 * Internal: the few system C library calls that `mmap.ts` needs, bound through
 * `Deno.dlopen`, with the per-OS constants and errno decoding. Every wrapper
 * here either succeeds or throws an error that names the call and the file.
 *
 * Linux (glibc `libc.so.6`) is tested; macOS (`libSystem.B.dylib`) follows the
 * headers of the macOS SDK but has not been run.
 *
 * @module
 */

/** Access-pattern hints accepted by {@link Libc.madvise}. */
export type Advice = "normal" | "random" | "sequential" | "willneed" | "dontneed";

/**
 * Raised when a C library call fails with an errno that has no closer Deno
 * error class (ENOENT maps to `Deno.errors.NotFound`, EACCES and EPERM to
 * `Deno.errors.PermissionDenied`; those carry a `NativeError` as `cause`).
 */
export class NativeError extends Error {
  /** The C function that failed, e.g. `"mmap"`. */
  readonly syscall: string;
  /** The raw errno value (platform-specific numbering). */
  readonly errno: number;
  /** The symbolic errno name where known (`"ENOMEM"`), else `undefined`. */
  readonly code: string | undefined;
  /** The file the call was about. */
  readonly path: string;

  /** Builds the error; `message` should already name the call and the path. */
  constructor(
    message: string,
    syscall: string,
    errno: number,
    code: string | undefined,
    path: string,
  ) {
    super(message);
    this.name = "NativeError";
    this.syscall = syscall;
    this.errno = errno;
    this.code = code;
    this.path = path;
  }
}

/**
 * Raised when memory mapping cannot be used at all in this process: FFI
 * permission is missing, the OS is not Linux or macOS, or the C library did
 * not load. The message says what to do.
 */
export class FfiUnavailableError extends Error {
  /** Builds the error with a message that says how to fix it. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FfiUnavailableError";
  }
}

// `open` and `fcntl` are variadic in C. We only ever pass the named arguments
// (no `mode`, no fcntl), because on Apple arm64 variadic arguments travel on
// the stack and an FFI call that passed them in registers would be misread.
const symbols = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  msync: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  mincore: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  getpagesize: { parameters: [], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  // glibc and musl expose errno through `__errno_location`, Darwin through
  // `__error`; each is absent on the other, hence optional.
  __errno_location: { parameters: [], result: "pointer", optional: true },
  __error: { parameters: [], result: "pointer", optional: true },
  // macOS has no posix_fadvise; see Libc.dropFileCache.
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32", optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

type Os = "linux" | "darwin";

interface Constants {
  readonly O_RDONLY: number;
  readonly O_CLOEXEC: number;
  readonly SEEK_END: number;
  readonly PROT_READ: number;
  readonly MAP_SHARED: number;
  readonly MAP_FIXED: number;
  readonly MS_INVALIDATE: number;
  readonly POSIX_FADV_DONTNEED: number;
  readonly MADV: Readonly<Record<Advice, number>>;
}

// Values from <fcntl.h>, <sys/mman.h>, <unistd.h>: Linux for x86_64 and
// aarch64 (the only Linux targets Deno ships), macOS from the SDK headers.
const CONSTANTS: Readonly<Record<Os, Constants>> = {
  linux: {
    O_RDONLY: 0,
    O_CLOEXEC: 0o2000000,
    SEEK_END: 2,
    PROT_READ: 1,
    MAP_SHARED: 1,
    MAP_FIXED: 0x10,
    MS_INVALIDATE: 2,
    POSIX_FADV_DONTNEED: 4,
    MADV: { normal: 0, random: 1, sequential: 2, willneed: 3, dontneed: 4 },
  },
  darwin: {
    O_RDONLY: 0,
    O_CLOEXEC: 0x1000000,
    SEEK_END: 2,
    PROT_READ: 1,
    MAP_SHARED: 1,
    MAP_FIXED: 0x10,
    MS_INVALIDATE: 2,
    POSIX_FADV_DONTNEED: -1, // no posix_fadvise on macOS
    MADV: { normal: 0, random: 1, sequential: 2, willneed: 3, dontneed: 4 },
  },
};

// errno values below 35 coincide on Linux and macOS; the ones that differ
// (EAGAIN, EOVERFLOW, …) are left to strerror alone.
const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  19: "ENODEV",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  27: "EFBIG",
};
const EINTR = 4;
const EISDIR = 21;

const LIBRARY_CANDIDATES: Readonly<Record<Os, readonly string[]>> = {
  // "libc.so" is musl's name; on glibc it is a linker script and fails to load.
  linux: ["libc.so.6", "libc.so"],
  darwin: ["/usr/lib/libSystem.B.dylib", "libSystem.B.dylib"],
};

const NO_FFI_HINT =
  "run deno with --allow-ffi (or -A) to memory-map model files, or open them with " +
  "openFile(path) from ffi/mmap.ts, which falls back to slower Deno.FsFile reads";

type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** The bound C library with typed, throwing wrappers. One per process. */
export class Libc {
  /** Which platform table the constants came from. */
  readonly os: Os;
  /** The VM page size in bytes (4 KiB on x86_64, 16 KiB on Apple arm64). */
  readonly pageSize: number;
  readonly #c: Constants;
  readonly #s: Symbols;
  readonly #errnoLocation: () => Deno.PointerValue;

  /** Binds `lib`; use {@link loadLibc} instead of calling this. */
  constructor(os: Os, lib: Deno.DynamicLibrary<typeof symbols>) {
    this.os = os;
    this.#c = CONSTANTS[os];
    this.#s = lib.symbols;
    const loc = this.#s.__errno_location ?? this.#s.__error;
    if (loc === null) {
      throw new FfiUnavailableError(
        "the C library exports neither __errno_location nor __error, so errors cannot be decoded",
      );
    }
    this.#errnoLocation = loc;
    this.pageSize = this.#s.getpagesize();
  }

  /** Opens `path` read-only (close-on-exec) and returns the descriptor. */
  openRead(path: string): number {
    const cpath = new TextEncoder().encode(path + "\0");
    for (;;) {
      const fd = this.#s.open(cpath, this.#c.O_RDONLY | this.#c.O_CLOEXEC);
      if (fd >= 0) return fd;
      const errno = this.errno();
      if (errno !== EINTR) throw this.error("open", path, errno);
    }
  }

  /** Closes `fd`; failures are reported, since they can hide lost I/O errors. */
  close(fd: number, path: string): void {
    // No EINTR retry: on Linux and macOS the descriptor is gone either way.
    if (this.#s.close(fd) !== 0) throw this.error("close", path, this.errno());
  }

  /**
   * Returns the size of the regular file behind `fd`. Rejects directories:
   * they open fine with O_RDONLY and report a meaningless size on some
   * filesystems, so a zero-length pread (EISDIR on directories, a no-op on
   * files) tells them apart without a struct stat layout per platform.
   */
  regularFileSize(fd: number, path: string): number {
    if (Number(this.#s.pread(fd, new Uint8Array(1), 0n, 0n)) < 0) {
      const errno = this.errno();
      if (errno === EISDIR) {
        throw new NativeError(
          `cannot map '${path}': it is a directory`,
          "pread",
          errno,
          "EISDIR",
          path,
        );
      }
      throw this.error("pread", path, errno);
    }
    const end = this.#s.lseek(fd, 0n, this.#c.SEEK_END);
    if (Number(end) < 0) throw this.error("lseek", path, this.errno());
    if (BigInt(end) > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(
        `'${path}' is ${end} bytes, beyond 2^53 bytes that a JS number can address`,
      );
    }
    return Number(end);
  }

  /**
   * Maps `size` bytes of `fd` read-only and shared. With `at`, replaces the
   * mapping already there in one step (MAP_FIXED) and checks it landed at the
   * same address.
   */
  mapRead(
    fd: number,
    size: number,
    path: string,
    at: Deno.PointerObject | null = null,
  ): Deno.PointerObject {
    const c = this.#c;
    const flags = c.MAP_SHARED | (at === null ? 0 : c.MAP_FIXED);
    const p = this.#s.mmap(at, BigInt(size), c.PROT_READ, flags, fd, 0n);
    // MAP_FAILED is (void *)-1.
    const value = Deno.UnsafePointer.value(p);
    if (p === null || value === 0xffff_ffff_ffff_ffffn) {
      throw this.error("mmap", path, this.errno());
    }
    if (at !== null && value !== Deno.UnsafePointer.value(at)) {
      throw new NativeError(
        `mmap '${path}' with MAP_FIXED moved the mapping`,
        "mmap",
        0,
        undefined,
        path,
      );
    }
    return p;
  }

  /** Unmaps `[ptr, ptr + size)`. */
  unmap(ptr: Deno.PointerObject, size: number, path: string): void {
    if (this.#s.munmap(ptr, BigInt(size)) !== 0) throw this.error("munmap", path, this.errno());
  }

  /** `madvise` on a page-aligned `ptr`. */
  madvise(ptr: Deno.PointerObject, length: number, advice: Advice, path: string): void {
    if (this.#s.madvise(ptr, BigInt(length), this.#c.MADV[advice]) !== 0) {
      throw this.error("madvise", path, this.errno());
    }
  }

  /**
   * Asks the kernel to drop the whole file from its page cache.
   *
   * Linux: posix_fadvise(POSIX_FADV_DONTNEED) over the whole file; pages that
   * are dirty or mapped by another process stay.
   *
   * macOS has no posix_fadvise and no unprivileged way to evict one file
   * (F_NOCACHE only stops future caching, and fcntl is variadic, see above);
   * msync(MS_INVALIDATE) on the mapping is the closest call and is best
   * effort, so its result is ignored.
   */
  dropFileCache(fd: number, ptr: Deno.PointerObject | null, size: number, path: string): void {
    const fadvise = this.#s.posix_fadvise;
    if (fadvise !== null) {
      // posix_fadvise returns the error number instead of setting errno.
      const err = fadvise(fd, 0n, 0n, this.#c.POSIX_FADV_DONTNEED);
      if (err !== 0) throw this.error("posix_fadvise", path, err);
    } else if (ptr !== null) {
      this.#s.msync(ptr, BigInt(size), this.#c.MS_INVALIDATE);
    }
  }

  /** `mincore` over a page-aligned `ptr`: one byte per page, bit 0 = resident. */
  mincore(ptr: Deno.PointerObject, length: number, path: string): Uint8Array {
    const pages = new Uint8Array(Math.ceil(length / this.pageSize));
    if (this.#s.mincore(ptr, BigInt(length), pages) !== 0) {
      throw this.error("mincore", path, this.errno());
    }
    return pages;
  }

  /**
   * Reads exactly `target.length` bytes at `offset` with `pread`, looping over
   * short reads (Linux caps one call near 2 GiB) and EINTR.
   */
  preadFully(fd: number, target: Uint8Array, offset: number, path: string): void {
    let done = 0;
    while (done < target.length) {
      const n = Number(
        this.#s.pread(
          fd,
          target.subarray(done),
          BigInt(target.length - done),
          BigInt(offset + done),
        ),
      );
      if (n > 0) {
        done += n;
      } else if (n === 0) {
        throw new NativeError(
          `pread '${path}': end of file at byte ${offset + done}, wanted ${
            target.length - done
          } more ` +
            `(was the file truncated while open?)`,
          "pread",
          0,
          undefined,
          path,
        );
      } else {
        const errno = this.errno();
        if (errno !== EINTR) throw this.error("pread", path, errno);
      }
    }
  }

  /**
   * The calling thread's errno. Read it straight after the failing call: the
   * only code between the two FFI calls is this JS, which makes no syscalls.
   */
  errno(): number {
    const p = this.#errnoLocation();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  }

  /** `strerror` text plus the symbolic name, e.g. `No such file or directory (ENOENT, errno 2)`. */
  describe(errno: number): string {
    const p = this.#s.strerror(errno);
    const text = p === null ? "unknown error" : Deno.UnsafePointerView.getCString(p);
    const name = ERRNO_NAMES[errno];
    return `${text} (${name === undefined ? "" : name + ", "}errno ${errno})`;
  }

  /** Builds the error for a failed call, mapped onto Deno's classes where one fits. */
  error(syscall: string, path: string, errno: number): Error {
    const code = ERRNO_NAMES[errno];
    const message = `${syscall} '${path}' failed: ${this.describe(errno)}`;
    const native = new NativeError(message, syscall, errno, code, path);
    if (code === "ENOENT") return new Deno.errors.NotFound(message, { cause: native });
    if (code === "EACCES" || code === "EPERM") {
      return new Deno.errors.PermissionDenied(message, { cause: native });
    }
    return native;
  }
}

let loaded: Libc | undefined;

/**
 * Why the C library cannot be used here, or `undefined` when it can (in which
 * case it is loaded). Never prompts for permission.
 */
export function libcUnavailableReason(): string | undefined {
  if (loaded !== undefined) return undefined;
  const os = Deno.build.os;
  if (os !== "linux" && os !== "darwin") {
    return `memory mapping through FFI supports Linux and macOS, not ${os}; ` +
      "open files with openFile(path) from ffi/mmap.ts to read them through Deno.FsFile";
  }
  let state: Deno.PermissionState;
  try {
    state = Deno.permissions.querySync({ name: "ffi" }).state;
  } catch (e) {
    return `cannot query the FFI permission (${
      e instanceof Error ? e.message : e
    }): ${NO_FFI_HINT}`;
  }
  if (state !== "granted") return `FFI permission is not granted (${state}): ${NO_FFI_HINT}`;
  const failures: string[] = [];
  for (const name of LIBRARY_CANDIDATES[os]) {
    try {
      loaded = new Libc(os, Deno.dlopen(name, symbols));
      return undefined;
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
        return `FFI permission denied while loading ${name}: ${NO_FFI_HINT}`;
      }
      failures.push(`${name}: ${e instanceof Error ? e.message : e}`);
    }
  }
  return `cannot load the C library (${failures.join("; ")}); ` +
    "open files with openFile(path) from ffi/mmap.ts to read them through Deno.FsFile";
}

/** The process-wide C library binding; throws {@link FfiUnavailableError} saying what to do. */
export function loadLibc(): Libc {
  const reason = libcUnavailableReason();
  if (reason !== undefined || loaded === undefined) {
    throw new FfiUnavailableError(reason ?? "the C library did not load");
  }
  return loaded;
}
