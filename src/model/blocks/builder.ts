/**
 * What the shared blocks of the forward pass build with: the model's config,
 * weights and run state, and an op list with helpers for the few ops every
 * block prepares (matmul, optional bias, RMSNorm, RoPE with the model's
 * scaling).
 *
 * @module
 */

import type { Gpu } from "../../gpu/device.ts";
import type { ActView, Op } from "../../gpu/ops/op.ts";
import { prepareMatmul } from "../../gpu/ops/matmul.ts";
import { prepareRmsNorm } from "../../gpu/ops/norm.ts";
import { prepareRope } from "../../gpu/ops/rope.ts";
import { prepareAddBias } from "../../gpu/ops/elementwise.ts";
import type { ModelConfig } from "../config.ts";
import type { GpuWeights } from "../weights.ts";
import type { ExpertStacks, RunState } from "../transformer.ts";

/** Everything a block reads while it prepares its ops. */
export interface BuildContext {
  /** The device. */
  readonly gpu: Gpu;
  /** Hyperparameters. */
  readonly c: ModelConfig;
  /** Base weights by tensor name. */
  readonly w: GpuWeights;
  /** Activations and KV cache. */
  readonly s: RunState;
  /** The routed experts' pool arenas and residency table. */
  readonly experts: ExpertStacks;
  /** KV cache positions. */
  readonly nCtx: number;
}

/** A view of an activation buffer: `stride` elements per token from `offset`. */
export function view(buffer: GPUBuffer, stride: number, offset = 0): ActView {
  return { buffer, offset, stride };
}

/** An op list being built, and helpers that append to it. */
export class OpBuilder {
  /** Where ops go; a block's caller points it at the segment being built. */
  ops: Op[] = [];

  /** A builder over `ctx`. */
  constructor(readonly ctx: BuildContext) {}

  /** Appends ops. */
  add(more: Op | readonly Op[]): void {
    if (Array.isArray(more)) this.ops.push(...more);
    else this.ops.push(more as Op);
  }

  /** `y (+)= W·x` for the base matrix `name`. */
  async matmul(name: string, x: ActView, y: ActView, accumulate = false): Promise<void> {
    const { gpu, w, s } = this.ctx;
    this.add(
      await prepareMatmul(gpu, { w: w.matrix(name), x, y, step: s.step, accumulate, label: name }),
    );
  }

  /** `y += bias` when the vector `name` exists. */
  async bias(name: string, y: ActView, n: number): Promise<void> {
    const b = this.ctx.w.maybeVector(name);
    if (b) this.add(await prepareAddBias(this.ctx.gpu, { y, bias: b, n, label: name }));
  }

  /** RMSNorm with the weight vector `name` over rows of `n` (`rows` per token, `rowStride` apart). */
  async rmsNorm(
    name: string,
    x: ActView,
    y: ActView,
    n: number,
    o: { rows?: number; rowStride?: number } = {},
  ): Promise<void> {
    this.add(
      await prepareRmsNorm(this.ctx.gpu, {
        x,
        y,
        weight: this.ctx.w.vector(name),
        n,
        rowsPerToken: o.rows ?? 1,
        rowStride: o.rowStride,
        eps: this.ctx.c.rmsEps,
        label: name,
      }),
    );
  }

  /**
   * RoPE in place over `[T, nHeads, headDim]` with the model's pairing and
   * scaling; `dimOffset` rotates a sub-range (MLA's rope part), `freqBase`
   * overrides the base (sliding-window layers).
   */
  async rope(
    x: ActView,
    o: {
      nHeads: number;
      headDim: number;
      headStride?: number;
      dimOffset?: number;
      freqBase?: number;
      label: string;
    },
  ): Promise<void> {
    const c = this.ctx.c;
    this.add(
      await prepareRope(this.ctx.gpu, {
        x,
        nHeads: o.nHeads,
        headDim: o.headDim,
        headStride: o.headStride,
        dimOffset: o.dimOffset,
        nRot: c.nRot,
        mode: c.ropeType,
        freqBase: o.freqBase ?? c.ropeFreqBase,
        freqScale: c.ropeFreqScale,
        extFactor: c.yarnExtFactor,
        attnFactor: c.yarnAttnFactor,
        betaFast: c.yarnBetaFast,
        betaSlow: c.yarnBetaSlow,
        nCtxOrig: c.nCtxOrig,
        step: this.ctx.s.step,
        label: o.label,
      }),
    );
  }
}
