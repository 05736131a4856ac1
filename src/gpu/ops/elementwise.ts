/**
 * Element-wise ops over `[T, n]` activations (`shaders/elementwise.wgsl`):
 * residual adds, broadcast bias, scale, copy, SiLU/GELU and the gated units
 * SwiGLU (with GPT-OSS's clamped variant) and GEGLU, and per-expert bias
 * rows (`add_id`), with llama.cpp's CPU formulas. Every activation binding is read_write, so an output may alias
 * an input (in-place `y += bias`, SwiGLU written over the gate).
 *
 * Also the small plumbing the other launchers of this folder share:
 * {@linkcode BufRef}, {@linkcode bindFrom}, {@linkcode placeholder},
 * {@linkcode tokenGrid}.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import type { BufferBinding, Workgroups } from "../dispatch.ts";
import { getPipeline } from "../pipeline.ts";
import type { ActView, Op } from "./op.ts";

/** A vector or table in a GPU buffer: the whole buffer, or from an element offset. */
export type BufRef = GPUBuffer | {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** First element (4-byte units); default 0. */
  readonly offset?: number;
};

/** The buffer and element offset of a {@linkcode BufRef}. */
export function resolveRef(ref: BufRef): { buffer: GPUBuffer; offset: number } {
  return ref instanceof GPUBuffer
    ? { buffer: ref, offset: 0 }
    : { buffer: ref.buffer, offset: ref.offset ?? 0 };
}

/** A binding starting at or before an element, and that element's index within it. */
export interface BoundAt {
  /** The buffer range to bind. */
  readonly binding: BufferBinding;
  /** Element index of the requested element inside the bound range. */
  readonly offset: number;
}

/**
 * Binds `buffer` from the last offset-aligned byte at or before element
 * `offset`, as far as the device's binding limit allows, so that a buffer
 * larger than `maxStorageBufferBindingSize` (a long KV cache) can still be
 * bound around the region an op uses. `extent` elements from `offset` must
 * fit in the range. Returns the element's index inside the bound range, to
 * be written into the op's params.
 */
export function bindFrom(gpu: Gpu, buffer: GPUBuffer, offset: number, extent = 1): BoundAt {
  if (!Number.isInteger(offset) || offset < 0 || (offset + extent) * 4 > buffer.size) {
    throw new RangeError(
      `Elements ${offset}…${offset + extent} are outside buffer "${buffer.label}" ` +
        `(${buffer.size} bytes).`,
    );
  }
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const base = Math.floor((offset * 4) / align) * align;
  const size = Math.min(buffer.size - base, gpu.limits.maxStorageBufferBindingSize & ~3);
  if ((offset + extent) * 4 - base > size) {
    throw new RangeError(
      `Elements ${offset}…${offset + extent} of buffer "${buffer.label}" span more than one ` +
        `storage binding (${gpu.limits.maxStorageBufferBindingSize} bytes); split the buffer.`,
    );
  }
  const binding = base === 0 && size === buffer.size ? buffer : { buffer, offset: base, size };
  return { binding, offset: offset - base / 4 };
}

const placeholders = new WeakMap<Gpu, { read: GPUBuffer; write: GPUBuffer }>();

/**
 * A 16-byte buffer bound in place of an absent optional input (`"read"`)
 * or output (`"write"`); the kernel is told not to touch it. Two distinct
 * buffers, because one buffer may not be bound read-only and writable in
 * the same dispatch.
 */
export function placeholder(gpu: Gpu, kind: "read" | "write"): GPUBuffer {
  let p = placeholders.get(gpu);
  if (!p) {
    const make = (label: string) =>
      gpu.device.createBuffer({ label, size: 16, usage: GPUBufferUsage.STORAGE });
    p = { read: make("od-moe placeholder (read)"), write: make("od-moe placeholder (write)") };
    placeholders.set(gpu, p);
  }
  return p[kind];
}

/**
 * Workgroups `[perToken, T]` for a batch of T tokens (or `fixedTokens`
 * whatever the batch size, e.g. 1 for ops on the last token's row only).
 */
