/**
 * The converter (GGUF → base weights + per-expert safetensors files) and the
 * reader of what it writes. The engine opens a conversion with
 * {@link openBaseModel} (`--base-weights DIR/base_model`),
 * {@link openExpertDir} (`--expert-dir DIR/experts`) or
 * {@link openConvertedModel} (the whole `DIR`).
 *
 * @module
 */

export * from "./convert.ts";
export * from "./errors.ts";
export * from "./plan.ts";
export * from "./progress.ts";
export * from "../converted/mod.ts";
