/**
 * Errors of the converter and of the converted-model reader.
 *
 * @module
 */

/** The conversion cannot go ahead: the model does not fit its architecture, the output directory is not usable, … */
export class ConvertError extends Error {
  /** Builds the error; the message says what was wrong and what to do. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConvertError";
  }
}

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
