/**
 * The converted-model layout (what `deno task convert` writes) and its
 * reader: {@link openBaseModel} (`--base-weights DIR/base_model`),
 * {@link openExpertDir} (`--expert-dir DIR/experts`) and
 * {@link openConvertedModel} (the whole `DIR`). A file format, like `gguf/`
 * and `safetensors/`: it knows nothing of models or the GPU.
 *
 * @module
 */

export * from "./errors.ts";
export * from "./layout.ts";
export * from "./manifest.ts";
export * from "./reader.ts";
export * from "./values.ts";
