/**
 * The typed error every GGUF read raises for a bad file.
 *
 * @module
 */

/** What was wrong with a GGUF file. */
export type GgufErrorKind =
  | "magic"
  | "version"
  | "truncated"
  | "count"
  | "string"
  | "value_type"
  | "duplicate"
  | "tensor_type"
  | "tensor_shape"
  | "tensor_offset"
  | "overlap"
  | "alignment"
  | "split"
  | "metadata";

/**
 * A GGUF file could not be read. Names the file, the byte offset where the
 * problem was found, and what was expected there.
 */
export class GgufError extends Error {
  /** The file that was being read. */
  readonly file: string;
  /** The byte offset in the file where the problem was found. */
  readonly offset: number;
  /** What kind of problem it was. */
  readonly kind: GgufErrorKind;

  /** Builds the error; `detail` says what was expected and what was found. */
  constructor(kind: GgufErrorKind, file: string, offset: number, detail: string) {
    super(`${file}: byte ${offset}: ${detail}`);
    this.name = "GgufError";
    this.kind = kind;
    this.file = file;
    this.offset = offset;
  }
}
