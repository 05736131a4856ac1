/**
 * Gated DeltaNet (`shaders/ssm_conv.wgsl`, `gdn_gates.wgsl`, `gdn.wgsl`) and gated attention
 * (`shaders/attn_gate.wgsl`) ops of the hybrid Qwen models (Qwen3-Next,
 * Qwen3.5/3.6-MoE), as llama.cpp computes them: the short causal conv1d over
 * a per-sequence conv state, the decay and beta gates, the delta-rule
 * recurrence over a per-head state matrix (q and k L2-normalised inside), and
 * for the full-attention layers the split of the Q projection's [q | gate]
 * heads and the sigmoid gate on the attention output.
 *
 * The recurrent kernels run a batch's tokens one after another inside the
 * dispatch, so a prompt batch equals its tokens fed one at a time; they leave
 * the state untouched in a pass whose tokens will be repaired or dropped
 * (see the shader's header) and start from zeros at position 0.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { workgroupCount } from "../dispatch.ts";
import { bindFrom, checkInt, tokenGrid } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Largest conv kernel the shader holds in registers. */
export const MAX_CONV_KERNEL = 8;
/** Largest head width (state size) the shader's workgroup arrays hold. */
export const MAX_STATE_SIZE = 256;

/**
 * `y[t, c] = silu(Σ_k w[c, k] · in[t − K + 1 + k, c])` over `nChannels`
 * channels, where inputs before the batch come from `state` (the last K − 1
 * inputs of each channel, zeros at position 0), which is then advanced.
 */
export async function prepareSsmConv(
  gpu: Gpu,
  o: {
    x: ActView;
    /** f32 [nChannels, kernel] (ggml ne = [kernel, nChannels]). */
    weight: GPUBuffer;
    /** f32 [nChannels, kernel − 1]. */
    state: GPUBuffer;
    y: ActView;
    nChannels: number;
    kernel: number;
    step: GPUBuffer;
    misses: GPUBuffer;
    label: string;
  },
): Promise<Op> {
  checkInt(o.label, "nChannels", o.nChannels, 1);
  if (!Number.isInteger(o.kernel) || o.kernel < 1 || o.kernel > MAX_CONV_KERNEL) {
    throw new RangeError(
      `${o.label}: conv kernel ${o.kernel} must be an integer in 1…${MAX_CONV_KERNEL}`,
    );
  }
  const kernel = await getPipeline(gpu, "ssm_conv", {
    entryPoint: "ssm_conv",
    constants: { WG_SIZE },
  });
  const x = bindFrom(gpu, o.x.buffer, o.x.offset);
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nChannels: "u32",
    kernel: "u32",
    xOffset: "u32",
    xStride: "u32",
    yOffset: "u32",
    yStride: "u32",
    wOffset: "u32",
  });
  params.write({
    nChannels: o.nChannels,
    kernel: o.kernel,
    xOffset: x.offset,
    xStride: o.x.stride,
    yOffset: y.offset,
    yStride: o.y.stride,
    wOffset: 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [x.binding, o.weight, o.state, y.binding, o.step, o.misses, params.buffer],
    workgroups: workgroupCount(o.nChannels, WG_SIZE),
  };
}

/** Where each value head's beta and alpha sit in a token's row of the beta/alpha projections. */
export interface GateLayout {
  /** View of the rows; head h's beta at its element (see `grouped`), alpha after it. */
  ba: ActView;
  /**
   * false: `[beta (H) | alpha (H)]` (qwen35moe's separate `ssm_beta`,
   * `ssm_alpha` written side by side); true: per k head `[beta (r) | alpha
   * (r)]` with r = H / Hk (qwen3next's fused `ssm_ba`).
   */
  grouped: boolean;
}

/**
 * In place: beta ← sigmoid(beta), alpha ← exp(softplus(alpha + dt_bias) ·
 * ssm_a), the per-token decay of each of `nHeads` value heads.
 */
export async function prepareGdnGates(
  gpu: Gpu,
  o: GateLayout & {
    dtBias: GPUBuffer;
    ssmA: GPUBuffer;
    nHeads: number;
    nKHeads: number;
    step: GPUBuffer;
    label: string;
  },
): Promise<Op> {
  checkInt(o.label, "nHeads", o.nHeads, 1);
  const kernel = await getPipeline(gpu, "gdn_gates", {
    entryPoint: "gdn_gates",
    constants: { WG_SIZE },
  });
  const ba = bindFrom(gpu, o.ba.buffer, o.ba.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nHeads: "u32",
    baOffset: "u32",
    baStride: "u32",
    grouped: "u32",
    ratio: "u32",
    dtOffset: "u32",
    aOffset: "u32",
  });
  params.write({
    nHeads: o.nHeads,
    baOffset: ba.offset,
    baStride: o.ba.stride,
    grouped: o.grouped ? 1 : 0,
    ratio: o.nHeads / o.nKHeads,
    dtOffset: 0,
    aOffset: 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [o.dtBias, o.ssmA, ba.binding, o.step, params.buffer],
    workgroups: tokenGrid(workgroupCount(o.nHeads, WG_SIZE)),
  };
}

