/**
 * Rotary position embedding (`shaders/rope.wgsl`), in place, as ggml's
 * `rope_ext` computes it: normal (adjacent pairs) and neox (halves) modes,
 * a rotated sub-range of each head, frequency factors, and the full YaRN
 * correction (`ggml_rope_yarn_corr_dims`, ramp, magnitude scale). Each
 * token's position is read from the step buffer's per-token words
 * (`stepWords`: `pos0 + t` for a batch of one sequence).
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { ropeConstants, type RopeMode } from "./cpu_ref.ts";
import {
  bindFrom,
  type BufRef,
  checkInt,
  placeholder,
  resolveRef,
  tokenGrid,
} from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

export type { RopeMode } from "./cpu_ref.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareRope}. */
export interface RopeOptions {
  /** `[T, nHeads, headDim]`, rotated in place (token stride from the view). */
  x: ActView;
  /** Heads per token. */
  nHeads: number;
  /** Width of one head. */
  headDim: number;
  /** Elements between heads; default `headDim`. */
  headStride?: number;
  /** Dimensions rotated per head (even, ≤ headDim − dimOffset). */
  nRot: number;
  /** First rotated dimension of each head (the rope part of a split MLA head); default 0. */
  dimOffset?: number;
  /** Pairing: `"normal"` (llama, deepseek2) or `"neox"` (qwen, gpt-oss). */
  mode: RopeMode;
  /** Frequency base (`rope.freq_base`). */
  freqBase: number;
  /** Frequency scale, 1 / scaling factor; default 1. */
  freqScale?: number;
  /** YaRN extrapolation mix; default 0 (off). */
  extFactor?: number;
  /** cos/sin magnitude scale; default 1. */
  attnFactor?: number;
  /** YaRN beta fast; default 32. */
  betaFast?: number;
  /** YaRN beta slow; default 1. */
  betaSlow?: number;
  /** Original training context for YaRN; default 0. */
  nCtxOrig?: number;
  /** f32 `[nRot / 2]` frequency divisors (`rope_freqs.weight`); default none. */
  freqFactors?: BufRef;
  /** The step buffer (per-token words from `STEP.tokens`: position, sequence base row). */
  step: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
}

/** Prepares an in-place RoPE of `[T, nHeads, headDim]`: one invocation per rotated pair. */
export async function prepareRope(gpu: Gpu, o: RopeOptions): Promise<Op> {
  const dimOffset = o.dimOffset ?? 0;
  checkInt(o.label, "nHeads", o.nHeads, 1);
  checkInt(o.label, "nRot", o.nRot, 2);
  if (o.nRot % 2 !== 0 || dimOffset + o.nRot > o.headDim) {
    throw new RangeError(
      `${o.label}: nRot ${o.nRot} must be even and fit the head from dimOffset ${dimOffset} ` +
        `(headDim ${o.headDim}).`,
    );
  }
  const kernel = await getPipeline(gpu, "rope", { entryPoint: "rope", constants: { WG_SIZE } });
  const x = bindFrom(gpu, o.x.buffer, o.x.offset);
  const ffRef = o.freqFactors ? resolveRef(o.freqFactors) : undefined;
  const ff = ffRef ? bindFrom(gpu, ffRef.buffer, ffRef.offset) : undefined;
  const c = ropeConstants(o);
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    nHeads: "u32",
    headStride: "u32",
    nRot: "u32",
    dimOffset: "u32",
    offset: "u32",
    stride: "u32",
    mode: "u32",
    hasFreqFactors: "u32",
    ffOffset: "u32",
    thetaScale: "f32",
    freqScale: "f32",
    extFactor: "f32",
    corr0: "f32",
    corr1: "f32",
    mscale: "f32",
    mscaleExt: "f32",
  });
  params.write({
    nHeads: o.nHeads,
    headStride: o.headStride ?? o.headDim,
    nRot: o.nRot,
    dimOffset,
    offset: x.offset,
    stride: o.x.stride,
    mode: o.mode === "normal" ? 0 : 2,
    hasFreqFactors: ff ? 1 : 0,
    ffOffset: ff?.offset ?? 0,
    thetaScale: c.thetaScale,
    freqScale: o.freqScale ?? 1,
    extFactor: o.extFactor ?? 0,
    corr0: c.corr0,
    corr1: c.corr1,
    mscale: c.mscale,
    mscaleExt: c.mscaleExt,
  });
  return {
    label: o.label,
    kernel,
    bindings: [x.binding, ff?.binding ?? placeholder(gpu, "read"), o.step, params.buffer],
    workgroups: tokenGrid(Math.ceil((o.nHeads * o.nRot) / 2 / WG_SIZE)),
  };
}
