/**
 * Quantised matrix products on the GPU, prepared once at build time:
 * {@linkcode prepareMatmul} (`y = W·x`, ggml's mul_mat) and
 * {@linkcode prepareMatmulId} (ggml's mul_mat_id, the routed experts).
 * Weights stay in their ggml type and are dequantised in registers
 * (`shaders/quant.wgsl`); products accumulate in f32.
 *
 * Each chunk of a weight gets two kernels: `matvec` for decode-sized batches
 * (one workgroup per few rows and few tokens, memory-bound) and `tiled` for
 * prefill (a tile of rows × tokens per workgroup, so each weight is read once
 * per 32 tokens). Both are returned as ops; the one that does not fit the
 * batch size dispatches no workgroups. Workgroup shapes and the switch point
 * default per adapter ({@linkcode defaultMatmulTuning}).
 *
 * @module
 */

import { ParamsBuffer } from "../buffers.ts";
import type { Gpu } from "../device.ts";
import type { BufferBinding } from "../dispatch.ts";
import { getPipeline, type Kernel } from "../pipeline.ts";
import type { ActView, GpuWeight, Op, WeightChunk } from "./op.ts";
import {
  isGpuWeightType,
  kernelBlockSize,
  quantTableBuffer,
  quantVariant,
  quantWgsl,
  rowAlignment,
  UnsupportedWeightTypeError,
  usesQuantTable,
} from "./quant_wgsl.ts";
import { bindView, bindWeightChunk, type ViewBinding, type WeightBinding } from "./weights.ts";
import type { GgmlTypeInfo } from "../../gguf/types.ts";
import type { EntryLists } from "./entry_lists.ts";

/** Tunables of the matrix kernels (WGSL override constants and the path switch). */
export interface MatmulTuning {
  /**
   * The matvec kernel: `"tree"` (the invocations of a workgroup share a
   * row's pieces and tree-reduce in workgroup memory, the GPU kernel) or
   * `"rows"` (each invocation owns `rowsMatvec` whole rows: no workgroup
   * memory, no barriers; for CPU adapters).
   */
  readonly matvecKernel: MatvecKernel;
  /**
   * Read x as vec4s (one load per 4 values) when every x offset and stride
   * of the op is a multiple of 4 and its binding holds whole vec4s; else,
   * or when false, as f32s.
   */
  readonly vectorX: boolean;
  /** matvec: invocations per workgroup, a power of two. */
  readonly wgMatvec: number;
  /** matvec: rows per workgroup (`tree`) or per invocation (`rows`), 1 to 8. */
  readonly rowsMatvec: number;
  /**
   * `rows` kernel: rows per invocation of the generated one-entry kernel
   * (`matvec_rows1`, decode), 1 to 32; default `rowsMatvec`. More rows share
   * each load of x (on llvmpipe a load is made lane by lane even where every
   * lane reads the same address). A number, or one per ggml type name
   * (`{ Q4_K: 32 }`; types not named take `rowsMatvec`).
   */
  readonly rowsMatvec1?: RowsPerType;
  /**
   * `rows` kernel: rows per invocation of the generated many-token kernels
   * (`matvec_rowsT`, `matvec_routedT`), 1 to 32, as `rowsMatvec1`.
   */
  readonly rowsMatvecT?: RowsPerType;
  /** matvec: tokens per workgroup of a plain matmul (weights dequantised once for them), 1 to 8. */
  readonly tokensMatvec: number;
  /** tiled: rows per workgroup, a multiple of 4. */
  readonly tileRows: number;
  /** tiled: tokens (entries) per workgroup, a multiple of 4. */
  readonly tileTokens: number;
  /** tiled: rows per invocation, 4 or 8. */
  readonly threadRows: number;
  /** tiled: tokens per invocation, 4 or 8. */
  readonly threadTokens: number;
  /** Batches of at most this many tokens take the matvec kernel, larger ones the tiled. */
  readonly matvecMaxTokens: number;
  /**
   * `matvecMaxTokens` for the weights whose `rows` kernel has the unrolled
   * many-token form (`matvec_rowsT`: Q4_K, Q6_K, Q8_0, MXFP4), which on a CPU
   * adapter beats the tiled kernel at any batch size measured (64 and 256
   * tokens); default `matvecMaxTokens`.
   */
  readonly rowsTMaxTokens?: number;
  /** Folder of the `.wgsl` files (benchmarks compare kernel versions); default `shaders/`. */
  readonly baseUrl?: URL;
  /**
   * mul_mat_id: batches up to this many tokens run the per-(token, slot)
   * matvec instead of the routed tiles. Routed tiles pad each expert's
   * rows to `tileTokens`; with many experts and few rows each, that
   * padding is most of the work on an adapter that is compute-bound.
   */
  readonly idMatvecMaxTokens: number;
  /**
   * mul_mat_id: larger batches too run the per-(token, slot) matvec while
   * they average fewer than this many entries per matrix (over
   * {@linkcode MatmulIdOptions.nChoices} matrices); default 0. Where the
   * routed tiles hold few entries, most of their work is padding.
   */
  readonly idRoutedMinEntries?: number;
  /**
   * `idMatvecMaxTokens` for the weights whose routed kernel is the unrolled
   * `matvec_routedT` (the `rowsTMaxTokens` types), which on a CPU adapter
   * beats the per-entry matvec from a few entries a matrix; default
   * `idMatvecMaxTokens`.
   */
  readonly idRoutedTMaxTokens?: number;
}

/** Rows per invocation: one count, or one per ggml type name. */
export type RowsPerType = number | Readonly<Record<string, number>>;

/** The matvec kernels of `shaders/matmul.wgsl` (see {@linkcode MatmulTuning.matvecKernel}). */
export type MatvecKernel = "tree" | "rows";

/**
 * The default tuning for GPUs: 128 invocations reduce 4 rows (a workgroup
 * reads 4 rows' blocks side by side, coalesced), 4 tokens per matvec
 * workgroup, 64 × 32 tiles for prefill from 9 tokens on.
 */
export const DEFAULT_MATMUL_TUNING: MatmulTuning = Object.freeze({
  matvecKernel: "tree",
  vectorX: false,
  wgMatvec: 128,
  rowsMatvec: 4,
  tokensMatvec: 4,
  tileRows: 64,
  tileTokens: 32,
  threadRows: 4,
  threadTokens: 4,
  matvecMaxTokens: 8,
  idMatvecMaxTokens: 8,
});

/**
 * The default tuning for CPU (software) adapters such as llvmpipe, where a
 * workgroup runs as coroutines over one SIMD vector and every barrier
 * switches between them: 8 invocations a workgroup (one AVX2 vector), each
 * owning 8 whole rows (the `rows` matvec: no barriers, the x loads shared by
 * the vector's lanes and the rows, a block's scales read once; for one entry
 * the rows are unrolled and Q4_K / Q6_K read as 16-byte vectors, see
 * {@linkcode rowsMatvecWgsl} and bench/README.md), and the matvec kernel (8
 * tokens a workgroup) beats the tiled one up to about 24 tokens — at any
 * batch size for the types with {@linkcode rowsTokensWgsl}'s form.
 */
export const SOFTWARE_MATMUL_TUNING: MatmulTuning = Object.freeze({
  matvecKernel: "rows",
  vectorX: true,
  wgMatvec: 8,
  rowsMatvec: 8,
  tokensMatvec: 8,
  tileRows: 64,
  tileTokens: 32,
  threadRows: 4,
  threadTokens: 4,
  matvecMaxTokens: 24,
  rowsTMaxTokens: 4096,
  idMatvecMaxTokens: 256,
  // routed tiles (matvec_routedT) from about 6 entries a matrix: 128 experts top-8, 512 tokens,
  // 9.3 vs 5.2 GMAC/s; 64 tokens (4 an expert) 4.3 vs 5.2 (bench/README.md, "entry lists")
  idRoutedTMaxTokens: 24,
  idRoutedMinEntries: 6,
  // More rows an invocation share each x load (made lane by lane on llvmpipe): the best
  // counts measured per type (bench/README.md, "rows per invocation"), the many-token ones
  // held where llvmpipe's compile time grows past a few seconds (Q6_K at 16 rows: 19 s).
  rowsMatvec1: { Q4_K: 32, Q6_K: 16 },
  rowsMatvecT: { Q4_K: 16, Q8_0: 32, MXFP4: 16 },
});

