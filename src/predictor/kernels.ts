/**
 * Launchers of the predictor's kernels: the strided batched matrix product
 * (`shaders/predictor.wgsl`), the top-k of expert scores
 * (`shaders/predictor_topk.wgsl`), and the trainer's gather, loss and Adam
 * (`shaders/train_*.wgsl`). Each returns an {@linkcode Op} with its params
 * written once; the trainer rewrites the few per-step params itself through
 * the returned {@linkcode ParamsBuffer}s.
 *
 * Offsets and strides are in elements (4-byte words); buffers are bound
 * whole, so offsets need no alignment.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { ParamsBuffer } from "../gpu/buffers.ts";
import { getPipeline } from "../gpu/pipeline.ts";
import { workgroupCount } from "../gpu/dispatch.ts";
import { checkInt, placeholder } from "../gpu/ops/elementwise.ts";
import type { Op } from "../gpu/ops/op.ts";

/** Id written where there is no prediction or target. */
export const NONE = 0xffffffff;

const WG_SIZE = 64;

/** A strided operand of {@linkcode prepareGemm}: element `[z, i, j]` at `off + z·zs + i·is + j·js`. */
export interface Strided {
  /** The buffer (bound whole). */
  readonly buffer: GPUBuffer;
  /** First element. */
  readonly off?: number;
  /** Stride between matrices of the stack. */
  readonly z: number;
  /** Stride along the first index (m for A and C, k for B). */
  readonly i: number;
  /** Stride along the second index (k for A, n for B and C). */
  readonly j: number;
}

/** Options of {@linkcode prepareGemm}. */
export interface GemmOptions {
  /** A[z, m, k]. */
  readonly a: Strided;
  /** B[z, k, n]. */
  readonly b: Strided;
  /** C[z, m, n], written (or added to with `accumulate`). */
  readonly c: Strided;
  /** Rows of C (rows per token of the batch, with `perToken`). */
  readonly m: number;
  /** With a step buffer: M = tokens of the batch × `m` (`m` rows per token). */
  readonly perToken?: { readonly step: GPUBuffer };
  /** Columns of C. */
  readonly n: number;
  /** Inner dimension. */
  readonly k: number;
  /** Matrices in the stack. */
  readonly z?: number;
  /** Bias added per column: `bias[off + z·z + n]`. */
  readonly bias?: { readonly buffer: GPUBuffer; readonly off?: number; readonly z: number };
  /** `relu`, or `mask` (zero where `mask`, laid out like C from `mask.off`, is ≤ 0). */
  readonly epilogue?: "relu" | { readonly mask: GPUBuffer; readonly off?: number };
  /** C += A·B instead of C = A·B. */
  readonly accumulate?: boolean;
  /** Invocations along m and n of a workgroup (default 8 × 8; 1 × 64 for few rows). */
  readonly shape?: readonly [number, number];
  /** Name for errors and timings. */
  readonly label: string;
}

