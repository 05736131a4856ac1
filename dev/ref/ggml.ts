/**
 * ggml itself as a test oracle: `Deno.dlopen` of libggml-base.so from the
 * pinned `@node-llama-cpp/linux-x64` package (llama.cpp release v0.4.0).
 *
 * Gives ggml's own dequantisers (`to_float` of `ggml_get_type_traits`), its
 * quantiser (`ggml_quantize_chunk`, to make real blocks from floats) and its
 * half/bfloat16 conversions. Tests call {@link ggmlUnavailableReason} first
 * and skip, saying why, where the library cannot be loaded.
 *
 * @module
 */

const LIB_PATH = new URL(
  "../../node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so",
  import.meta.url,
);

const symbols = {
  ggml_get_type_traits: { parameters: ["i32"], result: "pointer" },
  ggml_quantize_init: { parameters: ["i32"], result: "void" },
  ggml_quantize_requires_imatrix: { parameters: ["i32"], result: "bool" },
  ggml_quantize_chunk: {
    parameters: ["i32", "buffer", "buffer", "i64", "i64", "i64", "buffer"],
    result: "usize",
  },
  ggml_row_size: { parameters: ["i32", "i64"], result: "usize" },
  ggml_fp32_to_fp16_row: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  ggml_fp32_to_bf16_row_ref: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  ggml_fp16_to_fp32_row: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  // Exported but absent from the type traits (Q8_K is a dot-product operand).
  dequantize_row_q8_K: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  quantize_row_q8_K_ref: { parameters: ["buffer", "buffer", "i64"], result: "void" },
} as const;

type Lib = Deno.DynamicLibrary<typeof symbols>;

const rowFn = { parameters: ["buffer", "buffer", "i64"], result: "void" } as const;
type RowFn = Deno.UnsafeFnPointer<typeof rowFn>;

interface Traits {
  typeName: string;
  blockSize: number;
  typeSize: number;
  isQuantized: boolean;
  toFloat: RowFn | null;
  fromFloatRef: RowFn | null;
}

let lib: Lib | null = null;
let loadError: string | null = null;
let tried = false;
const traitsCache = new Map<number, Traits>();

function load(): Lib | null {
  if (tried) return lib;
  tried = true;
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    loadError =
      `the reference ggml build is Linux x86-64 only (this is ${Deno.build.os} ${Deno.build.arch})`;
    return null;
  }
  const path = decodeURIComponent(LIB_PATH.pathname);
  try {
    Deno.statSync(path);
  } catch (e) {
    loadError = e instanceof Deno.errors.NotFound
      ? `${path} is missing: run \`deno install\` to fetch @node-llama-cpp/linux-x64`
      : `cannot read ${path} (needs --allow-read): ${(e as Error).message}`;
    return null;
  }
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (e) {
    loadError = `cannot dlopen ${path} (needs --allow-ffi): ${(e as Error).message}`;
  }
  return lib;
}

/** Why the ggml reference cannot be used here, or `null` when it can. */
export function ggmlUnavailableReason(): string | null {
  load();
  return loadError;
}

function need(): Lib {
  const l = load();
  if (!l) throw new Error(`ggml reference unavailable: ${loadError}`);
  return l;
}

function readTraits(type: number): Traits {
  const cached = traitsCache.get(type);
  if (cached) return cached;
  const ptr = need().symbols.ggml_get_type_traits(type);
  if (!ptr) throw new Error(`ggml_get_type_traits(${type}) returned NULL`);
  // struct ggml_type_traits (ggml.h): type_name char*, blck_size i64,
  // blck_size_interleave i64, type_size size_t, is_quantized bool,
  // to_float fn*, from_float_ref fn*.
  const view = new Deno.UnsafePointerView(ptr);
  const namePtr = view.getPointer(0);
  const fn = (offset: number): RowFn | null => {
    const p = view.getPointer(offset);
    return p ? new Deno.UnsafeFnPointer(p as Deno.PointerObject<typeof rowFn>, rowFn) : null;
  };
  const traits: Traits = {
    typeName: namePtr ? Deno.UnsafePointerView.getCString(namePtr) : `type#${type}`,
    blockSize: Number(view.getBigInt64(8)),
    typeSize: Number(view.getBigUint64(24)),
    isQuantized: view.getUint8(32) !== 0,
    toFloat: fn(40),
    fromFloatRef: fn(48),
  };
  traitsCache.set(type, traits);
  return traits;
}

/** ggml's own name, block size and bytes per block for a type id. */
export function ggmlTraits(
  type: number,
): { typeName: string; blockSize: number; typeSize: number; isQuantized: boolean } {
  const { typeName, blockSize, typeSize, isQuantized } = readTraits(type);
  return { typeName, blockSize, typeSize, isQuantized };
}