/** What a {@linkcode MatmulProfile} is chosen by: the adapter's info and the device's features. */
export interface AdapterTraits {
  /** The adapter's vendor, architecture, device and description strings, and fallback flag. */
  readonly info:
    & Pick<
      GPUAdapterInfo,
      "vendor" | "architecture" | "device" | "description"
    >
    & { readonly isFallbackAdapter?: boolean };
  /** The optional features enabled on the device. */
  readonly features: ReadonlySet<string>;
}

/** One row of {@linkcode MATMUL_PROFILES}: a name, which adapters it is for, its tuning. */
export interface MatmulProfile {
  /** Name for logs and for `ODMOE_MATMUL_PROFILE`. */
  readonly name: string;
  /** Whether this row is for the adapter. */
  readonly matches: (adapter: AdapterTraits) => boolean;
  /** The tuning the kernels are built with. */
  readonly tuning: MatmulTuning;
}

/** Whether the adapter is a CPU implementation of WebGPU (llvmpipe, lavapipe, SwiftShader, WARP). */
export function isSoftwareTraits(adapter: AdapterTraits): boolean {
  const info = adapter.info;
  return info.isFallbackAdapter === true ||
    /llvmpipe|lavapipe|swiftshader|softpipe|\bwarp\b|microsoft basic render/i.test(
      `${info.description} ${info.vendor} ${info.architecture} ${info.device}`,
    );
}

/**
 * The matrix kernels' tuning per kind of adapter, first match wins; the last
 * row matches every adapter. Rows for particular GPUs go before `gpu` once
 * they are measured there (bench/matmul.ts `--variants`); a row for a CPU
 * adapter must never be chosen for a GPU.
 */
export const MATMUL_PROFILES: readonly MatmulProfile[] = Object.freeze([
  { name: "software", matches: isSoftwareTraits, tuning: SOFTWARE_MATMUL_TUNING },
  { name: "gpu", matches: () => true, tuning: DEFAULT_MATMUL_TUNING },
]);

/**
 * The row of {@linkcode MATMUL_PROFILES} for an adapter, or the one named by
 * `force` (tests and benchmarks run every row on one machine; the
 * `ODMOE_MATMUL_PROFILE` environment variable sets it for a whole process).
 *
 * @throws {RangeError} when `force` names no row.
 */
export function chooseMatmulProfile(adapter: AdapterTraits, force?: string): MatmulProfile {
  if (force !== undefined && force !== "") {
    const row = MATMUL_PROFILES.find((p) => p.name === force);
    if (!row) {
      throw new RangeError(
        `matmul profile "${force}" (ODMOE_MATMUL_PROFILE) is not one of ` +
          `${MATMUL_PROFILES.map((p) => p.name).join(", ")}.`,
      );
    }
    return row;
  }
  return MATMUL_PROFILES.find((p) => p.matches(adapter))!;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: the adapter decides
  }
}

/** The profile the matrix kernels of `gpu` are built with (see {@linkcode chooseMatmulProfile}). */
export function matmulProfile(gpu: Gpu): MatmulProfile {
  return chooseMatmulProfile(
    { info: gpu.adapterInfo, features: gpu.features },
    env("ODMOE_MATMUL_PROFILE"),
  );
}

/** Whether `gpu` is a CPU implementation of WebGPU (llvmpipe, lavapipe, SwiftShader, WARP). */
export function isSoftwareAdapter(gpu: Gpu): boolean {
  return isSoftwareTraits({ info: gpu.adapterInfo, features: gpu.features });
}

/**
 * The default tuning for this adapter: its {@linkcode matmulProfile}'s, with
 * the matvec kernel replaced by `ODMOE_MATVEC` (`tree` or `rows`) when set,
 * so that a whole test or benchmark run can take the other kernel.
 *
 * @throws {RangeError} when `ODMOE_MATVEC` names no kernel.
 */
export function defaultMatmulTuning(gpu: Gpu): MatmulTuning {
  const tuning = matmulProfile(gpu).tuning;
  const kernel = env("ODMOE_MATVEC");
  if (kernel === undefined || kernel === "") return tuning;
  if (kernel !== "tree" && kernel !== "rows") {
    throw new RangeError(`ODMOE_MATVEC "${kernel}" is not tree or rows.`);
  }
  return { ...tuning, matvecKernel: kernel };
}

/** Options of {@linkcode prepareMatmul}. */
export interface MatmulOptions {
  /** The weight, `[nRows, nCols]` (one matrix, any number of chunks). */
  readonly w: GpuWeight;
  /** Input, f32 `[T, nCols]`. May share a buffer with `y` (disjoint ranges). */
  readonly x: ActView;
  /** Output, f32 `[T, nRows]`. */
  readonly y: ActView;
  /** The step buffer (STORAGE usage); the kernels read `T` at `STEP.nTokens`. */
  readonly step: GPUBuffer;
  /** `y += W·x` instead of `y = W·x`. */
  readonly accumulate?: boolean;
  /** Name for errors and timings. */
  readonly label: string;
  /** Override tunables (tests force a path with `matvecMaxTokens`). */
  readonly tuning?: Partial<MatmulTuning>;
}

/** A view of u32 ids: `offset` (first element) and `stride` (elements between tokens). */
export interface IdsView {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** First element. */
  readonly offset: number;
  /** Elements between tokens; default the number of ids per token. */
  readonly stride?: number;
}

/** Options of {@linkcode prepareMatmulId}. */
export interface MatmulIdOptions {
  /** A stack of `nMats` matrices `[nRows, nCols]`, one chunk. */
  readonly w: GpuWeight;
  /** Matrix ids, u32 `[T, nUsed]`. */
  readonly ids: IdsView;
  /**
   * The id of matrix 0 of `w` (default 0). Entries whose id is outside
   * `[idBase, idBase + nMats)` are skipped and their `y` left untouched, so
   * several stacks (pool arenas) can serve one batch, one op list each.
   */
  readonly idBase?: number;
  /** Slots (chosen matrices) per token. */
  readonly nUsed: number;
  /** Input: f32 `[T, nCols]` shared by every slot, or `[T, nUsed, nCols]` when `xPerSlot`. */
  readonly x: ActView;
  /** Whether each slot has its own input row (down projection) or all share one (gate, up). */
  readonly xPerSlot: boolean;
  /** Elements between the slots of a token's x when `xPerSlot`; default `w.nCols`. */
  readonly xSlotStride?: number;
  /** Output, f32 `[T, nUsed, nRows]`. */
  readonly y: ActView;
  /** Elements between the slots of a token's y; default `w.nRows`. */
  readonly ySlotStride?: number;
  /** The step buffer (STORAGE usage); `T` at `STEP.nTokens`. */
  readonly step: GPUBuffer;
  /** `y += W·x` instead of `y = W·x`. */
  readonly accumulate?: boolean;
  /**
   * Largest batch the op will be recorded for (sizes the routing scratch
   * buffer); default what `y`'s buffer can hold.
   */
  readonly maxTokens?: number;
  /** Name for errors and timings. */
  readonly label: string;
  /** Override tunables. */
  readonly tuning?: Partial<MatmulTuning>;
  /**
   * Matrices the ids choose among, for the path choice of
   * {@linkcode MatmulTuning.idRoutedMinEntries} (a layer's experts, when
   * this stack is one of several); default `w.nMats`.
   */
  readonly nChoices?: number;
  /**
   * The batch's entries listed per stack ({@linkcode prepareEntryLists}),
   * this stack being `stack` of them: the one-entry matvec then runs over
   * this stack's entries only, dispatched indirectly.
   */
  readonly entryLists?: { readonly lists: EntryLists; readonly stack: number };
}

const PARAMS_LAYOUT = {
  w_off: "u32",
  row_bytes: "u32",
  mat_stride: "u32",
  n_rows: "u32",
  n_cols: "u32",
  n_used: "u32",
  n_mats: "u32",
  id_base: "u32",
  ids_off: "u32",
  ids_stride: "u32",
  x_off: "u32",
  x_stride: "u32",
  x_slot: "u32",
  y_off: "u32",
  y_stride: "u32",
  y_slot: "u32",
  accumulate: "u32",
  tiles_off: "u32",
  sorted_off: "u32",
  list: "u32",
} as const;

type MatmulParams = Record<keyof typeof PARAMS_LAYOUT, number>;