/** Prepares `C = epi(A·B + bias)` over a stack of `z` matrices (see `shaders/predictor.wgsl`). */
export async function prepareGemm(gpu: Gpu, o: GemmOptions): Promise<Op> {
  checkInt(o.label, "m", o.m, 1);
  checkInt(o.label, "n", o.n, 1);
  checkInt(o.label, "k", o.k, 1);
  const z = o.z ?? 1;
  checkInt(o.label, "z", z, 1);
  const [wgM, wgN] = o.shape ?? [8, 8];
  const kernel = await getPipeline(gpu, "predictor", {
    entryPoint: "gemm",
    constants: { WG_M: wgM, WG_N: wgN },
  });
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    M: "u32",
    N: "u32",
    K: "u32",
    mPerToken: "u32",
    aOff: "u32",
    aZ: "u32",
    aM: "u32",
    aK: "u32",
    bOff: "u32",
    bZ: "u32",
    bK: "u32",
    bN: "u32",
    cOff: "u32",
    cZ: "u32",
    cM: "u32",
    cN: "u32",
    hasBias: "u32",
    biasOff: "u32",
    biasZ: "u32",
    epilogue: "u32",
    maskOff: "u32",
    accumulate: "u32",
  });
  const mask = typeof o.epilogue === "object" ? o.epilogue : undefined;
  params.write({
    M: o.m,
    N: o.n,
    K: o.k,
    mPerToken: o.perToken ? o.m : 0,
    aOff: o.a.off ?? 0,
    aZ: o.a.z,
    aM: o.a.i,
    aK: o.a.j,
    bOff: o.b.off ?? 0,
    bZ: o.b.z,
    bK: o.b.i,
    bN: o.b.j,
    cOff: o.c.off ?? 0,
    cZ: o.c.z,
    cM: o.c.i,
    cN: o.c.j,
    hasBias: o.bias ? 1 : 0,
    biasOff: o.bias?.off ?? 0,
    biasZ: o.bias?.z ?? 0,
    epilogue: o.epilogue === "relu" ? 1 : mask ? 2 : 0,
    maskOff: mask?.off ?? 0,
    accumulate: o.accumulate ? 1 : 0,
  });
  const read = placeholder(gpu, "read");
  const step = o.perToken?.step ?? read;
  const cols = workgroupCount(o.n, 4 * wgN);
  const rows = (m: number) => workgroupCount(m, 4 * wgM);
  return {
    label: o.label,
    kernel,
    bindings: [
      o.a.buffer,
      o.b.buffer,
      o.bias?.buffer ?? read,
      mask?.mask ?? read,
      step,
      o.c.buffer,
      params.buffer,
    ],
    workgroups: o.perToken
      ? (nTokens: number) => [cols, rows(nTokens * o.m), z] as const
      : [cols, rows(o.m), z],
  };
}

/** Options of {@linkcode prepareTopk}. */
export interface TopkOptions {
  /** f32 `[G, nExpert]` scores from `scoresOff`. */
  readonly scores: GPUBuffer;
  /** First score. */
  readonly scoresOff?: number;
  /** u32 `[G, k]` ids written from `idsOff`. */
  readonly ids: GPUBuffer;
  /** First id. */
  readonly idsOff?: number;
  /** Experts per group. */
  readonly nExpert: number;
  /** Experts kept per group. */
  readonly k: number;
  /** Lookahead distances per row. */
  readonly depth: number;
  /** Layers: rows are `[token, layer]`. */
  readonly nLayer: number;
  /** Groups: a number, or per token of the batch (`groupsPerToken` with the step buffer). */
  readonly groups: number | { readonly perToken: number; readonly step: GPUBuffer };
  /** Keep the groups that predict the next token's layers (else NONE). */
  readonly crossToken: boolean;
  /** Name for errors and timings. */
  readonly label: string;
}

/** Prepares the top-k of groups of expert scores (see `shaders/predictor_topk.wgsl`). */
export async function prepareTopk(gpu: Gpu, o: TopkOptions): Promise<Op> {
  checkInt(o.label, "nExpert", o.nExpert, 1);
  checkInt(o.label, "k", o.k, 1);
  if (o.k > o.nExpert) throw new RangeError(`${o.label}: k ${o.k} > nExpert ${o.nExpert}.`);
  const kernel = await getPipeline(gpu, "predictor_topk", {
    entryPoint: "topk",
    constants: { WG_SIZE, K: o.k },
  });
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nExpert: "u32",
    depth: "u32",
    nLayer: "u32",
    groups: "u32",
    groupsPerToken: "u32",
    scoresOff: "u32",
    idsOff: "u32",
    crossToken: "u32",
  });
  const perToken = typeof o.groups === "object" ? o.groups : undefined;
  params.write({
    nExpert: o.nExpert,
    depth: o.depth,
    nLayer: o.nLayer,
    groups: perToken ? 0 : o.groups as number,
    groupsPerToken: perToken?.perToken ?? 0,
    scoresOff: o.scoresOff ?? 0,
    idsOff: o.idsOff ?? 0,
    crossToken: o.crossToken ? 1 : 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [o.scores, perToken?.step ?? placeholder(gpu, "read"), o.ids, params.buffer],
    workgroups: perToken
      ? (nTokens: number) => workgroupCount(nTokens * perToken.perToken, WG_SIZE)
      : workgroupCount(o.groups as number, WG_SIZE),
  };
}