export function tokenGrid(
  perToken: number,
  fixedTokens?: number,
): Workgroups | ((nTokens: number) => Workgroups) {
  if (fixedTokens !== undefined) return [perToken, fixedTokens];
  return (nTokens: number) => [perToken, nTokens];
}

/** Throws a RangeError naming `label` and `field` unless `v` is an integer ≥ `min`. */
export function checkInt(label: string, field: string, v: number, min = 0): void {
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`${label}: ${field} = ${v} must be an integer ≥ ${min}.`);
  }
}

const WG_SIZE = 64;

const PARAMS = {
  n: "u32",
  aOffset: "u32",
  aStride: "u32",
  bOffset: "u32",
  bStride: "u32",
  yOffset: "u32",
  yStride: "u32",
  s0: "f32",
  s1: "f32",
  rowLen: "u32",
  idsOffset: "u32",
  idsStride: "u32",
  bRowStride: "u32",
} as const;

interface Operand {
  readonly buffer: GPUBuffer;
  readonly offset: number;
  readonly stride: number;
}

async function prepareElementwise(
  gpu: Gpu,
  entryPoint: string,
  o: {
    a: Operand;
    b?: Operand;
    y: Operand;
    n: number;
    s0?: number;
    s1?: number;
    ids?: Operand;
    rowLen?: number;
    bRowStride?: number;
    label: string;
    fixedTokens?: number;
  },
): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  const kernel = await getPipeline(gpu, "elementwise", { entryPoint, constants: { WG_SIZE } });
  const a = bindFrom(gpu, o.a.buffer, o.a.offset);
  const b = o.b ? bindFrom(gpu, o.b.buffer, o.b.offset) : undefined;
  const ids = o.ids ? bindFrom(gpu, o.ids.buffer, o.ids.offset) : undefined;
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, PARAMS);
  params.write({
    n: o.n,
    aOffset: a.offset,
    aStride: o.a.stride,
    bOffset: b?.offset ?? 0,
    bStride: o.b?.stride ?? 0,
    yOffset: y.offset,
    yStride: o.y.stride,
    s0: o.s0 ?? 0,
    s1: o.s1 ?? 0,
    rowLen: o.rowLen ?? o.n,
    idsOffset: ids?.offset ?? 0,
    idsStride: o.ids?.stride ?? 0,
    bRowStride: o.bRowStride ?? 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [
      a.binding,
      b?.binding ?? placeholder(gpu, "write"),
      ids?.binding ?? placeholder(gpu, "read"),
      y.binding,
      params.buffer,
    ],
    workgroups: tokenGrid(Math.ceil(o.n / WG_SIZE), o.fixedTokens),
  };
}

/** Options shared by the element-wise launchers. */
export interface ElementwiseCommon {
  /** Elements per token. */
  n: number;
  /** Name for errors and timings. */
  label: string;
  /** Run on this many rows whatever the batch size (default: the batch's token count). */
  fixedTokens?: number;
}

/** `out = a + b` over `[T, n]` (the residual add). */
export function prepareAdd(
  gpu: Gpu,
  o: ElementwiseCommon & { a: ActView; b: ActView; out: ActView },
): Promise<Op> {
  return prepareElementwise(gpu, "add", { ...o, y: o.out });
}

/** `y = x + bias` with `bias` f32 `[n]` broadcast over tokens; `x` defaults to `y` (in place). */
export function prepareAddBias(
  gpu: Gpu,
  o: ElementwiseCommon & { x?: ActView; y: ActView; bias: BufRef },
): Promise<Op> {
  const bias = resolveRef(o.bias);
  return prepareElementwise(gpu, "add", {
    ...o,
    a: o.x ?? o.y,
    b: { ...bias, stride: 0 },
  });
}

/** `y = scale · x`; `x` defaults to `y` (in place). */
export function prepareScale(
  gpu: Gpu,
  o: ElementwiseCommon & { x?: ActView; y: ActView; scale: number },
): Promise<Op> {
  return prepareElementwise(gpu, "scale", { ...o, a: o.x ?? o.y, s0: o.scale });
}

/** `y = x` over `[T, n]` (strided copy between views). */
export function prepareCopy(
  gpu: Gpu,
  o: ElementwiseCommon & { x: ActView; y: ActView },
): Promise<Op> {
  return prepareElementwise(gpu, "copy", { ...o, a: o.x });
}

