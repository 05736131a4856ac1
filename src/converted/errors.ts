/**
 * The error of the converted-model reader.
 *
 * @module
 */

/** A converted model directory is incomplete or inconsistent. */
export class ConvertedModelError extends Error {
  /** The file or directory concerned. */
  readonly path: string;

  /** Builds the error; `detail` says what was wrong. */
  constructor(path: string, detail: string, options?: ErrorOptions) {
    super(`${path}: ${detail}`, options);
    this.name = "ConvertedModelError";
    this.path = path;
  }
}
