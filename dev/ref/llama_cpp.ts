/**
 * llama.cpp as a reference implementation, loaded with `Deno.dlopen` from the
 * shared libraries that the pinned `@node-llama-cpp/linux-x64` npm package
 * ships (llama.cpp release v0.4.0 as node-llama-cpp 3.21.1 builds it).
 *
 * Tests use it to compare od-moe's tokenisation and logits with llama.cpp's
 * on the same GGUF. Runs are set up as `/work/shared/PARITY.md` asks: CPU,
 * one thread, flash attention off, KV cache in F32.
 *
 * Only Linux x86-64 has the libraries; elsewhere (or without `--allow-ffi`)
 * {@linkcode referenceUnavailableReason} says why, so tests can skip visibly.
 * llama.cpp's own log is silenced unless `ODMOE_REF_VERBOSE=1` is set.
 *
 * ```ts ignore
 * import { loadReference } from "./llama_cpp.ts";
 * const ref = loadReference();
 * using model = ref.loadModel("tiny.gguf");
 * const [first] = model.logits([1, 2, 3]); // logits at position 0
 * const { tokens } = model.greedy([1, 2, 3], 8);
 * ```
 *
 * @module
 */

import { REPO_ROOT } from "./llama_src.ts";

/** The directory holding `libllama.v0.4.0.so`, `libggml*.so` and the CPU backends. */
export const LLAMA_LIB_DIR: string =
  `${REPO_ROOT}/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64`;

const LIBLLAMA = "libllama.v0.4.0.so";
const LIBGGML = "libggml.v0.4.0.so";

/**
 * llama.cpp's builds of the pinned release: `cpu` (the parity reference) and
 * the GPU builds node-llama-cpp ships, `vulkan` and `cuda` (test-only
 * packages `@node-llama-cpp/linux-x64-vulkan` and `-cuda`, for
 * `deno task bench gpu`). One process loads one build (they share library
 * names).
 */
export type LlamaBuild = "cpu" | "vulkan" | "cuda";

/** Where a build's libraries are, and their names. */
export function llamaBuildFiles(
  build: LlamaBuild,
): { dir: string; libllama: string; libggml: string; fallbackDir?: string } {
  if (build === "cpu") return { dir: LLAMA_LIB_DIR, libllama: LIBLLAMA, libggml: LIBGGML };
  const pkg = `${REPO_ROOT}/node_modules/@node-llama-cpp/linux-x64-${build}`;
  return {
    dir: `${pkg}/bins/linux-x64-${build}`,
    libllama: `libllama.${build}.v0.4.0.so`,
    libggml: `libggml.${build}.v0.4.0.so`,
    // the CUDA 12 build of libggml-cuda.so (the main one links CUDA 13's runtime)
    fallbackDir: build === "cuda"
      ? `${REPO_ROOT}/node_modules/@node-llama-cpp/linux-x64-cuda-ext/bins/linux-x64-cuda/fallback`
      : undefined,
  };
}

/** Environment variable that, when set to anything but `""`/`"0"`, lets llama.cpp log to stderr. */
export const VERBOSE_ENV = "ODMOE_REF_VERBOSE";

// ---------------------------------------------------------------------------
// C struct layouts (x86-64 System V: enums are 4-byte ints, bool is 1 byte)
// ---------------------------------------------------------------------------

/** A C scalar type as Deno FFI names it. */
export type CType = "i32" | "u32" | "f32" | "bool" | "pointer" | "usize";

const C_SIZE: Record<CType, number> = { i32: 4, u32: 4, f32: 4, bool: 1, pointer: 8, usize: 8 };

/** A C struct's byte layout, computed from its fields in declaration order. */
export interface CLayout<N extends string> {
  /** `sizeof`, including the tail padding. */
  readonly size: number;
  /** Byte offset and type of each field. */
  readonly fields: { readonly [K in N]: { readonly offset: number; readonly type: CType } };
  /** The Deno FFI type for passing or returning the struct by value. */
  readonly ffi: { readonly struct: readonly CType[] };
}

/** Lays out a C struct by the usual rules: each field at the next multiple of its size. */
function cLayout<const F extends readonly (readonly [string, CType])[]>(
  fields: F,
): CLayout<F[number][0]> {
  let offset = 0;
  let align = 1;
  const out: Record<string, { offset: number; type: CType }> = {};
  for (const [name, type] of fields) {
    const size = C_SIZE[type];
    offset = Math.ceil(offset / size) * size;
    out[name] = { offset, type };
    offset += size;
    align = Math.max(align, size);
  }
  return {
    size: Math.ceil(offset / align) * align,
    fields: out as CLayout<F[number][0]>["fields"],
    ffi: { struct: fields.map(([, t]) => t) },
  };
}

/**
 * The by-value structs of llama.h at the pinned commit, field for field (the
 * comments give the C types that are not spelled out by the FFI type).
 * {@linkcode LlamaCpp} checks them against llama.cpp's defaults on load.
 */
export const LAYOUTS = {
  /** `struct llama_model_params` */
  modelParams: cLayout(
    [
      ["devices", "pointer"],
      ["tensor_buft_overrides", "pointer"],
      ["n_gpu_layers", "i32"],
      ["split_mode", "i32"], // enum llama_split_mode
      ["load_mode", "i32"], // enum llama_load_mode
      ["lazy_mode", "i32"], // enum llama_lazy_mode
      ["main_gpu", "i32"],
      ["tensor_split", "pointer"],
      ["progress_callback", "pointer"],
      ["progress_callback_user_data", "pointer"],
      ["kv_overrides", "pointer"],
      ["vocab_only", "bool"],
      ["check_tensors", "bool"],
      ["use_extra_bufts", "bool"],
      ["no_host", "bool"],
      ["no_alloc", "bool"],
      ["load_mtp", "bool"],
    ] as const,
  ),
  /** `struct llama_context_params` */
  contextParams: cLayout(
    [
      ["n_ctx", "u32"],
      ["n_batch", "u32"],
      ["n_ubatch", "u32"],
      ["n_seq_max", "u32"],
      ["n_rs_seq", "u32"],
      ["n_outputs_max", "u32"],
      ["n_outputs_max_per_seq", "u32"],
      ["n_threads", "i32"],
      ["n_threads_batch", "i32"],
      ["ctx_type", "i32"], // enum llama_context_type
      ["rope_scaling_type", "i32"], // enum llama_rope_scaling_type
      ["pooling_type", "i32"], // enum llama_pooling_type
      ["attention_type", "i32"], // enum llama_attention_type
      ["flash_attn_type", "i32"], // enum llama_flash_attn_type
      ["rope_freq_base", "f32"],
      ["rope_freq_scale", "f32"],
      ["yarn_ext_factor", "f32"],
      ["yarn_attn_factor", "f32"],
      ["yarn_beta_fast", "f32"],
      ["yarn_beta_slow", "f32"],
      ["yarn_orig_ctx", "u32"],
      ["defrag_thold", "f32"],
      ["cb_eval", "pointer"],
      ["cb_eval_user_data", "pointer"],
      ["type_k", "i32"], // enum ggml_type
      ["type_v", "i32"], // enum ggml_type
      ["abort_callback", "pointer"],
      ["abort_callback_data", "pointer"],
      ["embeddings", "bool"],
      ["offload_kqv", "bool"],
      ["no_perf", "bool"],
      ["op_offload", "bool"],
      ["swa_full", "bool"],
      ["kv_unified", "bool"],
      ["samplers", "pointer"],
      ["n_samplers", "usize"],
      ["ctx_other", "pointer"],
    ] as const,
  ),
  /** `struct llama_model_quantize_params` */
  quantizeParams: cLayout(
    [
      ["nthread", "i32"],
      ["ftype", "i32"], // enum llama_ftype
      ["output_tensor_type", "i32"], // enum ggml_type
      ["token_embedding_type", "i32"], // enum ggml_type
      ["allow_requantize", "bool"],
      ["quantize_output_tensor", "bool"],
      ["only_copy", "bool"],
      ["pure", "bool"],
      ["keep_split", "bool"],
      ["dry_run", "bool"],
      ["imatrix", "pointer"],
      ["kv_overrides", "pointer"],
      ["tt_overrides", "pointer"],
      ["prune_layers", "pointer"],
      ["max_buf_size", "usize"],
    ] as const,
  ),
  /** `struct llama_batch` */
  batch: cLayout(
    [
      ["n_tokens", "i32"],
      ["token", "pointer"], // llama_token *
      ["embd", "pointer"], // float *
      ["pos", "pointer"], // llama_pos *
      ["n_seq_id", "pointer"], // int32_t *
      ["seq_id", "pointer"], // llama_seq_id **
      ["logits", "pointer"], // int8_t *
    ] as const,
  ),
} as const;

