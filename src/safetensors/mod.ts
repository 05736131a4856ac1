/**
 * safetensors: a checked reader with zero-copy tensor views, and a streaming
 * writer that renames complete files into place.
 *
 * @module
 */

export * from "./dtypes.ts";
export * from "./errors.ts";
export * from "./reader.ts";
export * from "./writer.ts";