/**
 * The delta-rule recurrence over a batch, token by token: per value head,
 * the state matrix decays, takes the delta-rule update with the
 * L2-normalised k, and is read with the L2-normalised q scaled by 1/√S.
 */
export async function prepareGdn(
  gpu: Gpu,
  o: GateLayout & {
    /** `[T, …]`: `[q (Hk·S) | k (Hk·S) | v (H·S)]` after the conv. */
    qkv: ActView;
    /** f32 [H, S, S]. */
    state: GPUBuffer;
    /** `[T, H·S]`. */
    out: ActView;
    nHeads: number;
    nKHeads: number;
    headDim: number;
    /** v head h reads k head h / (H / Hk) (qwen3next) rather than h % Hk (qwen35moe). */
    interleaved: boolean;
    eps: number;
    step: GPUBuffer;
    misses: GPUBuffer;
    label: string;
  },
): Promise<Op> {
  checkInt(o.label, "nHeads", o.nHeads, 1);
  checkInt(o.label, "nKHeads", o.nKHeads, 1);
  if (o.nHeads % o.nKHeads !== 0) {
    throw new RangeError(`${o.label}: ${o.nKHeads} k heads must divide ${o.nHeads} v heads`);
  }
  if (!Number.isInteger(o.headDim) || o.headDim < 1 || o.headDim > MAX_STATE_SIZE) {
    throw new RangeError(
      `${o.label}: state size ${o.headDim} must be an integer in 1…${MAX_STATE_SIZE}`,
    );
  }
  const kernel = await getPipeline(gpu, "gdn", {
    entryPoint: "gdn",
    constants: { WG_SIZE },
  });
  const qkv = bindFrom(gpu, o.qkv.buffer, o.qkv.offset);
  const out = bindFrom(gpu, o.out.buffer, o.out.offset);
  const ba = bindFrom(gpu, o.ba.buffer, o.ba.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nHeads: "u32",
    nKHeads: "u32",
    headDim: "u32",
    interleaved: "u32",
    qkvOffset: "u32",
    qkvStride: "u32",
    outOffset: "u32",
    outStride: "u32",
    baOffset: "u32",
    baStride: "u32",
    grouped: "u32",
    eps: "f32",
  });
  params.write({
    nHeads: o.nHeads,
    nKHeads: o.nKHeads,
    headDim: o.headDim,
    interleaved: o.interleaved ? 1 : 0,
    qkvOffset: qkv.offset,
    qkvStride: o.qkv.stride,
    outOffset: out.offset,
    outStride: o.out.stride,
    baOffset: ba.offset,
    baStride: o.ba.stride,
    grouped: o.grouped ? 1 : 0,
    eps: o.eps,
  });
  return {
    label: o.label,
    kernel,
    bindings: [qkv.binding, ba.binding, o.state, out.binding, o.step, o.misses, params.buffer],
    workgroups: o.nHeads,
  };
}

/** Options of the gated-attention ops: heads of `headDim` in `src` rows, `srcHeadStride` apart. */
export interface HeadGateOptions {
  src: ActView;
  y: ActView;
  nHead: number;
  headDim: number;
  srcHeadStride: number;
  step: GPUBuffer;
  label: string;
}

async function prepareHeadGate(
  gpu: Gpu,
  entryPoint: "split_heads" | "sigmoid_mul",
  o: HeadGateOptions & { gateOffset: number },
): Promise<Op> {
  checkInt(o.label, "nHead", o.nHead, 1);
  checkInt(o.label, "headDim", o.headDim, 1);
  const kernel = await getPipeline(gpu, "attn_gate", { entryPoint, constants: { WG_SIZE } });
  const src = bindFrom(gpu, o.src.buffer, o.src.offset);
  const y = bindFrom(gpu, o.y.buffer, o.y.offset);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nHead: "u32",
    headDim: "u32",
    srcOffset: "u32",
    srcStride: "u32",
    srcHeadStride: "u32",
    gateOffset: "u32",
    yOffset: "u32",
    yStride: "u32",
  });
  params.write({
    nHead: o.nHead,
    headDim: o.headDim,
    srcOffset: src.offset,
    srcStride: o.src.stride,
    srcHeadStride: o.srcHeadStride,
    gateOffset: o.gateOffset,
    yOffset: y.offset,
    yStride: o.y.stride,
  });
  return {
    label: o.label,
    kernel,
    bindings: [src.binding, y.binding, o.step, params.buffer],
    workgroups: tokenGrid(workgroupCount(o.nHead * o.headDim, WG_SIZE)),
  };
}

/** `y[t, h, i] = src[t, h · srcHeadStride + i]`: the q halves of [q | gate] heads. */
export function prepareSplitHeads(gpu: Gpu, o: HeadGateOptions): Promise<Op> {
  return prepareHeadGate(gpu, "split_heads", { ...o, gateOffset: 0 });
}

/** `y[t, h, i] *= sigmoid(src[t, h · srcHeadStride + gateOffset + i])`. */
export function prepareSigmoidMul(
  gpu: Gpu,
  o: HeadGateOptions & { gateOffset: number },
): Promise<Op> {
  return prepareHeadGate(gpu, "sigmoid_mul", o);
}