/** Prepares the trainer's gather of `[L, B, W]` rows from `[nSamples, L, W]` (`shaders/train_gather.wgsl`). */
export async function prepareGather(
  gpu: Gpu,
  o: {
    src: GPUBuffer;
    idx: GPUBuffer;
    dst: GPUBuffer;
    dstOff?: number;
    nLayer: number;
    batch: number;
    words: number;
    label: string;
  },
): Promise<Op> {
  const kernel = await getPipeline(gpu, "train_gather", {
    entryPoint: "gather",
    constants: { WG_SIZE },
  });
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    L: "u32",
    B: "u32",
    W: "u32",
    dstOff: "u32",
  });
  params.write({ L: o.nLayer, B: o.batch, W: o.words, dstOff: o.dstOff ?? 0 });
  return {
    label: o.label,
    kernel,
    bindings: [o.src, o.idx, o.dst, params.buffer],
    workgroups: workgroupCount(o.nLayer * o.batch * o.words, WG_SIZE),
  };
}

/** The per-step fields of the loss kernel's params. */
export type LossParams = ParamsBuffer<{
  groups: "u32";
  nExpert: "u32";
  logitsOff: "u32";
  targetsOff: "u32";
  gradOff: "u32";
  metricsOff: "u32";
  gradScale: "f32";
  writeGrad: "u32";
}>;

/** Prepares the softmax cross-entropy, its gradient and metrics (`shaders/train_loss.wgsl`). */
export async function prepareLoss(
  gpu: Gpu,
  o: {
    logits: GPUBuffer;
    targets: GPUBuffer;
    grad: GPUBuffer;
    metrics: GPUBuffer;
    groups: number;
    nExpert: number;
    kTargets: number;
    label: string;
  },
): Promise<{ op: Op; params: LossParams }> {
  const kernel = await getPipeline(gpu, "train_loss", {
    entryPoint: "softmax_ce",
    constants: { WG_SIZE, KT: o.kTargets },
  });
  const params: LossParams = new ParamsBuffer(
    gpu,
    `${o.label}.params`,
    {
      groups: "u32",
      nExpert: "u32",
      logitsOff: "u32",
      targetsOff: "u32",
      gradOff: "u32",
      metricsOff: "u32",
      gradScale: "f32",
      writeGrad: "u32",
    } as const,
  );
  params.write({
    groups: o.groups,
    nExpert: o.nExpert,
    logitsOff: 0,
    targetsOff: 0,
    gradOff: 0,
    metricsOff: 0,
    gradScale: 1,
    writeGrad: 1,
  });
  return {
    op: {
      label: o.label,
      kernel,
      bindings: [o.logits, o.targets, o.grad, o.metrics, params.buffer],
      workgroups: workgroupCount(o.groups, WG_SIZE),
    },
    params,
  };
}

/** The per-step fields of the Adam kernel's params. */
export type AdamParams = ParamsBuffer<{
  n: "u32";
  lrT: "f32";
  beta1: "f32";
  beta2: "f32";
  epsT: "f32";
  decay: "f32";
}>;

/** Prepares an Adam(W) step over `n` parameters (`shaders/train_adam.wgsl`). */
export async function prepareAdam(
  gpu: Gpu,
  o: { grad: GPUBuffer; param: GPUBuffer; m: GPUBuffer; v: GPUBuffer; n: number; label: string },
): Promise<{ op: Op; params: AdamParams }> {
  const kernel = await getPipeline(gpu, "train_adam", {
    entryPoint: "adam",
    constants: { WG_SIZE },
  });
  const params: AdamParams = new ParamsBuffer(
    gpu,
    `${o.label}.params`,
    {
      n: "u32",
      lrT: "f32",
      beta1: "f32",
      beta2: "f32",
      epsT: "f32",
      decay: "f32",
    } as const,
  );
  return {
    op: {
      label: o.label,
      kernel,
      bindings: [o.grad, o.param, o.m, o.v, params.buffer],
      workgroups: workgroupCount(o.n, WG_SIZE),
    },
    params,
  };
}

/** Adam's per-step scalars for step `t` (1-based): bias corrections folded into the rate and eps. */
export function adamStep(
  t: number,
  o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
): { lrT: number; epsT: number; decay: number } {
  const c2 = Math.sqrt(1 - o.beta2 ** t);
  return { lrT: (o.lr * c2) / (1 - o.beta1 ** t), epsT: o.eps * c2, decay: o.lr * o.weightDecay };
}
