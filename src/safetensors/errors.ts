/**
 * The typed errors of safetensors reading and writing.
 *
 * @module
 */

/** What was wrong with a safetensors file. */
export type SafetensorsErrorKind =
  /** The file ends before the 8-byte length or the header it announces. */
  | "truncated"
  /** The header length is larger than the file or than {@link MAX_HEADER_BYTES}. */
  | "header_size"
  /** The header is not UTF-8 JSON, or not an object. */
  | "json"
  /** `__metadata__` is not an object of strings. */
  | "metadata"
  /** A tensor entry is not `{dtype, shape, data_offsets}`. */
  | "entry"
  /** A dtype that safetensors does not define. */
  | "dtype"
  /** A shape that is not a list of non-negative integers, or too large. */
  | "shape"
  /** Offsets that disagree with the shape and dtype, overlap, leave gaps or pass the end. */
  | "offsets"
  /** A tensor name given twice. */
  | "duplicate"
  /** A tensor looked up by name is not in the file. */
  | "missing"
  /** A writer was given data that disagrees with the tensor it declared. */
  | "data";

/** The largest header accepted (the Hugging Face implementation's limit: 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * A safetensors file (or a tensor list to write) is malformed. The message
 * names the file, the tensor when there is one, and what was wrong.
 */
export class SafetensorsError extends Error {
  /** What kind of problem it was. */
  readonly kind: SafetensorsErrorKind;
  /** The file being read or written. */
  readonly file: string;
  /** The tensor concerned, when the problem is about one. */
  readonly tensor: string | undefined;

  /** Builds the error; `detail` says what was expected and what was found. */
  constructor(kind: SafetensorsErrorKind, file: string, detail: string, tensor?: string) {
    super(`${file}: ${tensor === undefined ? "" : `tensor ${tensor}: `}${detail}`);
    this.name = "SafetensorsError";
    this.kind = kind;
    this.file = file;
    this.tensor = tensor;
  }
}

/** The disk filled up while writing a file; the partial file has been removed. */
export class DiskFullError extends Error {
  /** The file that was being written. */
  readonly path: string;

  /** Builds the error for `path`, with the OS error as the cause. */
  constructor(path: string, detail: string, cause?: unknown) {
    super(`no space left on device writing ${path}: ${detail}`, { cause });
    this.name = "DiskFullError";
    this.path = path;
  }
}

/** Whether `e` is the OS saying the device is full (ENOSPC, or EDQUOT: quota exceeded). */
export function isNoSpaceError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  return code === "ENOSPC" || code === "EDQUOT" || /\(os error (28|122)\)/.test(e.message);
}