function resolveTuning(
  gpu: Gpu,
  t: Partial<MatmulTuning> | undefined,
  label: string,
): MatmulTuning {
  const out = { ...defaultMatmulTuning(gpu), ...t };
  // A caller forcing a path with matvecMaxTokens forces it for mul_mat_id too.
  if (t?.matvecMaxTokens !== undefined && t.idMatvecMaxTokens === undefined) {
    out.idMatvecMaxTokens = t.matvecMaxTokens;
  }
  // ... and a caller forcing mul_mat_id's path by its token count forces it whatever the routing.
  if (t?.matvecMaxTokens !== undefined || t?.idMatvecMaxTokens !== undefined) {
    if (t.idRoutedMinEntries === undefined) out.idRoutedMinEntries = 0;
    if (t.idRoutedTMaxTokens === undefined) out.idRoutedTMaxTokens = out.idMatvecMaxTokens;
  }
  if (t?.matvecMaxTokens !== undefined && t.rowsTMaxTokens === undefined) {
    out.rowsTMaxTokens = t.matvecMaxTokens;
  }
  if (out.matvecKernel !== "tree" && out.matvecKernel !== "rows") {
    throw new RangeError(
      `${label}: tuning matvecKernel "${out.matvecKernel}" is not tree or rows.`,
    );
  }
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  const bad = (what: string) => new RangeError(`${label}: tuning ${what}.`);
  if (!pow2(out.wgMatvec)) throw bad(`wgMatvec ${out.wgMatvec} is not a power of two`);
  for (
    const [k, v] of [["rowsMatvec", out.rowsMatvec], ["tokensMatvec", out.tokensMatvec]] as const
  ) {
    if (!(Number.isInteger(v) && v >= 1 && v <= 8)) throw bad(`${k} ${v} is not 1..8`);
  }
  for (const k of ["rowsMatvec1", "rowsMatvecT"] as const) {
    const v = out[k];
    const counts = v === undefined ? [] : typeof v === "number" ? [v] : Object.values(v);
    for (const n of counts) {
      if (!(Number.isInteger(n) && n >= 1 && n <= 32)) throw bad(`${k} ${n} is not 1..32`);
    }
  }
  for (
    const [k, v] of [["threadRows", out.threadRows], ["threadTokens", out.threadTokens]] as const
  ) {
    if (v !== 4 && v !== 8) throw bad(`${k} ${v} is not 4 or 8`);
  }
  for (
    const [k, v, per] of [
      ["tileRows", out.tileRows, out.threadRows],
      ["tileTokens", out.tileTokens, out.threadTokens],
    ] as const
  ) {
    if (!(Number.isInteger(v) && v >= per && v % per === 0)) {
      throw bad(`${k} ${v} is not a multiple of ${per}`);
    }
  }
  const limits = gpu.limits;
  const tiledThreads = (out.tileRows / out.threadRows) * (out.tileTokens / out.threadTokens);
  for (const [what, n] of [["matvec", out.wgMatvec], ["tiled", tiledThreads]] as const) {
    if (n > limits.maxComputeInvocationsPerWorkgroup || n > limits.maxComputeWorkgroupSizeX) {
      throw bad(`${what} workgroup of ${n} invocations exceeds this device's limits`);
    }
  }
  // Tiles of 32 columns padded to 36 (matmul.wgsl's TS), the tile's entry list; the reduction.
  const tiledBytes = 16 * 9 * (out.tileRows + out.tileTokens) + 4 * out.tileTokens;
  const matvecBytes = out.matvecKernel === "rows"
    ? 0
    : 4 * out.wgMatvec * out.rowsMatvec * out.tokensMatvec;
  for (const [what, n] of [["matvec", matvecBytes], ["tiled", tiledBytes]] as const) {
    if (n > limits.maxComputeWorkgroupStorageSize) {
      throw bad(
        `${what} needs ${n} bytes of workgroup memory, over this device's ` +
          `${limits.maxComputeWorkgroupStorageSize}`,
      );
    }
  }
  if (out.tileTokens >= 1 << 16) throw bad(`tileTokens ${out.tileTokens} is over 65535`);
  for (
    const k of [
      "matvecMaxTokens",
      "idMatvecMaxTokens",
      "rowsTMaxTokens",
      "idRoutedMinEntries",
      "idRoutedTMaxTokens",
    ] as const
  ) {
    if (out[k] === undefined) continue;
    if (!(Number.isInteger(out[k]) && out[k] >= 0)) throw bad(`${k} ${out[k]} is not a count`);
  }
  return out;
}

function checkWeight(w: GpuWeight, label: string): void {
  if (!isGpuWeightType(w.type.id)) throw new UnsupportedWeightTypeError(w.name, w.type.id);
  const bs = kernelBlockSize(w.type);
  if (w.type.quantized && w.nCols % bs !== 0) {
    throw new RangeError(
      `${label}: weight "${w.name}" has rows of ${w.nCols} ${w.type.name} elements, not a ` +
        `whole number of ${bs}-element blocks.`,
    );
  }
  const a = rowAlignment(w.type);
  if (w.rowBytes % a !== 0 || (w.nMats > 1 && w.matStride % a !== 0)) {
    throw new RangeError(
      `${label}: weight "${w.name}" (${w.type.name}) has rowBytes ${w.rowBytes} / matStride ` +
        `${w.matStride} not multiples of ${a}.`,
    );
  }
  for (const c of w.chunks) {
    if (c.byteOffset % a !== 0) {
      throw new RangeError(
        `${label}: weight "${w.name}" (${w.type.name}) chunk at rows ${c.rowStart}.. starts at ` +
          `byte ${c.byteOffset}, not a multiple of ${a}.`,
      );
    }
  }
}

/** Throws unless `step` can be bound as a storage buffer. */
export function checkStepBuffer(step: GPUBuffer, label: string): void {
  if ((step.usage & GPUBufferUsage.STORAGE) === 0) {
    throw new TypeError(
      `${label}: the step buffer "${step.label}" lacks STORAGE usage; the kernels bind it ` +
        `as a read-only storage buffer (create it with createBuffer's default usage).`,
    );
  }
}

function checkView(v: { offset: number; stride?: number }, what: string, label: string): void {
  const ok = (n: number | undefined) => n === undefined || (Number.isSafeInteger(n) && n >= 0);
  if (!ok(v.offset) || !ok(v.stride)) {
    throw new RangeError(`${label}: ${what} offset/stride must be non-negative integers.`);
  }
}

interface Kernels {
  /** The matvec kernel for one token (decode). */
  readonly matvec: Kernel;
  /** The matvec kernel for `tokensMatvec` tokens a workgroup (the same as `matvec` when 1). */
  readonly matvecTokens: Kernel;
  readonly tiled: Kernel;
  /** Whether `matvecTokens` is the unrolled `matvec_rowsT`. */
  readonly rowsT: boolean;
  /** mul_mat_id's `matvec_routedT` over route tiles, where asked for and the type has it. */
  readonly routedT?: Kernel;
}

/**
 * Whether x can be bound as vec4s: the tuning asks for it, every element
 * offset the kernels add (binding offset, token stride, slot stride) is a
 * multiple of 4, and the binding's size is a multiple of 16 bytes.
 */
function vectorX(t: MatmulTuning, x: ViewBinding, strides: readonly number[]): boolean {
  const b = x.binding;
  const size = b instanceof GPUBuffer ? b.size : b.size ?? b.buffer.size - (b.offset ?? 0);
  return t.vectorX && x.offset % 4 === 0 && strides.every((s) => s % 4 === 0) &&
    size % 16 === 0 && size > 0;
}

/**
 * `matmul.wgsl`'s `matvec_rows1`: the `rows` matvec for one entry (one
 * token of a plain matmul, one (token, slot) of mul_mat_id) with its `rows`
 * rows unrolled into separate accumulators and block addresses. The generic
 * `matvec_rows` keeps them in private arrays indexed by loop counters, which
 * a CPU adapter (llvmpipe) keeps in memory and reads lane by lane; here they
 * are registers. The x values of a piece are loaded once for all rows; rows
 * past the end read the last row and store nothing.
 */
