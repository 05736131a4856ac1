/**
 * Errors of the converter (the reader's {@link ConvertedModelError} is re-exported).
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

export { ConvertedModelError } from "../converted/errors.ts";