/** True if ggml can decode this type (it has `to_float`, or is F32 or Q8_K). */
export function ggmlCanDequantize(type: number): boolean {
  return type === 0 || type === 15 || readTraits(type).toFloat !== null;
}

/**
 * ggml's dequantisation of `n` elements of type `type` from `bytes`.
 * F32 is a copy; Q8_K, which has no `to_float` in the traits, goes through the
 * exported `dequantize_row_q8_K`.
 */
export function ggmlToFloat(type: number, bytes: Uint8Array, n: number): Float32Array {
  const t = readTraits(type);
  if (n % t.blockSize !== 0) {
    throw new RangeError(
      `ggmlToFloat: ${n} is not a multiple of ${t.typeName} blocks of ${t.blockSize}`,
    );
  }
  const needBytes = (n / t.blockSize) * t.typeSize;
  if (bytes.length < needBytes) {
    throw new RangeError(
      `ggmlToFloat: ${n} ${t.typeName} elements need ${needBytes} bytes, got ${bytes.length}`,
    );
  }
  const out = new Float32Array(n);
  if (type === 0) {
    new Uint8Array(out.buffer).set(bytes.subarray(0, n * 4));
    return out;
  }
  if (type === 15) {
    need().symbols.dequantize_row_q8_K(bytes, out, BigInt(n));
    return out;
  }
  if (!t.toFloat) throw new Error(`ggml has no to_float for ${t.typeName}`);
  t.toFloat.call(bytes, out, BigInt(n));
  return out;
}

/** True if `ggml_quantize_chunk` refuses this type without an importance matrix. */
export function ggmlRequiresImatrix(type: number): boolean {
  return need().symbols.ggml_quantize_requires_imatrix(type);
}

/**
 * Quantises `nRows` rows of `nPerRow` floats with ggml, as llama-quantize
 * does (`ggml_quantize_chunk`). `imatrix` holds `nPerRow` importance weights;
 * types that require one throw without it. Q8_1 and Q8_K, which the chunk
 * quantiser does not take, go through their reference row quantisers.
 */
export function ggmlQuantize(
  type: number,
  data: Float32Array,
  nRows: number,
  nPerRow: number,
  imatrix?: Float32Array,
): Uint8Array {
  const l = need();
  if (data.length < nRows * nPerRow) {
    throw new RangeError(`ggmlQuantize: ${nRows}×${nPerRow} floats needed, got ${data.length}`);
  }
  const t = readTraits(type);
  if (nPerRow % t.blockSize !== 0) {
    throw new RangeError(
      `ggmlQuantize: row of ${nPerRow} is not a multiple of ${t.typeName} blocks of ${t.blockSize}`,
    );
  }
  const size = Number(l.symbols.ggml_row_size(type, BigInt(nPerRow))) * nRows;
  const out = new Uint8Array(size);
  const n = BigInt(nRows * nPerRow);
  if (type === 15) {
    l.symbols.quantize_row_q8_K_ref(data, out, n);
    return out;
  }
  if (type === 9) {
    if (!t.fromFloatRef) throw new Error("ggml has no from_float_ref for q8_1");
    t.fromFloatRef.call(data, out, n);
    return out;
  }
  if (l.symbols.ggml_quantize_requires_imatrix(type) && !imatrix) {
    throw new Error(`ggmlQuantize: ${t.typeName} needs an importance matrix`);
  }
  if (imatrix && imatrix.length < nPerRow) {
    throw new RangeError(`ggmlQuantize: imatrix has ${imatrix.length} weights, need ${nPerRow}`);
  }
  l.symbols.ggml_quantize_init(type);
  const written = l.symbols.ggml_quantize_chunk(
    type,
    data,
    out,
    0n,
    BigInt(nRows),
    BigInt(nPerRow),
    imatrix ?? null,
  );
  if (Number(written) !== size) {
    throw new Error(
      `ggml_quantize_chunk wrote ${written} bytes for ${t.typeName}, expected ${size}`,
    );
  }
  return out;
}

/** ggml's float → half, element by element (`ggml_fp32_to_fp16_row`). */
export function ggmlF32ToF16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  need().symbols.ggml_fp32_to_fp16_row(data, out, BigInt(data.length));
  return out;
}

/** ggml's float → bfloat16, element by element (`ggml_fp32_to_bf16_row_ref`). */
export function ggmlF32ToBf16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  need().symbols.ggml_fp32_to_bf16_row_ref(data, out, BigInt(data.length));
  return out;
}

/** ggml's half → float, element by element (`ggml_fp16_to_fp32_row`). */
export function ggmlF16ToF32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  need().symbols.ggml_fp16_to_fp32_row(halves, out, BigInt(halves.length));
  return out;
}