export function rowsMatvecWgsl(rows: number, type?: string, w4Binding?: number): string {
  if (!(Number.isInteger(rows) && rows >= 1 && rows <= 32)) {
    throw new RangeError(`rowsMatvecWgsl: rows ${rows} is not 1..32.`);
  }
  const rs = Array.from({ length: rows }, (_, r) => r);
  const each = (f: (r: number) => string, sep = "\n") => rs.map(f).join(sep);
  const w4Loop = w4Binding === undefined ? undefined : W4_LOOPS[type ?? ""];
  const blockLoop = w4Loop ? w4Loop(rs) : type === "q6_k" ? q6kBlocks(rs) : genericBlocks(rs);
  const w4 = W4_TYPES.has(type ?? "") && w4Binding !== undefined
    ? `@group(0) @binding(${w4Binding}) var<storage, read> W4: array<vec4u>;\n\n`
    : "";
  return `// Generated by src/gpu/ops/matmul.ts rowsMatvecWgsl(${rows}${type ? `, "${type}"` : ""}).
${w4}@compute @workgroup_size(WG_MV)
fn matvec_rows1(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_rows = params.n_rows;
  let rbytes = params.row_bytes;
  let n_rg = (n_rows + ${rows}u * WG_MV - 1u) / (${rows}u * WG_MV);
  let lin = wid.x + wid.y * nwg.x;
  let rg = lin % n_rg;
  let e0 = entry_at(lin / n_rg);
  if (e0 >= n_entries()) {
    return;
  }
  let m = entry_mat(e0);
  if (m == NONE) {
    return;
  }
  let r0 = (rg * WG_MV + lid) * ${rows}u;
  if (r0 >= n_rows) {
    return;
  }
  let last = n_rows - 1u - r0;
  let xb = x_base(e0);
  let b0 = params.w_off + m * params.mat_stride + r0 * rbytes;
${each((r) => r === 0 ? "" : `  let b${r} = b0 + min(${r}u, last) * rbytes;`)}
  let nb = (params.n_cols + QK - 1u) / QK;
${each((r) => `  var a${r} = 0.0;`)}
${blockLoop}
  let yb = y_base(e0) + r0;
${
    each((r) =>
      r === 0
        ? "  store_y(yb, a0);"
        : `  if (last >= ${r}u) {\n    store_y(yb + ${r}u, a${r});\n  }`
    )
  }
}
`;
}

/**
 * `matmul.wgsl`'s `matvec_rowsT`: the `rows` matvec for `tokens` consecutive
 * tokens of a plain matmul (the `matvec_tokens` op), `rows` rows unrolled,
 * for the types whose block loop reads 16-byte vectors (`W4_LOOPS`): each
 * weight is loaded and dequantised once for the tokens (the per-token
 * products repeat the dequantising expressions, which the compiler merges),
 * each token's x once for the rows. Tokens past the batch read the last
 * token and store nothing. Undefined for other types (the generic
 * `matvec_rows` serves them).
 */
export function rowsTokensWgsl(
  rows: number,
  tokens: number,
  type: string,
  routed = false,
): string | undefined {
  const loop = W4_LOOPS[type];
  if (!loop || tokens < 2) return undefined;
  if (
    !(Number.isInteger(rows) && rows >= 1 && rows <= 32 && Number.isInteger(tokens) && tokens <= 8)
  ) {
    throw new RangeError(`rowsTokensWgsl: rows ${rows} / tokens ${tokens} are not 1..32 / 1..8.`);
  }
  const rs = Array.from({ length: rows }, (_, r) => r);
  const ts = Array.from({ length: tokens }, (_, t) => `_t${t}`);
  const lines = (f: (r: number, t: string) => string) =>
    rs.flatMap((r) => ts.map((t) => f(r, t))).join("\n");
  // Plain: tokens e0 .. e0 + ne - 1. Routed (mul_mat_id): entries i0 .. of a
  // route tile (matmul_route.wgsl), ceil(BN / tokens) workgroups a tile.
  const entries = routed
    ? `  let subs = (BN + ${tokens}u - 1u) / ${tokens}u;
  let ti = (lin / n_rg) / subs;
  if (ti >= route[0]) {
    return;
  }
  let start = route[params.tiles_off + 2u * ti];
  let ml = route[params.tiles_off + 2u * ti + 1u];
  let m = ml & 0xffffu;
  let i0 = ((lin / n_rg) % subs) * ${tokens}u;
  let len = ml >> 16u;
  if (i0 >= len) {
    return;
  }
  let ne = min(${tokens}u, len - i0);
${
      ts.map((t, i) => `  let e${t} = route[params.sorted_off + start + i0 + min(${i}u, ne - 1u)];`)
        .join("\n")
    }`
    : `  let e0 = (lin / n_rg) * ${tokens}u;
  let n_e = n_entries();
  if (e0 >= n_e) {
    return;
  }
  let m = entry_mat(e0);
  if (m == NONE) {
    return;
  }
  let ne = min(${tokens}u, n_e - e0);
${ts.map((t, i) => `  let e${t} = e0 + min(${i}u, ne - 1u);`).join("\n")}`;
  return `// Generated by src/gpu/ops/matmul.ts rowsTokensWgsl(${rows}, ${tokens}, "${type}"${
    routed ? ", true" : ""
  }).
@compute @workgroup_size(WG_MV)
fn ${routed ? "matvec_routedT" : "matvec_rowsT"}(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_rows = params.n_rows;
  let rbytes = params.row_bytes;
  let n_rg = (n_rows + ${rows}u * WG_MV - 1u) / (${rows}u * WG_MV);
  let lin = wid.x + wid.y * nwg.x;
  let rg = lin % n_rg;
${entries}
  let r0 = (rg * WG_MV + lid) * ${rows}u;
  if (r0 >= n_rows) {
    return;
  }
  let last = n_rows - 1u - r0;
${ts.map((t) => `  let xb${t} = x_base(e${t});`).join("\n")}
  let b0 = params.w_off + m * params.mat_stride + r0 * rbytes;
${rs.slice(1).map((r) => `  let b${r} = b0 + min(${r}u, last) * rbytes;`).join("\n")}
  let nb = (params.n_cols + QK - 1u) / QK;
${lines((r, t) => `  var a${r}${t} = 0.0;`)}
${loop(rs, ts)}
${
    ts.map((t, i) =>
      [
        `  if (${i}u < ne) {`,
        `    let yb${t} = y_base(e${t}) + r0;`,
        ...rs.map((r) =>
          r === 0
            ? `    store_y(yb${t}, a0${t});`
            : `    if (last >= ${r}u) {\n      store_y(yb${t} + ${r}u, a${r}${t});\n    }`
        ),
        `  }`,
      ].join("\n")
    ).join("\n")
  }
}
`;
}

/** The block loop of `matvec_rows1` through quant.wgsl's `head` / `deq_h` (any type). */
function genericBlocks(rs: readonly number[]): string {
  const each = (f: (r: number) => string) => rs.map(f).join("\n");
  return `  for (var blk = 0u; blk < nb; blk++) {
    let ob = blk * QB;
    for (var g = 0u; g < NP / PH; g++) {
${each((r) => `      let h${r} = head(b${r} + ob, g);`)}
      for (var pp = 0u; pp < PH; pp++) {
        let p = g * PH + pp;
        let o = xoff(p) + blk * QK;
        let xa = load_x(xb, o.x);
        let xc = load_x(xb, o.y);
${
    each((r) =>
      `        let w${r} = mask_tail(deq_h(b${r} + ob, h${r}, p), blk, p);\n` +
      `        a${r} += dot(w${r}.a, xa) + dot(w${r}.b, xc);`
    )
  }
      }
    }
  }`;
}

/**
 * The block loop of `matvec_rows1` for Q6_K (the usual output head): each
 * word of a block is read once (blocks of 210 bytes start at every other
 * 2-byte address; a word of an unaligned block is two aligned loads shifted
 * together, each load shared with the next word), the 16 scales once per
 * block, and the work goes in steps of 64 weights (half n, l / 16 = kh)
 * whose 16 x vectors are loaded once for all rows. Step (n, kh), row word k
 * (k < 4): ql words A = 16n + 4kh + k, B = A + 8, qh word Q = 32 + 8n + 4kh
 * + k give the 6-bit values of elements 128n + 32i + 16kh + 4k.. (i < 4),
 * scale 8n + kh + 2i.
 */
