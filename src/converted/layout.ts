/**
 * The names and formats of a converted model's files, as data shared by the
 * converter and the reader:
 *
 * ```
 * DIR/manifest.json                      written last: the conversion is complete
 * DIR/base_model/model.safetensors       base weights (or model-00001-of-0000N.safetensors, …)
 * DIR/base_model/config.json             architecture, hyperparameters, GGUF metadata
 * DIR/base_model/tokenizer.json          the GGUF tokenizer metadata, chat template included
 * DIR/base_model/model.safetensors.index.json   tensor → shard map; written last in base_model/
 * DIR/experts/layer_012/expert_037.safetensors  one routed expert: ffn_gate/ffn_up/ffn_down
 * DIR/experts/experts.json               per-layer layout of the expert files; written last in experts/
 * ```
 *
 * @module
 */

/** File and directory names. */
export const ConvertedFiles = {
  manifest: "manifest.json",
  journal: ".convert-journal.jsonl",
  baseDir: "base_model",
  expertDir: "experts",
  config: "config.json",
  tokenizer: "tokenizer.json",
  baseIndex: "model.safetensors.index.json",
  expertIndex: "experts.json",
} as const;

/** The `format` value of each JSON file and safetensors `__metadata__`. */
export const ConvertedFormats = {
  manifest: "od-moe/converted",
  journal: "od-moe/convert-journal",
  config: "od-moe/base-config",
  tokenizer: "od-moe/gguf-tokenizer",
  baseShard: "od-moe/base",
  expertFile: "od-moe/expert",
  expertIndex: "od-moe/experts",
} as const;

/** Version of the layout; readers refuse other versions. */
export const CONVERTED_VERSION = 1;

/** Keys of the safetensors `__metadata__` the converter writes. */
export const MetadataKeys = {
  format: "format",
  /** JSON: `{tensor: {ggml_type, shape, source?}}`, the ggml type and ggml-order shape of each tensor. */
  ggmlTensors: "ggml_tensors",
  layer: "layer",
  expert: "expert",
} as const;

/** The name of base shard `i` (0-based) of `n`: `model.safetensors` when there is one. */
export function baseShardName(i: number, n: number): string {
  if (n === 1) return "model.safetensors";
  const w = Math.max(5, String(n).length);
  return `model-${String(i + 1).padStart(w, "0")}-of-${String(n).padStart(w, "0")}.safetensors`;
}

/** Digits used for layer and expert numbers in file names: at least 3. */
export function nameWidth(count: number): number {
  return Math.max(3, String(Math.max(0, count - 1)).length);
}

/** A layer's directory under `experts/`: `layer_012`. */
export function layerDirName(layer: number, width = 3): string {
  return `layer_${String(layer).padStart(width, "0")}`;
}

/** An expert's file name within its layer directory: `expert_037.safetensors`. */
export function expertFileName(expert: number, width = 3): string {
  return `expert_${String(expert).padStart(width, "0")}.safetensors`;
}

/** An expert's path relative to `experts/`: `layer_012/expert_037.safetensors`. */
export function expertPath(layer: number, expert: number, layerWidth = 3, expertWidth = 3): string {
  return `${layerDirName(layer, layerWidth)}/${expertFileName(expert, expertWidth)}`;
}

/** The name of an expert tensor inside its file: the GGUF name without the block and `_exps`. */
export function expertTensorName(role: string, kind: string): string {
  return `ffn_${role}.${kind}`;
}