/** The bytes of one C struct, read and written by field name. */
export class CStruct<N extends string> {
  /** The struct's layout. */
  readonly layout: CLayout<N>;
  /** The struct's bytes, as passed to or returned from C. */
  readonly bytes: Uint8Array;
  readonly #view: DataView;

  /**
   * Views `bytes` (or fresh zeroed bytes) as a struct of `layout`.
   *
   * @param layout the struct's layout
   * @param bytes existing bytes (e.g. a struct returned by value); zeroed if absent
   */
  constructor(layout: CLayout<N>, bytes?: Uint8Array) {
    this.layout = layout;
    this.bytes = bytes ?? new Uint8Array(layout.size);
    if (this.bytes.byteLength !== layout.size) {
      throw new Error(`struct bytes are ${this.bytes.byteLength} long, layout says ${layout.size}`);
    }
    this.#view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  /** Reads a field; bools read as 0/1, pointers as their address. */
  get(name: N): number {
    const { offset, type } = this.layout.fields[name];
    switch (type) {
      case "i32":
        return this.#view.getInt32(offset, true);
      case "u32":
        return this.#view.getUint32(offset, true);
      case "f32":
        return this.#view.getFloat32(offset, true);
      case "bool":
        return this.#view.getUint8(offset);
      case "pointer":
      case "usize":
        return Number(this.#view.getBigUint64(offset, true));
    }
  }

  /** Writes a numeric or bool field (pointers: {@linkcode setPointer}). */
  set(name: N, value: number | boolean): this {
    const { offset, type } = this.layout.fields[name];
    const v = Number(value);
    switch (type) {
      case "i32":
        this.#view.setInt32(offset, v, true);
        break;
      case "u32":
        this.#view.setUint32(offset, v, true);
        break;
      case "f32":
        this.#view.setFloat32(offset, v, true);
        break;
      case "bool":
        this.#view.setUint8(offset, v ? 1 : 0);
        break;
      case "usize":
        this.#view.setBigUint64(offset, BigInt(v), true);
        break;
      case "pointer":
        throw new Error(`field ${name} is a pointer: use setPointer`);
    }
    return this;
  }

  /** Writes a pointer field. */
  setPointer(name: N, ptr: Deno.PointerValue): this {
    const { offset, type } = this.layout.fields[name];
    if (type !== "pointer") throw new Error(`field ${name} is ${type}, not a pointer`);
    this.#view.setBigUint64(offset, BigInt(Deno.UnsafePointer.value(ptr)), true);
    return this;
  }
}

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------

/** `enum llama_ftype` of llama.h: the file types `llama_model_quantize` writes. */
export const LlamaFtype = {
  ALL_F32: 0,
  MOSTLY_F16: 1,
  MOSTLY_Q4_0: 2,
  MOSTLY_Q4_1: 3,
  MOSTLY_Q8_0: 7,
  MOSTLY_Q5_0: 8,
  MOSTLY_Q5_1: 9,
  MOSTLY_Q2_K: 10,
  MOSTLY_Q3_K_S: 11,
  MOSTLY_Q3_K_M: 12,
  MOSTLY_Q3_K_L: 13,
  MOSTLY_Q4_K_S: 14,
  MOSTLY_Q4_K_M: 15,
  MOSTLY_Q5_K_S: 16,
  MOSTLY_Q5_K_M: 17,
  MOSTLY_Q6_K: 18,
  MOSTLY_IQ2_XXS: 19,
  MOSTLY_IQ2_XS: 20,
  MOSTLY_Q2_K_S: 21,
  MOSTLY_IQ3_XS: 22,
  MOSTLY_IQ3_XXS: 23,
  MOSTLY_IQ1_S: 24,
  MOSTLY_IQ4_NL: 25,
  MOSTLY_IQ3_S: 26,
  MOSTLY_IQ3_M: 27,
  MOSTLY_IQ2_S: 28,
  MOSTLY_IQ2_M: 29,
  MOSTLY_IQ4_XS: 30,
  MOSTLY_IQ1_M: 31,
  MOSTLY_BF16: 32,
  MOSTLY_TQ1_0: 36,
  MOSTLY_TQ2_0: 37,
  MOSTLY_MXFP4_MOE: 38,
  MOSTLY_NVFP4: 39,
  MOSTLY_Q1_0: 40,
  MOSTLY_Q2_0: 41,
} as const;

/** A name from {@linkcode LlamaFtype}. */
export type LlamaFtypeName = keyof typeof LlamaFtype;

const GGML_TYPE_F32 = 0;
const GGML_TYPE_F16 = 1;
const GGML_TYPE_COUNT = 43;
const LLAMA_SPLIT_MODE_NONE = 0;
const LLAMA_LOAD_MODE_NONE = 0;
const LLAMA_LAZY_MODE_OFF = 0;
const LLAMA_FLASH_ATTN_TYPE_DISABLED = 0;
const GGML_LOG_LEVEL_WARN = 3;
const GGML_LOG_LEVEL_CONT = 5;

// ---------------------------------------------------------------------------
// Library symbols
// ---------------------------------------------------------------------------

const LLAMA_SYMBOLS = {
  llama_backend_init: { parameters: [], result: "void" },
  llama_log_set: { parameters: ["function", "pointer"], result: "void" },
  llama_print_system_info: { parameters: [], result: "pointer" },
  llama_model_default_params: { parameters: [], result: LAYOUTS.modelParams.ffi },
  llama_context_default_params: { parameters: [], result: LAYOUTS.contextParams.ffi },
  llama_model_quantize_default_params: { parameters: [], result: LAYOUTS.quantizeParams.ffi },
  llama_model_load_from_file: {
    parameters: ["buffer", LAYOUTS.modelParams.ffi],
    result: "pointer",
  },
  llama_model_free: { parameters: ["pointer"], result: "void" },
  llama_model_get_vocab: { parameters: ["pointer"], result: "pointer" },
  llama_model_n_ctx_train: { parameters: ["pointer"], result: "i32" },
  llama_model_n_embd: { parameters: ["pointer"], result: "i32" },
  llama_model_n_layer: { parameters: ["pointer"], result: "i32" },
  llama_vocab_n_tokens: { parameters: ["pointer"], result: "i32" },
  llama_init_from_model: {
    parameters: ["pointer", LAYOUTS.contextParams.ffi],
    result: "pointer",
  },
  llama_free: { parameters: ["pointer"], result: "void" },
  llama_n_ctx: { parameters: ["pointer"], result: "u32" },
  llama_n_batch: { parameters: ["pointer"], result: "u32" },
  llama_n_ubatch: { parameters: ["pointer"], result: "u32" },
  llama_n_threads: { parameters: ["pointer"], result: "i32" },
  llama_n_threads_batch: { parameters: ["pointer"], result: "i32" },
  llama_decode: { parameters: ["pointer", LAYOUTS.batch.ffi], result: "i32" },
  llama_get_logits_ith: { parameters: ["pointer", "i32"], result: "pointer" },
  llama_tokenize: {
    parameters: ["pointer", "buffer", "i32", "buffer", "i32", "bool", "bool"],
    result: "i32",
  },
  llama_token_to_piece: {
    parameters: ["pointer", "i32", "buffer", "i32", "i32", "bool"],
    result: "i32",
  },
  llama_detokenize: {
    parameters: ["pointer", "buffer", "i32", "buffer", "i32", "bool", "bool"],
    result: "i32",
  },
  llama_model_quantize: { parameters: ["buffer", "buffer", "buffer"], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * llama.cpp's per-tensor type choice, exported (C++ names) for its own tests
 * from `src/llama-ext.h`: a model made from a few hyperparameters, and the
 * types `llama_model_quantize` would give a list of tensors.
 */
const LLAMA_QUANT_SYMBOLS = {
  /** `llama_model * llama_quant_model_from_metadata(const llama_quant_model_desc *)` */
  _Z31llama_quant_model_from_metadataPK22llama_quant_model_desc: {
    parameters: ["buffer"],
    result: "pointer",
  },
  /** `quantize_state_impl * llama_quant_init(const llama_model *, const llama_model_quantize_params *)` */
  _Z16llama_quant_initPK11llama_modelPK27llama_model_quantize_params: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  /** `void llama_quant_free(quantize_state_impl *)` */
  _Z16llama_quant_freeP19quantize_state_impl: { parameters: ["pointer"], result: "void" },
  /** `bool llama_quant_tensor_allows_quantization(const quantize_state_impl *, const ggml_tensor *)` */
  _Z38llama_quant_tensor_allows_quantizationPK19quantize_state_implPK11ggml_tensor: {
    parameters: ["pointer", "pointer"],
    result: "bool",
  },
  /** `void llama_quant_compute_types(quantize_state_impl *, llama_ftype, ggml_tensor **, ggml_type *, size_t)` */
  _Z25llama_quant_compute_typesP19quantize_state_impl11llama_ftypePP11ggml_tensorP9ggml_typem: {
    parameters: ["pointer", "i32", "buffer", "buffer", "usize"],
    result: "void",
  },
  llama_model_free: { parameters: ["pointer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/** ggml's tensor bookkeeping, to describe tensors to {@linkcode LLAMA_QUANT_SYMBOLS}. */
const GGML_BASE_SYMBOLS = {
  /** `ggml_init(struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; })` */
  ggml_init: { parameters: [{ struct: ["usize", "pointer", "bool"] }], result: "pointer" },
  ggml_free: { parameters: ["pointer"], result: "void" },
  ggml_new_tensor: { parameters: ["pointer", "i32", "i32", "buffer"], result: "pointer" },
  ggml_set_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  ggml_tensor_overhead: { parameters: [], result: "usize" },
} as const satisfies Deno.ForeignLibraryInterface;

/** `struct llama_quant_model_desc` of `src/llama-ext.h`. */
const QUANT_MODEL_DESC = cLayout(
  [
    ["architecture", "pointer"],
    ["n_embd", "u32"],
    ["n_ff", "u32"],
    ["n_layer", "u32"],
    ["n_head", "u32"],
    ["n_head_kv", "u32"],
    ["n_expert", "u32"],
    ["n_embd_head_k", "u32"],
    ["n_embd_head_v", "u32"],
  ] as const,
);

/** The hyperparameters llama.cpp's type choice reads (`llama_quant_model_desc`). */
export interface QuantModelDesc {
  /** `general.architecture` (e.g. `deepseek2`). */
  architecture: string;
  /** Width. */
  nEmbd: number;
  /** Dense FFN width. */
  nFf: number;
  /** `block_count`: every block the file has (the layer index of `use_more_bits` runs over it). */
  nLayer: number;
  /** Query heads. */
  nHead: number;
  /** KV heads (grouped-query factor `nHead / nHeadKv`). */
  nHeadKv: number;
  /** Routed experts (0 for a dense model). */
  nExpert: number;
  /** Key head width. */
  nEmbdHeadK: number;
  /** Value head width. */
  nEmbdHeadV: number;
}

const GGML_SYMBOLS = {
  ggml_backend_load_all_from_path: { parameters: ["buffer"], result: "void" },
  ggml_backend_load: { parameters: ["buffer"], result: "pointer" },
  ggml_backend_dev_count: { parameters: [], result: "usize" },
  ggml_backend_dev_get: { parameters: ["usize"], result: "pointer" },
  ggml_backend_dev_name: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_dev_description: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_dev_type: { parameters: ["pointer"], result: "i32" },
  ggml_backend_dev_memory: { parameters: ["pointer", "buffer", "buffer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

type LlamaLib = Deno.DynamicLibrary<typeof LLAMA_SYMBOLS>["symbols"];

const LOG_CALLBACK = { parameters: ["i32", "pointer", "pointer"], result: "void" } as const;

function cString(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`${s}\0`);
}

function verboseRequested(): boolean {
  if (Deno.permissions.querySync({ name: "env", variable: VERBOSE_ENV }).state !== "granted") {
    return false;
  }
  const v = Deno.env.get(VERBOSE_ENV);
  return v !== undefined && v !== "" && v !== "0";
}

/**
 * Why the llama.cpp reference cannot run in this process, or `null` if it can.
 * Tests pass this to `Deno.test({ ignore })` and print it, so a skip is visible.
 */
export function referenceUnavailableReason(build: LlamaBuild = "cpu"): string | null {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    return `llama.cpp reference libraries exist only for linux x86_64 (this is ${Deno.build.os} ${Deno.build.arch})`;
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return "llama.cpp reference needs --allow-ffi";
  }
  const { dir, libllama, libggml } = llamaBuildFiles(build);
  if (Deno.permissions.querySync({ name: "read", path: dir }).state !== "granted") {
    return `llama.cpp reference needs --allow-read for ${dir}`;
  }
  for (const lib of [libllama, libggml]) {
    try {
      Deno.statSync(`${dir}/${lib}`);
    } catch {
      return `llama.cpp reference library ${dir}/${lib} is missing: run \`deno task dev-install\``;
    }
  }
  return null;
}

let singleton: LlamaCpp | undefined;

/**
 * The process-wide {@linkcode LlamaCpp}, loading the libraries on first use.
 * `build` picks llama.cpp's CPU build (default, the parity reference) or a
 * GPU build; a process holds one build.
 *
 * @throws with {@linkcode referenceUnavailableReason}'s text where the
 * reference cannot run, if another build is loaded in this process, or if
 * the libraries do not match the struct layouts this wrapper was written for.
 */
export function loadReference(build: LlamaBuild = "cpu"): LlamaCpp {
  if (singleton && singleton.build !== build) {
    throw new Error(
      `llama.cpp's ${singleton.build} build is loaded in this process; its ${build} build ` +
        `shares library names with it: run that in another process`,
    );
  }
  singleton ??= new LlamaCpp(build);
  return singleton;
}

/** A ggml backend device llama.cpp can use (`ggml_backend_dev_*`). */
export interface LlamaDevice {
  /** Short name (`CPU`, `Vulkan0`, `CUDA0`). */
  name: string;
  /** The driver's description (the GPU's name). */
  description: string;
  /** `cpu`, `gpu`, `igpu` or `accel`. */
  type: string;
  /** Memory the device reports, bytes. */
  memoryTotal: number;
}

/** Options for {@linkcode LlamaCpp.loadModel}. */
export interface LoadModelOptions {
  /**
   * Context size of every evaluation. Default: just enough for each call
   * (the tokens passed to `logits`, or prompt + generated tokens for `greedy`).
   */
  nCtx?: number;
  /** Load only the vocabulary (tokenisation works, evaluation does not). */
  vocabOnly?: boolean;
  /**
   * CPU threads of evaluation (default 1, the parity reference). More is for
   * speed benchmarks: llama.cpp's log is then not captured during decode
   * (a JavaScript callback cannot run on its worker threads), so a failed
   * decode's error carries no log.
   */
  nThreads?: number;
  /**
   * Layers offloaded to the build's GPU (default 0: all on the CPU, the
   * parity setup); a large number offloads every layer and the output head.
   */
  nGpuLayers?: number;
}

/** Options for {@linkcode LlamaCpp.quantize}. */
export interface QuantizeOptions {
  /** Allow re-quantising tensors that are neither F32 nor F16 (needed for `ALL_F32` of a quantised file). */
  allowRequantize?: boolean;
  /**
   * Worker threads. Default 1, which also lets a failure's error message
   * carry llama.cpp's log (its log cannot be captured from worker threads).
   */
  nThread?: number;
  /** Quantise every tensor to the file type's base type, without the mixes of `_M`/`_S` types. */
  pure?: boolean;
  /** ggml type id for `output.weight` (default: chosen by llama.cpp). */
  outputTensorType?: number;
  /** ggml type id for `token_embd.weight` (default: chosen by llama.cpp). */
  tokenEmbeddingType?: number;
  /**
   * Importance matrix (`llama_model_imatrix_data`): tensor name → `ne0 ×
   * n_expert` weights (the mean squared activation of each input column, per
   * expert). IQ1_S/M, IQ2_XXS/XS/S and IQ3_XXS refuse to quantise without one.
   */
  imatrix?: ReadonlyMap<string, Float32Array<ArrayBuffer>>;
  /**
   * Per-tensor types (`tt_overrides`, llama-quantize's `--tensor-type`):
   * `[regex, ggml type id]`, the first pattern found in a tensor's name wins.
   */
  tensorTypes?: ReadonlyArray<readonly [string, number]>;
}

/**
 * A C array of `n` structs of `size` bytes, each written by
 * `fill(view, offset, i)`, and a zeroed one after them (the NULL terminator).
 */
function cArray(
  n: number,
  size: number,
  fill: (view: DataView, offset: number, i: number) => void,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array((n + 1) * size);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) fill(view, i * size, i);
  return bytes;
}

function ptrOf(buffer: BufferSource): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer as Uint8Array)));
}

/**
 * The loaded llama.cpp libraries. Get the shared instance with
 * {@linkcode loadReference}.
 */
export class LlamaCpp {
  /** llama.cpp's `llama_print_system_info()`: the CPU features of the loaded backend. */
  readonly systemInfo: string;
  /** Which of llama.cpp's builds this is. */
  readonly build: LlamaBuild;
  /** The backend devices the build found (the CPU, and GPUs for a GPU build). */
  readonly devices: LlamaDevice[];
  readonly #lib: LlamaLib;
  readonly #log: LogControl;
  readonly #dir: string;
  readonly #libllama: string;

  /**
   * Loads the libraries, checks the struct layouts and loads the backends
   * (the CPU's; a GPU build's too, where its driver libraries load).
   * Prefer {@linkcode loadReference}, which does this once per process.
   */
  constructor(build: LlamaBuild = "cpu") {
    const reason = referenceUnavailableReason(build);
    if (reason !== null) throw new Error(reason);
    const files = llamaBuildFiles(build);
    this.build = build;
    this.#dir = files.dir;
    this.#libllama = files.libllama;
    const ggml = Deno.dlopen(`${files.dir}/${files.libggml}`, GGML_SYMBOLS).symbols;
    this.#lib = Deno.dlopen(`${files.dir}/${files.libllama}`, LLAMA_SYMBOLS).symbols;
    this.#log = new LogControl(this.#lib);
    checkLayouts(this.#lib, files.dir);
    ggml.ggml_backend_load_all_from_path(cString(files.dir));
    const devices = () =>
      Array.from({ length: Number(ggml.ggml_backend_dev_count()) }, (_, i) => {
        const dev = ggml.ggml_backend_dev_get(BigInt(i));
        const free = new BigUint64Array(1);
        const total = new BigUint64Array(1);
        ggml.ggml_backend_dev_memory(dev, free, total);
        return {
          name: Deno.UnsafePointerView.getCString(ggml.ggml_backend_dev_name(dev)!),
          description: Deno.UnsafePointerView.getCString(ggml.ggml_backend_dev_description(dev)!),
          type: ["cpu", "gpu", "igpu", "accel"][ggml.ggml_backend_dev_type(dev)] ?? "?",
          memoryTotal: Number(total[0]),
        };
      });
    this.devices = devices();
    if (
      files.fallbackDir && !this.devices.some((d) => d.type !== "cpu") &&
      Deno.statSync(files.fallbackDir).isDirectory
    ) {
      // node-llama-cpp's own fallback: the CUDA backend built against CUDA 12's runtime
      ggml.ggml_backend_load(cString(`${files.fallbackDir}/libggml-cuda.so`));
      this.devices = devices();
    }
    if (this.devices.length === 0) {
      throw new Error(`no ggml backend could be loaded from ${files.dir}`);
    }
    this.#lib.llama_backend_init();
    this.systemInfo = Deno.UnsafePointerView.getCString(this.#lib.llama_print_system_info()!);
  }

  /**
   * Loads a GGUF model on the CPU (or `nGpuLayers` of it on the build's
   * GPU). The file is read into memory (not
   * mapped), so it may be rewritten or deleted while the model is open.
   *
   * @throws naming the file and quoting llama.cpp's error log if it fails.
   */
  loadModel(path: string, options: LoadModelOptions = {}): RefModel {
    const params = new CStruct(LAYOUTS.modelParams, this.#lib.llama_model_default_params())
      .set("n_gpu_layers", options.nGpuLayers ?? 0)
      .set("split_mode", LLAMA_SPLIT_MODE_NONE)
      .set("load_mode", LLAMA_LOAD_MODE_NONE)
      .set("lazy_mode", LLAMA_LAZY_MODE_OFF)
      .set("vocab_only", options.vocabOnly ?? false);
    const { result: model, log } = this.#log.capture(() =>
      this.#lib.llama_model_load_from_file(cString(path), params.bytes)
    );
    if (model === null) {
      throw new Error(`llama.cpp could not load ${path}${this.#log.explain(log)}`);
    }
    return new RefModel(this.#lib, this.#log, path, model, options);
  }

  /**
   * Writes `outPath`, a copy of the GGUF `inPath` with file type `ftype`, with
   * `llama_model_quantize`. With `ftype` `"ALL_F32"` and `allowRequantize` it
   * writes llama.cpp's own dequantisation of a quantised file (PARITY.md's
   * exact reference).
   *
   * @throws with llama.cpp's return code (and its log, with one thread) on failure.
   */
  quantize(
    inPath: string,
    outPath: string,
    ftype: LlamaFtypeName,
    options: QuantizeOptions = {},
  ): void {
    const nThread = options.nThread ?? 1;
    // Buffers the parameter structs point into; referenced until the call returns.
    const keep: BufferSource[] = [];
    const params = this.#quantizeParams(ftype, options, keep);
    const run = () =>
      this.#lib.llama_model_quantize(cString(inPath), cString(outPath), params.bytes);
    // Worker threads must not call into JavaScript: capture only when single-threaded.
    const { result: rc, log } = nThread === 1 ? this.#log.capture(run) : { result: run(), log: [] };
    keep.length = 0;
    if (rc !== 0) {
      throw new Error(
        `llama_model_quantize(${inPath} -> ${outPath}, ${ftype}) failed with code ${rc}${
          this.#log.explain(log)
        }`,
      );
    }
  }

  /**
   * The ggml type `llama_model_quantize` would give each tensor of a model
   * for file type `ftype` and these options, without a file: llama.cpp's own
   * choice (`llama_quant_compute_types` on a model made by
   * `llama_quant_model_from_metadata`, the entry points of its
   * quantisation-type tests). Tensors it leaves alone (norms, routers,
   * vectors) keep `type`. Imatrix-dependent choices are those without an
   * importance matrix.
   *
   * @param tensors in file order (the counters of attention V and FFN layers run in it)
   */
  quantTypes(
    desc: QuantModelDesc,
    ftype: LlamaFtypeName,
    tensors: ReadonlyArray<{ name: string; shape: readonly number[]; type: number }>,
    options: Omit<QuantizeOptions, "nThread" | "imatrix" | "allowRequantize"> = {},
  ): number[] {
    const code = LlamaFtype[ftype];
    if (code === undefined) throw new Error(`unknown llama_ftype ${ftype}`);
    this.#quant ??= {
      llama: Deno.dlopen(`${this.#dir}/${this.#libllama}`, LLAMA_QUANT_SYMBOLS).symbols,
      ggml: Deno.dlopen(`${this.#dir}/libggml-base.so`, GGML_BASE_SYMBOLS).symbols,
    };
    const { llama, ggml } = this.#quant;
    const keep: BufferSource[] = [];
    const params = this.#quantizeParams(ftype, options, keep);
    const arch = cString(desc.architecture);
    const d = new CStruct(QUANT_MODEL_DESC)
      .setPointer("architecture", Deno.UnsafePointer.of(arch))
      .set("n_embd", desc.nEmbd)
      .set("n_ff", desc.nFf)
      .set("n_layer", desc.nLayer)
      .set("n_head", desc.nHead)
      .set("n_head_kv", desc.nHeadKv)
      .set("n_expert", desc.nExpert)
      .set("n_embd_head_k", desc.nEmbdHeadK)
      .set("n_embd_head_v", desc.nEmbdHeadV);
    const model = llama._Z31llama_quant_model_from_metadataPK22llama_quant_model_desc(d.bytes);
    if (model === null) throw new Error(`llama.cpp made no model for ${desc.architecture}`);
    const ctxBytes = Number(ggml.ggml_tensor_overhead()) * (tensors.length + 1);
    const ctx = ggml.ggml_init(
      new Uint8Array(new BigUint64Array([BigInt(ctxBytes), 0n, 1n]).buffer),
    );
    if (ctx === null) {
      llama.llama_model_free(model);
      throw new Error("ggml_init failed");
    }
    let qs: Deno.PointerValue = null;
    try {
      qs = llama._Z16llama_quant_initPK11llama_modelPK27llama_model_quantize_params(
        model,
        params.bytes,
      );
      const out = tensors.map((t) => t.type);
      const pick: number[] = [];
      const ptrs: bigint[] = [];
      tensors.forEach((t, i) => {
        const ne = new BigInt64Array(t.shape.map((n) => BigInt(n)));
        const tensor = ggml.ggml_new_tensor(ctx, t.type, t.shape.length, ne);
        if (tensor === null) throw new Error(`ggml_new_tensor failed for ${t.name}`);
        ggml.ggml_set_name(tensor, cString(t.name));
        const allowed = llama
          ._Z38llama_quant_tensor_allows_quantizationPK19quantize_state_implPK11ggml_tensor(
            qs,
            tensor,
          );
        if (allowed) {
          pick.push(i);
          ptrs.push(BigInt(Deno.UnsafePointer.value(tensor)));
        }
      });
      const types = new Int32Array(pick.length);
      llama
        ._Z25llama_quant_compute_typesP19quantize_state_impl11llama_ftypePP11ggml_tensorP9ggml_typem(
          qs,
          code,
          new BigUint64Array(ptrs),
          types,
          BigInt(pick.length),
        );
      pick.forEach((i, j) => out[i] = types[j]!);
      return out;
    } finally {
      if (qs !== null) llama._Z16llama_quant_freeP19quantize_state_impl(qs);
      ggml.ggml_free(ctx);
      llama.llama_model_free(model);
      keep.length = 0;
    }
  }

  #quant?: {
    llama: Deno.DynamicLibrary<typeof LLAMA_QUANT_SYMBOLS>["symbols"];
    ggml: Deno.DynamicLibrary<typeof GGML_BASE_SYMBOLS>["symbols"];
  };

  /** `llama_model_quantize_params` for `ftype` and `options`; `keep` holds what it points into. */
  #quantizeParams(
    ftype: LlamaFtypeName,
    options: QuantizeOptions,
    keep: BufferSource[],
  ): CStruct<keyof typeof LAYOUTS.quantizeParams.fields> {
    const code = LlamaFtype[ftype];
    if (code === undefined) throw new Error(`unknown llama_ftype ${ftype}`);
    const params = new CStruct(
      LAYOUTS.quantizeParams,
      this.#lib.llama_model_quantize_default_params(),
    )
      .set("nthread", options.nThread ?? 1)
      .set("ftype", code)
      .set("allow_requantize", options.allowRequantize ?? false)
      .set("pure", options.pure ?? false);
    if (options.outputTensorType !== undefined) {
      params.set("output_tensor_type", options.outputTensorType);
    }
    if (options.tokenEmbeddingType !== undefined) {
      params.set("token_embedding_type", options.tokenEmbeddingType);
    }
    if (options.imatrix) {
      const entries = [...options.imatrix];
      // struct llama_model_imatrix_data { const char * name; const float * data; size_t size; }
      const arr = cArray(entries.length, 24, (v, o, i) => {
        const [name, data] = entries[i]!;
        const cname = cString(name);
        keep.push(cname, data);
        v.setBigUint64(o, ptrOf(cname), true);
        v.setBigUint64(o + 8, ptrOf(data), true);
        v.setBigUint64(o + 16, BigInt(data.length), true);
      });
      keep.push(arr);
      params.setPointer("imatrix", Deno.UnsafePointer.of(arr));
    }
    if (options.tensorTypes && options.tensorTypes.length > 0) {
      const tts = options.tensorTypes;
      // struct llama_model_tensor_override { const char * pattern; enum ggml_type type; }
      const arr = cArray(tts.length, 16, (v, o, i) => {
        const [pattern, type] = tts[i]!;
        const cpattern = cString(pattern);
        keep.push(cpattern);
        v.setBigUint64(o, ptrOf(cpattern), true);
        v.setInt32(o + 8, type, true);
      });
      keep.push(arr);
      params.setPointer("tt_overrides", Deno.UnsafePointer.of(arr));
    }
    return params;
  }
}

/** Options for {@linkcode RefModel.tokenize}. */
export interface TokenizeOptions {
  /** Add BOS/EOS as the vocabulary is configured to (default false). */
  addSpecial?: boolean;
  /** Recognise special-token text such as `<|im_start|>` (default false). */
  parseSpecial?: boolean;
}

/** Options for {@linkcode RefModel.detokenize}. */
export interface DetokenizeOptions {
  /** Drop BOS/EOS as the vocabulary is configured to (default false). */
  removeSpecial?: boolean;
  /** Render special tokens as their text (default false: they render as nothing). */
  unparseSpecial?: boolean;
}

/** The result of {@linkcode RefModel.greedy}. */
export interface GreedyResult {
  /** The generated tokens, `nGen` of them. */
  tokens: number[];
  /** `logits[i]` are the logits that chose `tokens[i]`; `logits[0]` follow the prompt. */
  logits: Float32Array[];
  /** Wall ms of the prompt's evaluation, to its logits (the context already made). */
  prefillMs: number;
  /** Wall ms of the `nGen − 1` decode steps after it. */
  decodeMs: number;
}

/** A model loaded by llama.cpp. Free it with {@linkcode RefModel.close} (or `using`). */
export class RefModel {
  /** The file it was loaded from. */
  readonly path: string;
  /** Vocabulary size = length of each logits vector. */
  readonly nVocab: number;
  /** Embedding width (0 for a vocabulary-only load). */
  readonly nEmbd: number;
  /** Layer count. */
  readonly nLayer: number;
  /** The training context length from the file. */
  readonly nCtxTrain: number;
  /** True if only the vocabulary was loaded. */
  readonly vocabOnly: boolean;
  readonly #lib: LlamaLib;
  readonly #log: LogControl;
  readonly #nCtx: number | undefined;
  readonly #nThreads: number;
  readonly #nGpuLayers: number;
  #model: Deno.PointerObject | null;
  #vocab: Deno.PointerValue;

  /** Wraps a loaded model; use {@linkcode LlamaCpp.loadModel}. */
  constructor(
    lib: LlamaLib,
    log: LogControl,
    path: string,
    model: Deno.PointerObject,
    options: LoadModelOptions,
  ) {
    this.#lib = lib;
    this.#log = log;
    this.path = path;
    this.#model = model;
    this.#vocab = lib.llama_model_get_vocab(model);
    this.nVocab = lib.llama_vocab_n_tokens(this.#vocab);
    this.nEmbd = lib.llama_model_n_embd(model);
    this.nLayer = lib.llama_model_n_layer(model);
    this.nCtxTrain = lib.llama_model_n_ctx_train(model);
    this.vocabOnly = options.vocabOnly ?? false;
    this.#nCtx = options.nCtx;
    this.#nThreads = options.nThreads ?? 1;
    this.#nGpuLayers = options.nGpuLayers ?? 0;
    if (!Number.isInteger(this.#nThreads) || this.#nThreads < 1) {
      throw new RangeError(`nThreads must be a positive integer, got ${options.nThreads}`);
    }
  }

  /** llama.cpp's tokenisation of `text` (`llama_tokenize`). */
  tokenize(text: string, options: TokenizeOptions = {}): number[] {
    this.#open();
    const bytes = new TextEncoder().encode(text);
    const add = options.addSpecial ?? false;
    const parse = options.parseSpecial ?? false;
    let out = new Int32Array(bytes.length + 8);
    let n = this.#lib.llama_tokenize(this.#vocab, bytes, bytes.length, out, out.length, add, parse);
    if (n < 0 && n !== -0x80000000) {
      out = new Int32Array(-n);
      n = this.#lib.llama_tokenize(this.#vocab, bytes, bytes.length, out, out.length, add, parse);
    }
    if (n < 0) throw new Error(`llama_tokenize failed (${n}) on ${bytes.length} bytes of text`);
    return Array.from(out.subarray(0, n));
  }

  /** The bytes of one token's piece (`llama_token_to_piece`); may be part of a UTF-8 character. */
  tokenToBytes(id: number, options: { special?: boolean } = {}): Uint8Array {
    this.#open();
    this.#checkToken(id);
    const special = options.special ?? false;
    let buf = new Uint8Array(64);
    let n = this.#lib.llama_token_to_piece(this.#vocab, id, buf, buf.length, 0, special);
    if (n < 0) {
      buf = new Uint8Array(-n);
      n = this.#lib.llama_token_to_piece(this.#vocab, id, buf, buf.length, 0, special);
    }
    if (n < 0) throw new Error(`llama_token_to_piece failed (${n}) for token ${id}`);
    return buf.slice(0, n);
  }

  /** One token's piece as text (a partial UTF-8 character decodes to U+FFFD). */
  tokenToPiece(id: number, options: { special?: boolean } = {}): string {
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(this.tokenToBytes(id, options));
  }

  /** llama.cpp's text for a token sequence (`llama_detokenize`). */
  detokenize(ids: readonly number[], options: DetokenizeOptions = {}): string {
    this.#open();
    ids.forEach((id) => this.#checkToken(id));
    const tokens = Int32Array.from(ids);
    const remove = options.removeSpecial ?? false;
    const unparse = options.unparseSpecial ?? false;
    let buf = new Uint8Array(ids.length * 8 + 16);
    let n = this.#lib.llama_detokenize(
      this.#vocab,
      tokens,
      tokens.length,
      buf,
      buf.length,
      remove,
      unparse,
    );
    if (n < 0) {
      buf = new Uint8Array(-n);
      n = this.#lib.llama_detokenize(
        this.#vocab,
        tokens,
        tokens.length,
        buf,
        buf.length,
        remove,
        unparse,
      );
    }
    if (n < 0) throw new Error(`llama_detokenize failed (${n}) for ${ids.length} tokens`);
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(buf.subarray(0, n));
  }

  /**
   * The logits at every position of `tokens`, evaluated as one batch from an
   * empty context: `result[i]` predicts the token after `tokens[i]`.
   */
  logits(tokens: readonly number[]): Float32Array[] {
    return this.#withContext(tokens.length, (ctx) => {
      this.#decode(ctx, tokens, 0, true);
      return tokens.map((_, i) => this.#readLogits(ctx, i));
    });
  }

  /**
   * Greedy decoding: the prompt is evaluated as one batch, then each chosen
   * token on its own. Ties go to the lowest token id, as in llama.cpp's greedy
   * sampler.
   */
  greedy(prompt: readonly number[], nGen: number): GreedyResult {
    if (!Number.isInteger(nGen) || nGen < 1) throw new Error(`nGen must be ≥ 1, got ${nGen}`);
    if (prompt.length === 0) throw new Error("greedy needs a prompt of at least one token");
    return this.#withContext(prompt.length + nGen - 1, (ctx) => {
      const tokens: number[] = [];
      const logits: Float32Array[] = [];
      const t0 = performance.now();
      this.#decode(ctx, prompt, 0, false);
      let last = this.#readLogits(ctx, prompt.length - 1);
      const t1 = performance.now();
      for (let step = 0;; step++) {
        logits.push(last);
        const next = argmax(last);
        tokens.push(next);
        if (step === nGen - 1) break;
        this.#decode(ctx, [next], prompt.length + step, true);
        last = this.#readLogits(ctx, 0);
      }
      return { tokens, logits, prefillMs: t1 - t0, decodeMs: performance.now() - t1 };
    });
  }

  /** Frees the model. Further calls throw. Idempotent. */
  close(): void {
    if (this.#model === null) return;
    this.#lib.llama_model_free(this.#model);
    this.#model = null;
    this.#vocab = null;
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #open(): Deno.PointerObject {
    if (this.#model === null) throw new Error(`model ${this.path} is closed`);
    return this.#model;
  }

  #checkToken(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.nVocab) {
      throw new Error(
        `token id ${id} is outside the vocabulary [0, ${this.nVocab}) of ${this.path}`,
      );
    }
  }

  /** Runs `fn` with a fresh single-sequence context for `nTokens` positions. */
  #withContext<T>(nTokens: number, fn: (ctx: Deno.PointerObject) => T): T {
    const model = this.#open();
    if (this.vocabOnly) {
      throw new Error(`${this.path} was loaded vocabOnly: it cannot be evaluated`);
    }
    if (nTokens < 1) throw new Error("need at least one token to evaluate");
    const nCtx = this.#nCtx ?? nTokens;
    if (nTokens > nCtx) {
      throw new Error(`${nTokens} positions do not fit nCtx ${nCtx}; load with a larger nCtx`);
    }
    const params = new CStruct(LAYOUTS.contextParams, this.#lib.llama_context_default_params())
      .set("n_ctx", nCtx)
      .set("n_batch", nCtx)
      .set("n_ubatch", nCtx)
      .set("n_seq_max", 1)
      .set("n_threads", this.#nThreads)
      .set("n_threads_batch", this.#nThreads)
      .set("flash_attn_type", LLAMA_FLASH_ATTN_TYPE_DISABLED)
      .set("type_k", GGML_TYPE_F32)
      .set("type_v", GGML_TYPE_F32)
      // on a GPU build with offloaded layers, the KV cache and attention go with them
      .set("offload_kqv", this.#nGpuLayers > 0)
      .set("op_offload", this.#nGpuLayers > 0)
      .set("embeddings", false);
    const { result: ctx, log } = this.#log.capture(() =>
      this.#lib.llama_init_from_model(model, params.bytes)
    );
    if (ctx === null) {
      throw new Error(
        `llama.cpp could not create a context (n_ctx ${nCtx}) for ${this.path}${
          this.#log.explain(log)
        }`,
      );
    }
    try {
      const got = {
        ctx: this.#lib.llama_n_ctx(ctx),
        threads: this.#lib.llama_n_threads(ctx),
        threadsBatch: this.#lib.llama_n_threads_batch(ctx),
        batch: this.#lib.llama_n_batch(ctx),
        ubatch: this.#lib.llama_n_ubatch(ctx),
      };
      if (
        got.threads !== this.#nThreads || got.threadsBatch !== this.#nThreads ||
        got.ctx < nTokens || got.batch < nTokens ||
        got.ubatch < nTokens
      ) {
        throw new Error(`llama.cpp context ignored its parameters: ${JSON.stringify(got)}`);
      }
      return fn(ctx);
    } finally {
      this.#lib.llama_free(ctx);
    }
  }

  /** Decodes `tokens` at positions `pos0…` in sequence 0; `allLogits` = output every position. */
  #decode(ctx: Deno.PointerObject, tokens: readonly number[], pos0: number, allLogits: boolean) {
    const n = tokens.length;
    tokens.forEach((id) => this.#checkToken(id));
    const token = Int32Array.from(tokens);
    const pos = Int32Array.from(tokens, (_, i) => pos0 + i);
    const nSeqId = new Int32Array(n).fill(1);
    const seq0 = new Int32Array(1); // every token in sequence 0
    const seqIds = new BigUint64Array(n).fill(BigInt(Deno.UnsafePointer.value(ptr(seq0))));
    const outputs = new Int8Array(n);
    if (allLogits) outputs.fill(1);
    else outputs[n - 1] = 1;
    const batch = new CStruct(LAYOUTS.batch)
      .set("n_tokens", n)
      .setPointer("token", ptr(token))
      .setPointer("pos", ptr(pos))
      .setPointer("n_seq_id", ptr(nSeqId))
      .setPointer("seq_id", ptr(seqIds))
      .setPointer("logits", ptr(outputs));
    // Worker threads must not call into JavaScript: capture only when single-threaded.
    const run = () => this.#lib.llama_decode(ctx, batch.bytes);
    const { result: rc, log } = this.#nThreads === 1 && this.#nGpuLayers === 0
      ? this.#log.capture(run)
      : { result: run(), log: [] as string[] };
    if (rc !== 0) {
      throw new Error(
        `llama_decode of ${n} tokens at position ${pos0} failed with code ${rc} ` +
          `(1: no KV slot, 2: aborted, -1: invalid batch, < -1: error)${this.#log.explain(log)}`,
      );
    }
  }

  #readLogits(ctx: Deno.PointerObject, i: number): Float32Array {
    const p = this.#lib.llama_get_logits_ith(ctx, i);
    if (p === null) throw new Error(`llama.cpp has no logits for batch index ${i}`);
    const out = new Float32Array(this.nVocab);
    new Deno.UnsafePointerView(p).copyInto(out);
    return out;
  }
}

function ptr(a: Int32Array | Int8Array | BigUint64Array): Deno.PointerObject {
  const p = Deno.UnsafePointer.of(a);
  if (p === null) throw new Error("cannot take the address of an empty array");
  return p;
}

/** Index of the largest value; the first one on ties. */
function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/**
 * Checks the struct layouts against the defaults llama.cpp returns by value
 * (values from `llama_*_default_params` in src/llama-model.cpp,
 * src/llama-context.cpp and src/llama-quant.cpp at the pinned commit). A
 * mismatch means the libraries are not the version this file was written for.
 */
function checkLayouts(lib: LlamaLib, dir: string): void {
  const expect = <N extends string>(
    what: string,
    s: CStruct<N>,
    want: Partial<Record<N, number>>,
  ) => {
    for (const [name, value] of Object.entries(want) as [N, number][]) {
      const got = s.get(name);
      if (got !== value) {
        throw new Error(
          `${what}.${name} reads ${got}, expected the default ${value}: ` +
            `the llama.cpp libraries in ${dir} do not match the layouts in dev/ref/llama_cpp.ts`,
        );
      }
    }
  };
  expect("llama_model_params", new CStruct(LAYOUTS.modelParams, lib.llama_model_default_params()), {
    devices: 0,
    n_gpu_layers: -1,
    split_mode: 1,
    load_mode: -1,
    lazy_mode: 1,
    main_gpu: 0,
    vocab_only: 0,
    use_extra_bufts: 1,
    load_mtp: 0,
  });
  expect(
    "llama_context_params",
    new CStruct(LAYOUTS.contextParams, lib.llama_context_default_params()),
    {
      n_ctx: 512,
      n_batch: 2048,
      n_ubatch: 512,
      n_seq_max: 1,
      n_outputs_max_per_seq: 1,
      n_threads: 4,
      n_threads_batch: 4,
      rope_scaling_type: -1,
      flash_attn_type: -1,
      yarn_ext_factor: -1,
      defrag_thold: -1,
      type_k: GGML_TYPE_F16,
      type_v: GGML_TYPE_F16,
      embeddings: 0,
      offload_kqv: 1,
      swa_full: 1,
      kv_unified: 0,
      n_samplers: 0,
      ctx_other: 0,
    },
  );
  expect(
    "llama_model_quantize_params",
    new CStruct(LAYOUTS.quantizeParams, lib.llama_model_quantize_default_params()),
    {
      nthread: 0,
      ftype: LlamaFtype.MOSTLY_Q8_0,
      output_tensor_type: GGML_TYPE_COUNT,
      token_embedding_type: GGML_TYPE_COUNT,
      allow_requantize: 0,
      quantize_output_tensor: 1,
      dry_run: 0,
      imatrix: 0,
      max_buf_size: 8 * 1024 ** 3,
    },
  );
}

/**
 * llama.cpp's log routing. By default the log goes to a native function that
 * does nothing; around single-threaded calls (model load, context creation,
 * decode with one thread, single-threaded quantize) a JavaScript callback
 * collects it for error messages. A JavaScript callback must never be
 * installed while llama.cpp runs worker threads: Deno runs foreign-thread
 * callbacks on the main thread, which is blocked in the FFI call — a deadlock.
 * With {@linkcode VERBOSE_ENV} set, llama.cpp logs to stderr as usual.
 */
class LogControl {
  readonly verbose: boolean;
  readonly #lib: LlamaLib;
  readonly #noop: Deno.PointerValue = null;
  #lines: string[] = [];
  #collector: Deno.UnsafeCallback<typeof LOG_CALLBACK> | undefined;

  constructor(lib: LlamaLib) {
    this.#lib = lib;
    this.verbose = verboseRequested();
    if (this.verbose) return;
    // llama_log_set(NULL) means "stderr", so silence needs a real function.
    // getpid takes no arguments and has no effect; the x86-64 calling
    // convention makes it safe to call with the callback's three.
    const libc = Deno.dlopen("libc.so.6", {
      dlsym: { parameters: ["pointer", "buffer"], result: "pointer" },
    });
    this.#noop = libc.symbols.dlsym(null, cString("getpid")); // RTLD_DEFAULT
    if (this.#noop === null) throw new Error("dlsym(RTLD_DEFAULT, getpid) failed");
    lib.llama_log_set(this.#noop, null);
  }

  /** Runs a single-threaded llama.cpp call, returning its result and the log it wrote. */
  capture<T>(fn: () => T): { result: T; log: string[] } {
    if (this.verbose) return { result: fn(), log: [] };
    this.#collector ??= new Deno.UnsafeCallback(LOG_CALLBACK, (level, text) => {
      if (text === null) return;
      const s = Deno.UnsafePointerView.getCString(text);
      if (level === GGML_LOG_LEVEL_CONT && this.#lines.length > 0) {
        this.#lines[this.#lines.length - 1] += s;
      } else {
        this.#lines.push(`${level >= GGML_LOG_LEVEL_WARN ? "!" : " "}${s}`);
      }
      if (this.#lines.length > 400) this.#lines.splice(0, 200);
    });
    this.#lines = [];
    this.#lib.llama_log_set(this.#collector.pointer, null);
    try {
      return { result: fn(), log: this.#lines };
    } finally {
      this.#lib.llama_log_set(this.#noop, null);
      this.#lines = [];
    }
  }

  /** The tail of a captured log for an error message, warnings and errors first. */
  explain(log: string[]): string {
    if (this.verbose) return " (its log is above)";
    if (log.length === 0) return ` (set ${VERBOSE_ENV}=1 to see llama.cpp's log)`;
    const important = log.filter((l) => l.startsWith("!")).map((l) => l.slice(1).trimEnd());
    const tail = (important.length > 0 ? important : log.map((l) => l.slice(1).trimEnd()))
      .slice(-12);
    return `; llama.cpp said:\n  ${tail.join("\n  ")}`;
  }
}