function q6kBlocks(rs: readonly number[]): string {
  const each = (f: (r: number) => string) => rs.map(f).join("\n");
  const ks = [0, 1, 2, 3];
  const row = (r: number) => {
    const out: string[] = [];
    const run = (name: string, start: string) => {
      for (let k = 0; k <= 4; k++) out.push(`      let ${name}${k}_${r} = W[${start} + ${k}u];`);
      for (let k = 0; k < 4; k++) {
        out.push(
          `      let ${name}${k}w_${r} = q6_fw(${name}${k}_${r}, ${name}${k + 1}_${r}, u${r});`,
        );
      }
    };
    run("A", `i${r} + 16u * n + 4u * kh`);
    run("B", `i${r} + 16u * n + 4u * kh + 8u`);
    run("Q", `i${r} + 32u + 8u * n + 4u * kh`);
    out.push(`      let sl_${r} = select(s0_${r}, s2_${r}, n == 1u) >> (8u * kh);`);
    out.push(`      let sh_${r} = select(s1_${r}, s3_${r}, n == 1u) >> (8u * kh);`);
    out.push(
      `      let sc_${r} = d${r} * q6_sb(vec4u(sl_${r}, sl_${r} >> 16u, sh_${r}, sh_${r} >> 16u));`,
    );
    const q = (i: number, k: number) => {
      const a = `A${k}w_${r}`, b = `B${k}w_${r}`, h = `Q${k}w_${r}`;
      return [
        `(${a} & 0x0f0f0f0fu) | ((${h} & 0x03030303u) << 4u)`,
        `(${b} & 0x0f0f0f0fu) | ((${h} & 0x0c0c0c0cu) << 2u)`,
        `((${a} >> 4u) & 0x0f0f0f0fu) | (${h} & 0x30303030u)`,
        `((${b} >> 4u) & 0x0f0f0f0fu) | ((${h} >> 2u) & 0x30303030u)`,
      ][i]!;
    };
    const part = (i: number) =>
      ks.map((k) => `dot(vec4f(bytes4(${q(i, k)})) - 32.0, x${i}${k})`).join(" +\n        ");
    out.push(
      `      a${r} += dot(sc_${r}, vec4f(\n        ${
        [0, 1, 2, 3].map(part).join(",\n        ")
      },\n      ));`,
    );
    return out.join("\n");
  };
  return `  for (var blk = 0u; blk < nb; blk++) {
    let ob = blk * QB;
${
    each((r) =>
      [
        `    let c${r} = b${r} + ob;`,
        `    let i${r} = c${r} >> 2u;`,
        `    let u${r} = (c${r} & 2u) != 0u;`,
        ...[0, 1, 2, 3, 4].map((j) => `    let t${j}_${r} = W[i${r} + ${48 + j}u];`),
        ...[0, 1, 2, 3].map((j) =>
          `    let s${j}_${r} = q6_fw(t${j}_${r}, t${j + 1}_${r}, u${r});`
        ),
        `    let d${r} = unpack2x16float(select(t4_${r}, t4_${r} >> 16u, u${r})).x;`,
      ].join("\n")
    )
  }
    for (var n = 0u; n < 2u; n++) {
      for (var kh = 0u; kh < 2u; kh++) {
        let xo = xb + blk * QK + 128u * n + 16u * kh;
${
    [0, 1, 2, 3].flatMap((i) =>
      ks.map((k) => `        let x${i}${k} = x4(xo + ${32 * i + 4 * k}u);`)
    )
      .join("\n")
  }
${each(row)}
      }
    }
  }`;
}

/**
 * The block loop of `matvec_rows1` for a type with 32-element blocks of one
 * scale and a 16- or 32-byte quant run (Q8_0, MXFP4) reading the run as
 * 16-byte vectors (`W4`) shifted into place (quant.wgsl `w4_run`, blocks at
 * any byte address): 2–3 lane-by-lane loads a block where u32 words took
 * 5–9. The 8 x vectors of a block are loaded once for all rows.
 */
function smallBlocksW4(kind: "q8_0" | "mxfp4") {
  return (rs: readonly number[], ts: readonly string[] = [""]): string => {
    const each = (f: (r: number) => string) => rs.map(f).join("\n");
    const comp = ["x", "y", "z", "w"];
    const q8 = kind === "q8_0";
    const row = (r: number) => {
      const lines = [
        `    let c${r} = b${r} + ob + ${q8 ? 2 : 1}u;`,
        `    let v${r} = c${r} >> 4u;`,
        `    let P0_${r} = W4[v${r}];`,
        `    let P1_${r} = W4[v${r} + 1u];`,
        `    let qa${r} = w4_run(P0_${r}, P1_${r}, c${r});`,
      ];
      if (q8) {
        lines.push(
          `    let P2_${r} = W4[v${r} + 2u];`,
          `    let qb${r} = w4_run(P1_${r}, P2_${r}, c${r});`,
          `    let d${r} = ldh(b${r} + ob);`,
        );
      } else {
        lines.push(
          `    let ex${r} = ld8(b${r} + ob);`,
          `    let d${r} = bitcast<f32>(select((ex${r} - 1u) << 23u, 0x00200000u << ex${r}, ex${r} < 2u));`,
        );
      }
      const value = (k: number) =>
        q8
          ? `sbytes4(q${k < 4 ? "a" : "b"}${r}.${comp[k % 4]})`
          : `fp4x4_alu(${k < 4 ? "nib_lo" : "nib_hi"}(qa${r}.${comp[k % 4]}))`;
      for (const t of ts) {
        lines.push(
          `    a${r}${t} += d${r} * (`,
          Array.from({ length: 8 }, (_, k) => `      dot(${value(k)}, xq${k}${t})`).join(" +\n"),
          `    );`,
        );
      }
      return lines.join("\n");
    };
    return `  for (var blk = 0u; blk < nb; blk++) {
    let ob = blk * QB;
${
      ts.flatMap((t) => [
        `    let xo${t} = xb${t} + blk * QK;`,
        ...Array.from({ length: 8 }, (_, k) => `    let xq${k}${t} = x4(xo${t} + ${4 * k}u);`),
      ]).join("\n")
    }
${each(row)}
  }`;
  };
}

/** `matvec_rows1` block loops that read the weights as 16-byte vectors (a `W4` binding), per type. */
const W4_LOOPS: Readonly<
  Record<string, (rs: readonly number[], ts?: readonly string[]) => string>
> = {
  q4_k: q4kBlocks,
  q6_k: q6kBlocksW4,
  q8_0: smallBlocksW4("q8_0"),
  mxfp4: smallBlocksW4("mxfp4"),
};

/** Types whose `matvec_rows1` reads the weights as 16-byte vectors when a `W4` binding is given. */
const W4_TYPES: ReadonlySet<string> = new Set(Object.keys(W4_LOOPS));

/**
 * The Q6_K block loop reading 16-byte vectors (`W4`): a 210-byte block
 * starts at any even address, so each 16-byte run of it (ql, qh or scale
 * words at a multiple of 16 bytes from the block start) is two aligned
 * vectors shifted together by the block's offset (quant.wgsl `q6_run`, a few
 * selects) — two lane-by-lane loads where u32 words took five. Steps as
 * {@linkcode q6kBlocks}, one half n (128 weights, 32 x vectors) at a time.
 */