/** `y = silu(x) = x / (1 + e^-x)`; `x` defaults to `y`. */
export function prepareSilu(
  gpu: Gpu,
  o: ElementwiseCommon & { x?: ActView; y: ActView },
): Promise<Op> {
  return prepareElementwise(gpu, "silu_op", { ...o, a: o.x ?? o.y });
}

/**
 * `y = gelu(x)`, tanh approximation, with llama.cpp's CPU rounding (input
 * and output through f16, as its lookup table does); `x` defaults to `y`.
 */
export function prepareGelu(
  gpu: Gpu,
  o: ElementwiseCommon & { x?: ActView; y: ActView },
): Promise<Op> {
  return prepareElementwise(gpu, "gelu_op", { ...o, a: o.x ?? o.y });
}

/** GPT-OSS's clamped SwiGLU parameters (llama.cpp `ggml_swiglu_oai`: alpha 1.702, limit 7). */
export interface SwigluOai {
  /** Sigmoid slope. */
  alpha: number;
  /** Clamp: gate ≤ limit, −limit ≤ up ≤ limit. */
  limit: number;
}

/** Options of {@linkcode prepareSwiglu} and {@linkcode prepareGeglu}. */
export interface GluOptions extends ElementwiseCommon {
  /** Gate projection `[T, n]`. */
  gate: ActView;
  /** Up projection `[T, n]`. */
  up: ActView;
  /** Output `[T, n]`; may be the gate or up view (in place). */
  out: ActView;
}

/**
 * `out = silu(gate) · up`, or with `oai` GPT-OSS's
 * `g′·σ(alpha·g′)·(u′ + 1)`, `g′ = min(g, limit)`, `u′ = clamp(u, ±limit)`.
 * For expert outputs `[T, K, nFf]` pass `n = K · nFf`.
 */
export function prepareSwiglu(gpu: Gpu, o: GluOptions & { oai?: SwigluOai }): Promise<Op> {
  return prepareElementwise(gpu, o.oai ? "swiglu_oai" : "swiglu", {
    ...o,
    a: o.gate,
    b: o.up,
    y: o.out,
    s0: o.oai?.alpha,
    s1: o.oai?.limit,
  });
}

/** `out = gelu(gate) · up` (GEGLU, gelu as in {@linkcode prepareGelu}). */
export function prepareGeglu(gpu: Gpu, o: GluOptions): Promise<Op> {
  return prepareElementwise(gpu, "geglu", { ...o, a: o.gate, b: o.up, y: o.out });
}

/** Options of {@linkcode prepareAddId}. */
export interface AddIdOptions {
  /** Input `[T, k, n]` (token stride from the view, rows of a token contiguous); default `y`. */
  x?: ActView;
  /** Output `[T, k, n]`. */
  y: ActView;
  /** f32 `[nExpert, n]` per-expert bias rows (`ffn_*_exps.bias`). */
  bias: BufRef;
  /** Elements between bias rows; default `n`. */
  biasStride?: number;
  /** u32 `[T, k]` expert ids choosing each row's bias (the router's ids, not pool slots). */
  ids: ActView;
  /** Rows per token (experts used). */
  k: number;
  /** Row length. */
  n: number;
  /** Name for errors and timings. */
  label: string;
  /** Run on this many tokens whatever the batch size. */
  fixedTokens?: number;
}

/** `y[t, r] = x[t, r] + bias[ids[t, r]]` (ggml `add_id`: GPT-OSS's per-expert biases). */
export function prepareAddId(gpu: Gpu, o: AddIdOptions): Promise<Op> {
  checkInt(o.label, "k", o.k, 1);
  const bias = resolveRef(o.bias);
  return prepareElementwise(gpu, "add_id", {
    a: o.x ?? o.y,
    b: { ...bias, stride: 0 },
    y: o.y,
    ids: o.ids,
    n: o.k * o.n,
    rowLen: o.n,
    bRowStride: o.biasStride ?? o.n,
    label: o.label,
    fixedTokens: o.fixedTokens,
  });
}
