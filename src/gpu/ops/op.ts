/**
 * What every op launcher in `src/gpu/ops/` returns and takes: a prepared
 * dispatch (kernel, buffers bound, params written once at build time) that a
 * forward pass records into the token's command encoder, and the views of
 * GPU buffers the ops read and write.
 *
 * Values that change per token (the position of the first token of the
 * batch, the number of tokens in it) live in one small "step" buffer shared
 * by all ops and written once per submit, so params buffers are never
 * rewritten and nothing is allocated per token.
 *
 * @module
 */

import type { GgmlTypeInfo } from "../../gguf/types.ts";
import { type BufferBinding, dispatch, type Workgroups } from "../dispatch.ts";
import type { Kernel } from "../pipeline.ts";

/** A prepared dispatch. */
export interface Op {
  /** Readable name for errors and timings (`blk.3.attn_q`). */
  readonly label: string;
  /** The pipeline. */
  readonly kernel: Kernel;
  /** Buffers for `@binding(0..n)`, inputs → outputs → params. */
  readonly bindings: readonly BufferBinding[];
  /** Workgroups, fixed or computed from the number of tokens in the batch. */
  readonly workgroups: Workgroups | ((nTokens: number) => Workgroups);
  /**
   * Recorded only for batches of one sequence (`"one"`: consecutive
   * positions, e.g. attention over blocks of a prompt's tokens) or only for
   * batches whose tokens may belong to several (`"many"`); default both.
   */
  readonly sequences?: "one" | "many";
  /**
   * Where the dispatch reads its `[x, y, z]` workgroups (an indirect
   * dispatch, the arguments written on the GPU), when `workgroups` is not 0
   * for the batch; `workgroups` then only says whether the op runs.
   */
  readonly indirect?: IndirectArgs;
}

/** Indirect dispatch arguments: three u32 at `offset` (bytes, a multiple of 4) of `buffer` (INDIRECT usage). */
export interface IndirectArgs {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** Byte offset of x. */
  readonly offset: number;
}

/**
 * Records ops, in order, into an encoder or compute pass, for a batch of
 * `nTokens` of one sequence, or of several with `manySequences`.
 */
export function recordOps(
  target: GPUCommandEncoder | GPUComputePassEncoder,
  ops: readonly Op[],
  nTokens: number,
  manySequences = false,
): void {
  for (const op of ops) {
    if (op.sequences === (manySequences ? "one" : "many")) continue;
    const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
    dispatch(target, op.kernel, op.bindings, wg, { label: op.label, indirect: op.indirect });
  }
}

/**
 * The step buffer layout (u32 elements), written once per submit: a header
 * of `length` words — `[0]` position of the first token of the batch, `[1]`
 * tokens in the batch, `[2]` keys/values in the cache after this batch
 * (`[0] + [1]`) — then two words per token from `tokens`: `[4 + 2t]` token
 * t's position in its sequence (RoPE, the causal mask) and `[5 + 2t]` the
 * cache row of its sequence's position 0 (its KV region; 0 for the one
 * sequence of a single-sequence batch). A batch of several sequences
 * (continuous batching) has `[0] = [2] = 0`: only the kernels that read the
 * per-token words may run on it (see `Op.sequences`).
 */
export const STEP = { pos0: 0, nTokens: 1, nKv: 2, tokens: 4, length: 4 } as const;

/** Words of a step buffer for batches of up to `maxBatch` tokens. */
export function stepLength(maxBatch: number): number {
  return STEP.tokens + 2 * maxBatch;
}

/** The step buffer's words for a batch of `nTokens` of one sequence starting at position `pos0`. */
export function stepWords(pos0: number, nTokens: number): Uint32Array {
  const s = new Uint32Array(stepLength(nTokens));
  s[STEP.pos0] = pos0;
  s[STEP.nTokens] = nTokens;
  s[STEP.nKv] = pos0 + nTokens;
  for (let t = 0; t < nTokens; t++) s[STEP.tokens + 2 * t] = pos0 + t;
  return s;
}

/** A token of a batch of several sequences: its position, and the cache row of its sequence's position 0. */
export interface BatchToken {
  /** Position in its sequence. */
  readonly pos: number;
  /** First cache row of its sequence's KV region. */
  readonly base: number;
}

/** The step buffer's words for a batch whose tokens may belong to several sequences. */
export function batchStepWords(tokens: readonly BatchToken[]): Uint32Array {
  const s = new Uint32Array(stepLength(tokens.length));
  s[STEP.nTokens] = tokens.length;
  tokens.forEach((t, i) => {
    s[STEP.tokens + 2 * i] = t.pos;
    s[STEP.tokens + 2 * i + 1] = t.base;
  });
  return s;
}

/** A region of an f32 (or u32) activation buffer: `offset` and `stride` are in elements. */
export interface ActView {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** First element. */
  readonly offset: number;
  /** Elements between consecutive tokens (rows). */
  readonly stride: number;
}

/** One piece of a weight matrix held in one binding: rows `rowStart … rowStart + nRows`. */
export interface WeightChunk {
  /** The buffer holding the raw ggml bytes. */
  readonly buffer: GPUBuffer;
  /** Byte offset of the chunk's first row (a multiple of 4). */
  readonly byteOffset: number;
  /** First row of the matrix held here. */
  readonly rowStart: number;
  /** Rows held here. */
  readonly nRows: number;
}

/**
 * A weight matrix (or a stack of them, for experts) on the GPU in its ggml
 * type. `nCols` is the row length (ggml `ne[0]`), `nRows` the number of rows
 * of one matrix (`ne[1]`), `nMats` the number of stacked matrices (`ne[2]`,
 * experts) `matStride` bytes apart. A matrix larger than one storage binding
 * is split by rows into chunks; a stack is never split inside a matrix.
 */
export interface GpuWeight {
  /** Tensor name, for errors. */
  readonly name: string;
  /** ggml type. */
  readonly type: GgmlTypeInfo;
  /** Row length. */
  readonly nCols: number;
  /** Rows per matrix. */
  readonly nRows: number;
  /** Stacked matrices (1 for a plain matrix). */
  readonly nMats: number;
  /** Bytes from one matrix to the next. */
  readonly matStride: number;
  /** Bytes per row. */
  readonly rowBytes: number;
  /** Chunks covering the rows, in order (one chunk for a stack). */
  readonly chunks: readonly WeightChunk[];
}