function q6kBlocksW4(rs: readonly number[], ts: readonly string[] = [""]): string {
  const each = (f: (r: number) => string) => rs.map(f).join("\n");
  const ks = [0, 1, 2, 3];
  const comp = ["x", "y", "z", "w"];
  // One entry (decode): the two halves unrolled, so that the 14 vectors a
  // block spans are loaded once (the halves share their boundary vectors).
  const shared = ts.length === 1;
  const row = (r: number, half?: number) => {
    const out: string[] = [];
    for (let j = 0; j <= 4; j++) {
      out.push(
        half === undefined
          ? `        let L${j}_${r} = W4[v${r} + 4u * n + ${j}u];`
          : `        let L${j}_${r} = V${4 * half + j}_${r};`,
      );
    }
    for (let j = 0; j <= 2; j++) {
      out.push(
        half === undefined
          ? `        let M${j}_${r} = W4[v${r} + 8u + 2u * n + ${j}u];`
          : `        let M${j}_${r} = V${8 + 2 * half + j}_${r};`,
      );
    }
    out.push(`        let sl_${r} = select(S${r}.x, S${r}.z, n == 1u);`);
    out.push(`        let sh_${r} = select(S${r}.y, S${r}.w, n == 1u);`);
    for (const kh of [0, 1]) {
      const run = (a: string, b: string) =>
        `q6_run(${a}_${r}, ${b}_${r}, e0_${r}, e1_${r}, eh_${r})`;
      out.push(`        let A${kh}_${r} = ${run(`L${kh}`, `L${kh + 1}`)};`);
      out.push(`        let B${kh}_${r} = ${run(`L${kh + 2}`, `L${kh + 3}`)};`);
      out.push(`        let Q${kh}_${r} = ${run(`M${kh}`, `M${kh + 1}`)};`);
      const sh = 8 * kh;
      out.push(
        `        let sc${kh}_${r} = d${r} * q6_sb(vec4u(sl_${r} >> ${sh}u, sl_${r} >> ${
          sh + 16
        }u, ` +
          `sh_${r} >> ${sh}u, sh_${r} >> ${sh + 16}u));`,
      );
      const q = (i: number, k: number) => {
        const a = `A${kh}_${r}.${comp[k]}`, b = `B${kh}_${r}.${comp[k]}`;
        const h = `Q${kh}_${r}.${comp[k]}`;
        return [
          `(${a} & 0x0f0f0f0fu) | ((${h} & 0x03030303u) << 4u)`,
          `(${b} & 0x0f0f0f0fu) | ((${h} & 0x0c0c0c0cu) << 2u)`,
          `((${a} >> 4u) & 0x0f0f0f0fu) | (${h} & 0x30303030u)`,
          `((${b} >> 4u) & 0x0f0f0f0fu) | ((${h} >> 2u) & 0x30303030u)`,
        ][i]!;
      };
      // One entry: Σ (q - 32)·x = Σ q·x - 32·Σ x, the x sums taken once for every row (25%
      // faster at the head's shape on llvmpipe; for several tokens, slower: more live values).
      const part = (i: number, t: string) =>
        shared
          ? ks.map((k) => `dot(vec4f(bytes4(${q(i, k)})), x${i}${kh}${k}${t})`)
            .join(" +\n          ") + ` - xs${i}${kh}${t}`
          : ks.map((k) => `dot(vec4f(bytes4(${q(i, k)})) - 32.0, x${i}${kh}${k}${t})`)
            .join(" +\n          ");
      for (const t of ts) {
        out.push(
          `        a${r}${t} += dot(sc${kh}_${r}, vec4f(\n          ` +
            `${[0, 1, 2, 3].map((i) => part(i, t)).join(",\n          ")},\n        ));`,
        );
      }
    }
    return out.join("\n");
  };
  return `  for (var blk = 0u; blk < nb; blk++) {
    let ob = blk * QB;
${
    each((r) =>
      [
        `    let c${r} = b${r} + ob;`,
        `    let v${r} = c${r} >> 4u;`,
        `    let e0_${r} = (c${r} & 4u) != 0u;`,
        `    let e1_${r} = (c${r} & 8u) != 0u;`,
        `    let eh_${r} = (c${r} & 2u) != 0u;`,
        ...(shared ? [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] : []).map((k) =>
          `    let V${k}_${r} = W4[v${r} + ${k}u];`
        ),
        `    let V12_${r} = W4[v${r} + 12u];`,
        `    let V13_${r} = W4[v${r} + 13u];`,
        `    let S${r} = q6_run(V12_${r}, V13_${r}, e0_${r}, e1_${r}, eh_${r});`,
        `    let d${r} = unpack2x16float(q6_run(V13_${r}, V13_${r}, e0_${r}, e1_${r}, eh_${r}).x).x;`,
      ].join("\n")
    )
  }
${
    (shared ? [0, 1] : [undefined]).map((half) =>
      [
        half === undefined ? "    for (var n = 0u; n < 2u; n++) {" : "    {",
        ...(half === undefined ? [] : [`      let n = ${half}u;`]),
        ...ts.flatMap((t) => [
          `      let xo${t} = xb${t} + blk * QK + 128u * n;`,
          ...[0, 1, 2, 3].flatMap((i) =>
            [0, 1].flatMap((kh) =>
              ks.map((k) =>
                `      let x${i}${kh}${k}${t} = x4(xo${t} + ${32 * i + 16 * kh + 4 * k}u);`
              ).concat(
                shared
                  ? `      let xs${i}${kh}${t} = 32.0 * dot(${
                    ks.map((k) => `x${i}${kh}${k}${t}`).join(" + ")
                  }, vec4f(1.0));`
                  : [],
              )
            )
          ),
        ]),
        rs.map((r) => row(r, half)).join("\n"),
        "    }",
      ].join("\n")
    ).join("\n")
  }
  }`;
}

/**
 * The block loop of `matvec_rows1` for Q4_K, reading the weights as 16-byte
 * vectors (`W4`, a second binding of the weight; 144-byte blocks of rows
 * starting at 16-byte boundaries): a CPU adapter loads storage lane by lane,
 * so one vec4 load costs little more than one u32 load. Per group j of 64
 * weights (sub-blocks 2j, 2j + 1): the 16 x vectors and their two sums are
 * loaded once for all rows; a row adds d·sc·Σ q·x − dmin·m·Σ x per sub-block.
 */
function q4kBlocks(rs: readonly number[], ts: readonly string[] = [""]): string {
  const each = (f: (r: number) => string) => rs.map(f).join("\n");
  const xs = Array.from({ length: 16 }, (_, k) => k);
  const comp = ["x", "y", "z", "w"];
  const half = (r: number, lo: boolean, t: string) =>
    Array.from({ length: 8 }, (_, k) => {
      const q = `q${k < 4 ? "a" : "b"}${r}.${comp[k % 4]}`;
      return `dot(vec4f(${lo ? "nib_lo" : "nib_hi"}(${q})), xq${lo ? k : k + 8}${t})`;
    }).join(" +\n          ");
  const sum = (from: number, t: string) =>
    Array.from({ length: 8 }, (_, k) => `xq${from + k}${t}`).join(" + ");
  return `  for (var blk = 0u; blk < nb; blk++) {
    let ob = blk * QB;
${each((r) => `    let v${r} = (b${r} + ob) >> 4u;\n    let h${r} = W4[v${r}];`)}
    for (var j = 0u; j < 4u; j++) {
${
    ts.flatMap((t) => [
      `      let xo${t} = xb${t} + blk * QK + 64u * j;`,
      ...xs.map((k) => `      let xq${k}${t} = x4(xo${t} + ${4 * k}u);`),
      `      let sx0${t} = dot(${sum(0, t)}, vec4f(1.0));`,
      `      let sx1${t} = dot(${sum(8, t)}, vec4f(1.0));`,
    ]).join("\n")
  }
${
    each((r) =>
      [
        `      let m${r} = k_scales_words(h${r}, j);`,
        `      let qa${r} = W4[v${r} + 1u + 2u * j];`,
        `      let qb${r} = W4[v${r} + 2u + 2u * j];`,
        ...ts.flatMap((t) => [
          `      a${r}${t} += m${r}.x * (${half(r, true, t)}) +`,
          `        m${r}.z * (${half(r, false, t)}) -`,
          `        m${r}.y * sx0${t} - m${r}.w * sx1${t};`,
        ]),
      ].join("\n")
    )
  }
    }
  }`;
}

/**
 * The `W4` bindings of a weight's chunks (each chunk's binding as 16-byte
 * elements, its size rounded up to 16 inside the buffer) where the rows
 * kernel reads the type as vectors (Q4_K) and every row starts at a 16-byte
 * boundary; otherwise undefined (the kernel then reads u32 words).
 */
function w4Bindings(
  gpu: Gpu,
  w: GpuWeight,
  t: MatmulTuning,
  chunks: readonly WeightBinding[],
): BufferBinding[] | undefined {
  const type = quantVariant(w.type, w.name);
  if (t.matvecKernel !== "rows" || !W4_TYPES.has(type)) return undefined;
  // The template's 7 storage bindings, the I-quant table, and W4.
  if (8 + (usesQuantTable(w.type) ? 1 : 0) > gpu.limits.maxStorageBuffersPerShaderStage) {
    return undefined;
  }
  // Q4_K's blocks must start at 16-byte boundaries; the others' are shifted into place.
  const aligned = type !== "q4_k" ||
    (w.rowBytes % 16 === 0 && (w.nMats === 1 || w.matStride % 16 === 0));
  if (!aligned) return undefined;
  const out: BufferBinding[] = [];
  for (const wb of chunks) {
    const b = wb.binding;
    if ((type === "q4_k" && wb.byteOffset % 16 !== 0) || b instanceof GPUBuffer) return undefined;
    const offset = b.offset ?? 0;
    const size = Math.ceil((b.size ?? b.buffer.size - offset) / 16) * 16;
    if (offset + size > b.buffer.size || size > gpu.limits.maxStorageBufferBindingSize) {
      return undefined;
    }
    out.push({ buffer: b.buffer, offset, size });
  }
  return out;
}

async function matmulKernels(
  gpu: Gpu,
  w: GpuWeight,
  t: MatmulTuning,
  x4: boolean,
  w4: boolean,
  routed = false,
): Promise<Kernels> {
  const rows = t.matvecKernel === "rows";
  const table = usesQuantTable(w.type) ? 1 : 0;
  // The unrolled kernel for tokensMatvec tokens, where the type has one (W4 types).
  const tokensT = rows && w4
    ? rowsTokensWgsl(rowsT(t, w.type), t.tokensMatvec, quantVariant(w.type))
    : undefined;
  const variant = quantVariant(w.type, w.name) +
    (rows ? `_r${t.rowsMatvec}_${rows1(t, w.type)}_${rowsT(t, w.type)}` : "") +
    (tokensT ? `t${t.tokensMatvec}` : "") + (w4 ? "_w4" : "") + (x4 ? "_xv4" : "");
  // The I-quants read their grids from a table buffer bound after the template's 7 bindings.
  const defines = {
    QUANT: await quantWgsl(w.type, w.name, t.baseUrl, 7),
    X_LIB: x4 ? "x_vec4" : "x_f32",
    MATVEC_ROWS1: rows
      ? rowsMatvecWgsl(rows1(t, w.type), quantVariant(w.type), w4 ? 7 + table : undefined) +
        (tokensT
          ? tokensT + rowsTokensWgsl(rowsT(t, w.type), t.tokensMatvec, quantVariant(w.type), true)
          : "")
      : "",
  };
  const matvec = (tokens: number) =>
    getPipeline(gpu, "matmul", {
      variant,
      defines,
      // One entry a workgroup: the unrolled rows kernel.
      entryPoint: rows
        ? (tokens === 1 ? "matvec_rows1" : tokensT ? "matvec_rowsT" : "matvec_rows")
        : "matvec",
      constants: { WG_MV: t.wgMatvec, ROWS: t.rowsMatvec, TT: tokens },
      baseUrl: t.baseUrl,
    });
  const [one, many, tiled, routedT] = await Promise.all([
    matvec(1),
    matvec(t.tokensMatvec),
    getPipeline(gpu, "matmul", {
      variant,
      defines,
      entryPoint: "tiled",
      constants: { BM: t.tileRows, BN: t.tileTokens, TM: t.threadRows, TN: t.threadTokens },
      baseUrl: t.baseUrl,
    }),
    routed && tokensT
      ? getPipeline(gpu, "matmul", {
        variant,
        defines,
        entryPoint: "matvec_routedT",
        // route tiles of TT entries: one workgroup a tile
        constants: {
          WG_MV: t.wgMatvec,
          ROWS: t.rowsMatvec,
          TT: t.tokensMatvec,
          BN: t.tokensMatvec,
        },
        baseUrl: t.baseUrl,
      })
      : undefined,
  ]);
  return { matvec: one, matvecTokens: many, tiled, rowsT: tokensT !== undefined, routedT };
}

function rowsFor(v: RowsPerType | undefined, t: MatmulTuning, type: GgmlTypeInfo): number {
  if (typeof v === "number") return v;
  return v?.[type.name] ?? t.rowsMatvec;
}

/** Rows per invocation of the generated one-entry `rows` kernel for a weight type. */
function rows1(t: MatmulTuning, type: GgmlTypeInfo): number {
  return rowsFor(t.rowsMatvec1, t, type);
}

/** Rows per invocation of the generated many-token `rows` kernels for a weight type. */
function rowsT(t: MatmulTuning, type: GgmlTypeInfo): number {
  return rowsFor(t.rowsMatvecT, t, type);
}

/**
 * Workgroups of a matvec kernel per entry (or per `tokensMatvec` tokens):
 * `kind` 1 for the one-entry kernel, "T" for the generated many-token ones,
 * "template" for matmul.wgsl's own.
 */
function matvecRowGroups(
  nRows: number,
  t: MatmulTuning,
  type: GgmlTypeInfo,
  kind: 1 | "T" | "template",
): number {
  if (t.matvecKernel !== "rows") return Math.ceil(nRows / t.rowsMatvec);
  const r = kind === 1 ? rows1(t, type) : kind === "T" ? rowsT(t, type) : t.rowsMatvec;
  return Math.ceil(nRows / (r * t.wgMatvec));
}

function chunkParams(
  w: GpuWeight,
  chunk: WeightChunk,
  wOff: number,
  rest: Omit<MatmulParams, "w_off" | "row_bytes" | "mat_stride" | "n_rows" | "n_cols">,
): MatmulParams {
  return {
    w_off: wOff,
    row_bytes: w.rowBytes,
    mat_stride: w.nMats > 1 ? w.matStride : 0,
    n_rows: chunk.nRows,
    n_cols: w.nCols,
    ...rest,
  };
}

/**
 * Prepares `y[t, r] (+)= Σ_c W[r, c] · x[t, c]` for `t < T`: per weight
 * chunk, the matvec kernel for one token, the matvec kernel for several
 * tokens a workgroup (`1 < T ≤ matvecMaxTokens`) and the tiled kernel
 * (larger `T`); only the one that fits `T` dispatches workgroups. Each chunk
 * writes only its rows. Params are written here, once.
 *
 * @throws {UnsupportedWeightTypeError} for a weight type the kernels cannot read.
 * @throws {RangeError} for a stack (`nMats > 1`), bad views or tuning.
 *
 * @example
 * ```ts ignore
 * const ops = await prepareMatmul(gpu, { w, x: { buffer: xb, offset: 0, stride: w.nCols },
 *   y: { buffer: yb, offset: 0, stride: w.nRows }, step, label: "blk.0.attn_q" });
 * recordOps(encoder, ops, nTokens);
 * ```
 */
export async function prepareMatmul(gpu: Gpu, opts: MatmulOptions): Promise<Op[]> {
  const { w, x, y, step, label } = opts;
  checkWeight(w, label);
  if (w.nMats !== 1) {
    throw new RangeError(
      `${label}: prepareMatmul takes one matrix; "${w.name}" stacks ${w.nMats} (use prepareMatmulId).`,
    );
  }
  checkView(x, "x", label);
  checkView(y, "y", label);
  checkStepBuffer(step, label);
  const t = resolveTuning(gpu, opts.tuning, label);
  const xb = bindView(gpu, x.buffer, x.offset);
  const wbs = w.chunks.map((chunk) => bindWeightChunk(gpu, w, chunk));
  const w4 = w4Bindings(gpu, w, t, wbs);
  const k = await matmulKernels(gpu, w, t, vectorX(t, xb, [x.stride]), w4 !== undefined);
  const yb = bindView(gpu, y.buffer, y.offset);
  const table = usesQuantTable(w.type) ? [quantTableBuffer(gpu)] : [];
  const ops: Op[] = [];
  w.chunks.forEach((chunk, i) => {
    const wb = wbs[i]!;
    const name = w.chunks.length > 1 ? `${label}[${i}]` : label;
    const params = new ParamsBuffer(gpu, `${name}.params`, PARAMS_LAYOUT);
    params.write(chunkParams(w, chunk, wb.byteOffset, {
      n_used: 1,
      n_mats: 0,
      id_base: 0,
      ids_off: 0,
      ids_stride: 0,
      x_off: xb.offset,
      x_stride: x.stride,
      x_slot: 0,
      y_off: yb.offset + chunk.rowStart,
      y_stride: y.stride,
      y_slot: 0,
      accumulate: opts.accumulate ? 1 : 0,
      tiles_off: 0,
      sorted_off: 0,
      list: 0,
    }));
    // ids and route are unused by a plain matmul; x and step stand in for them.
    const bindings: BufferBinding[] = [
      wb.binding,
      xb.binding,
      xb.binding,
      step,
      step,
      yb.binding,
      params.buffer,
      ...table,
      ...(w4 ? [w4[i]!] : []),
    ];
    const rowGroups = matvecRowGroups(chunk.nRows, t, w.type, 1);
    const tokenGroups = matvecRowGroups(chunk.nRows, t, w.type, k.rowsT ? "T" : "template");
    const rowTiles = Math.ceil(chunk.nRows / t.tileRows);
    // Decode (T = 1), few tokens (TT a workgroup, weights dequantised once for them), prefill.
    const maxMv = k.rowsT ? t.rowsTMaxTokens ?? t.matvecMaxTokens : t.matvecMaxTokens;
    const few = t.tokensMatvec > 1 && maxMv > 1;
    ops.push({
      label: `${name}.matvec`,
      kernel: k.matvec,
      bindings,
      workgroups: (nTokens) =>
        nTokens <= maxMv && (nTokens === 1 || !few) ? rowGroups * nTokens : 0,
    });
    if (few) {
      ops.push({
        label: `${name}.matvec_tokens`,
        kernel: k.matvecTokens,
        bindings,
        workgroups: (nTokens) =>
          nTokens > 1 && nTokens <= maxMv ? tokenGroups * Math.ceil(nTokens / t.tokensMatvec) : 0,
      });
    }
    ops.push({
      label: `${name}.tiled`,
      kernel: k.tiled,
      bindings,
      workgroups: (nTokens) => nTokens > maxMv ? rowTiles * Math.ceil(nTokens / t.tileTokens) : 0,
    });
  });
  return ops;
}

/**
 * Prepares ggml's mul_mat_id: for every token `t < T` and slot `s < nUsed`,
 * `y[t, s, r] (+)= Σ_c W[ids[t, s] - idBase, r, c] · x[t, (s,) c]`, skipping
 * slots whose id is not in this stack. Three ops: the matvec kernel (one
 * workgroup per few rows and slot, for `T ≤ matvecMaxTokens`), and for
 * larger batches a routing kernel that groups slots by matrix followed by
 * the tiled kernel over those groups.
 *
 * @throws {UnsupportedWeightTypeError} for a weight type the kernels cannot read.
 * @throws {RangeError} for a split stack, bad views or tuning; at record time,
 *   for a batch over `maxTokens`.
 */
export async function prepareMatmulId(gpu: Gpu, opts: MatmulIdOptions): Promise<Op[]> {
  const { w, x, y, ids, step, label, nUsed } = opts;
  checkWeight(w, label);
  if (w.chunks.length !== 1) {
    throw new RangeError(
      `${label}: the stack "${w.name}" is split into ${w.chunks.length} chunks; ` +
        `prepareMatmulId needs it in one binding.`,
    );
  }
  if (!(Number.isInteger(nUsed) && nUsed >= 1)) {
    throw new RangeError(`${label}: nUsed ${nUsed} is not a positive integer.`);
  }
  if (w.nMats >= 1 << 16) throw new RangeError(`${label}: ${w.nMats} matrices, over 65535.`);
  const idBase = opts.idBase ?? 0;
  if (!(Number.isInteger(idBase) && idBase >= 0 && idBase <= 0xffffffff)) {
    throw new RangeError(`${label}: idBase ${idBase} is not a u32.`);
  }
  checkView(x, "x", label);
  checkView(y, "y", label);
  checkView(ids, "ids", label);
  checkStepBuffer(step, label);
  const t = resolveTuning(gpu, opts.tuning, label);
  const xSlot = opts.xPerSlot ? opts.xSlotStride ?? w.nCols : 0;
  const ySlot = opts.ySlotStride ?? w.nRows;
  const maxTokens = opts.maxTokens ??
    Math.max(
      1,
      Math.floor((y.buffer.size / 4 - y.offset - (nUsed - 1) * ySlot - w.nRows) / y.stride) + 1,
    );
  const maxEntries = maxTokens * nUsed;

  const xb = bindView(gpu, x.buffer, x.offset);
  const chunk = w.chunks[0]!;
  const wb = bindWeightChunk(gpu, w, chunk);
  const w4 = w4Bindings(gpu, w, t, [wb]);
  const k = await matmulKernels(
    gpu,
    w,
    t,
    vectorX(t, xb, [x.stride, xSlot]),
    w4 !== undefined,
    true,
  );
  // Route tiles: tokensMatvec entries for matvec_routedT (one workgroup a tile), tileTokens for tiled.
  const tileEntries = k.routedT ? t.tokensMatvec : t.tileTokens;
  const maxTiles = (nEntries: number) =>
    Math.ceil(nEntries / tileEntries) + Math.min(w.nMats, nEntries);
  const route = await getPipeline(gpu, "matmul_route", {
    constants: { BN: tileEntries },
    baseUrl: t.baseUrl,
  });
  const table = [
    ...(usesQuantTable(w.type) ? [quantTableBuffer(gpu)] : []),
    ...(w4 ?? []),
  ];
  const yb = bindView(gpu, y.buffer, y.offset);
  const ib = bindView(gpu, ids.buffer, ids.offset);
  const sortedOff = 4 + 2 * w.nMats;
  const tilesOff = sortedOff + maxEntries;
  const routeBuffer = gpu.device.createBuffer({
    label: `${label}.route`,
    size: 4 * (tilesOff + 2 * maxTiles(maxEntries)),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_DST,
  });
  const params = new ParamsBuffer(gpu, `${label}.params`, PARAMS_LAYOUT);
  params.write(chunkParams(w, chunk, wb.byteOffset, {
    n_used: nUsed,
    n_mats: w.nMats,
    id_base: idBase,
    ids_off: ib.offset,
    ids_stride: ids.stride ?? nUsed,
    x_off: xb.offset,
    x_stride: x.stride,
    x_slot: xSlot,
    y_off: yb.offset + chunk.rowStart,
    y_stride: y.stride,
    y_slot: ySlot,
    accumulate: opts.accumulate ? 1 : 0,
    tiles_off: tilesOff,
    sorted_off: sortedOff,
    list: opts.entryLists ? 1 : 0,
  }));
  const checkTokens = (nTokens: number) => {
    if (nTokens > maxTokens) {
      throw new RangeError(
        `${label}: a batch of ${nTokens} tokens exceeds maxTokens ${maxTokens} of this op.`,
      );
    }
  };
  const rowGroups = matvecRowGroups(chunk.nRows, t, w.type, 1);
  const routedGroups = matvecRowGroups(chunk.nRows, t, w.type, "T");
  const rowTiles = Math.ceil(chunk.nRows / t.tileRows);
  const listed = opts.entryLists?.lists.slot(opts.entryLists.stack, rowGroups);
  const nChoices = opts.nChoices ?? w.nMats;
  const minEntries = t.idRoutedMinEntries ?? 0;
  // the per-(token, slot) matvec, or (false) the route tiles
  const maxPerEntry = k.routedT ? t.idRoutedTMaxTokens ?? t.idMatvecMaxTokens : t.idMatvecMaxTokens;
  const perEntry = (nTokens: number) =>
    nTokens <= maxPerEntry || nTokens * nUsed < minEntries * nChoices;
  // The route tiles' workgroups: [row groups, tiles, 1], the tiles counted by the route op
  // (route words 1..3), where the bound on tiles fits one dimension; else every possible tile.
  const tileGroups = k.routedT ? routedGroups : rowTiles;
  const indirectTiles = maxTiles(maxEntries) <= gpu.limits.maxComputeWorkgroupsPerDimension;
  if (indirectTiles) {
    gpu.device.queue.writeBuffer(routeBuffer, 4, new Uint32Array([tileGroups, 0, 1]));
  }
  return [
    {
      label: `${label}.matvec`,
      kernel: k.matvec,
      bindings: [
        wb.binding,
        xb.binding,
        ib.binding,
        listed?.list ?? step,
        step,
        yb.binding,
        params.buffer,
        ...table,
      ],
      // listed: [rowGroups, this stack's entries, 1], written by the lists' op
      workgroups: (nTokens) => perEntry(nTokens) ? (listed ? 1 : rowGroups * nTokens * nUsed) : 0,
      indirect: listed?.args,
    },
    {
      label: `${label}.route`,
      kernel: route,
      bindings: [ib.binding, step, routeBuffer, params.buffer],
      workgroups: (nTokens) => {
        checkTokens(nTokens);
        return perEntry(nTokens) ? 0 : 1;
      },
    },
    {
      // The route tiles: matvec_routedT (tokensMatvec entries of a tile a
      // workgroup) where the type has it, else the tiled kernel.
      label: `${label}.${k.routedT ? "routed" : "tiled"}`,
      kernel: k.routedT ?? k.tiled,
      bindings: [
        wb.binding,
        xb.binding,
        ib.binding,
        routeBuffer,
        step,
        yb.binding,
        params.buffer,
        ...table,
      ],
      workgroups: (nTokens) =>
        perEntry(nTokens) ? 0 : indirectTiles ? 1 : tileGroups * maxTiles(nTokens * nUsed),
      indirect: indirectTiles ? { buffer: routeBuffer, offset: 4 } : undefined,
    },
  ];
}
