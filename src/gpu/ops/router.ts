/**
 * The MoE router on the GPU (`shaders/router.wgsl`), as llama.cpp's
 * `build_moe_ffn` routes: softmax / sigmoid / top-k-then-softmax gating,
 * a selection-only bias (`exp_probs_b`), group-limited selection, weights
 * from the unbiased probabilities (renormalised and scaled on request), and
 * the residency lookup that turns expert ids into pool slots and records
 * misses — so a token's routing never needs a readback.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import type { Gating } from "./cpu_ref.ts";
import { bindFrom, type BufRef, checkInt, placeholder, resolveRef } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

export type { Gating } from "./cpu_ref.ts";

const WG_SIZE = 64;

/**
 * Layout of the misses buffer (u32 elements): `[count]` is the number of
 * misses recorded since the buffer was last cleared (it may exceed the
 * records that fit), `[window]` is 1 once any was (a forward pass may clear
 * `[count]` alone and keep this: the recurrent kernels then leave their
 * state alone for the rest of a decode window), then `(layer, token,
 * expert)` triples from `[header]`.
 * Clear at least the first 4 words (`encoder.clearBuffer(misses, 0, 16)`)
 * before each forward pass.
 */
export const MISSES = { count: 0, window: 1, header: 4, recordWords: 3 } as const;

/** Bytes of a misses buffer that holds `records` miss records. */
export function missesBytes(records: number): number {
  return (MISSES.header + MISSES.recordWords * records) * 4;
}

/** Options of {@linkcode prepareRouter}. */
export interface RouterOptions {
  /** Router logits `[T, nExpert]` (token stride from the view). */
  logits: ActView;
  /** Output: chosen expert ids, u32 `[T, k]`, best first. */
  ids: ActView;
  /** Output: their weights, f32 `[T, k]`. */
  weights: ActView;
  /** Output: their pool slots, u32 `[T, k]` (the ids when there is no residency table). */
  slots?: ActView;
  /** Experts per layer. */
  nExpert: number;
  /** Experts chosen per token. */
  k: number;
  /** Probability function. */
  gating: Gating;
  /** Renormalise the chosen weights to sum 1 (`expert_weights_norm`). */
  normalize?: boolean;
  /** `expert_weights_scale`; 0, 1 or omitted = none. */
  scale?: number;
  /** f32 `[nExpert]` added to the logits (`ffn_gate_inp.bias`, GPT-OSS). */
  logitBias?: BufRef;
  /** f32 `[nExpert]` added to the probabilities for selection only (`exp_probs_b`). */
  selectionBias?: BufRef;
  /** Expert groups; > 1 turns on group-limited selection (`expert_group_count`). */
  nGroup?: number;
  /** Groups kept per token (`expert_group_used_count`). */
  nGroupUsed?: number;
  /** i32 `[nLayer, nExpert]`: each expert's pool slot, or −1 when absent. */
  residency?: BufRef;
  /** This router's layer (row of `residency`, and the `layer` of miss records). */
  layer?: number;
  /** u32 miss counter and records (see {@linkcode MISSES}); required with `residency`. */
  misses?: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
  /** Route this many tokens whatever the batch size. */
  fixedTokens?: number;
}

/** Prepares routing of a batch: one workgroup per token. */
export async function prepareRouter(gpu: Gpu, o: RouterOptions): Promise<Op> {
  checkInt(o.label, "nExpert", o.nExpert, 1);
  checkInt(o.label, "k", o.k, 1);
  if (o.k > o.nExpert) throw new RangeError(`${o.label}: k ${o.k} > nExpert ${o.nExpert}.`);
  const nGroup = o.nGroup ?? 1;
  const nGroupUsed = o.nGroupUsed ?? nGroup;
  checkInt(o.label, "nGroup", nGroup, 1);
  if (nGroup > 1) {
    if (o.nExpert % nGroup !== 0 || nGroup > WG_SIZE || nGroupUsed < 1 || nGroupUsed > nGroup) {
      throw new RangeError(
        `${o.label}: ${o.nExpert} experts cannot be split into ${nGroup} groups with ` +
          `${nGroupUsed} used (groups must divide the experts, at most ${WG_SIZE}).`,
      );
    }
    if (nGroupUsed * (o.nExpert / nGroup) < o.k) {
      throw new RangeError(`${o.label}: ${nGroupUsed} groups hold fewer than k = ${o.k} experts.`);
    }
  }
  if (o.residency && !o.misses) {
    throw new TypeError(`${o.label}: a residency table needs a misses buffer.`);
  }
  const layer = o.layer ?? 0;
  checkInt(o.label, "layer", layer, 0);
  const shared = (3 * o.nExpert + 2 * WG_SIZE + 2 * o.k) * 4;
  if (shared > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new RangeError(
      `${o.label}: ${o.nExpert} experts need ${shared} bytes of workgroup memory.`,
    );
  }
  const kernel = await getPipeline(gpu, "router", {
    entryPoint: "route",
    constants: { WG_SIZE, N_EXPERT: o.nExpert, K: o.k },
  });
  const bind = (ref: BufRef | undefined, extent: number) => {
    if (!ref) return undefined;
    const r = resolveRef(ref);
    return bindFrom(gpu, r.buffer, r.offset, extent);
  };
  const logits = bindFrom(gpu, o.logits.buffer, o.logits.offset, o.nExpert);
  const lb = bind(o.logitBias, o.nExpert);
  const sb = bind(o.selectionBias, o.nExpert);
  const res = bind(o.residency, (layer + 1) * o.nExpert);
  const ids = bindFrom(gpu, o.ids.buffer, o.ids.offset, o.k);
  const w = bindFrom(gpu, o.weights.buffer, o.weights.offset, o.k);
  const slots = o.slots ? bindFrom(gpu, o.slots.buffer, o.slots.offset, o.k) : undefined;
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    gating: "u32",
    normalize: "u32",
    scale: "f32",
    hasLogitBias: "u32",
    logitBiasOffset: "u32",
    hasSelBias: "u32",
    selBiasOffset: "u32",
    nGroup: "u32",
    nGroupUsed: "u32",
    hasResidency: "u32",
    layer: "u32",
    residencyOffset: "u32",
    logitsOffset: "u32",
    logitsStride: "u32",
    idsOffset: "u32",
    idsStride: "u32",
    wOffset: "u32",
    wStride: "u32",
    hasSlots: "u32",
    slotsOffset: "u32",
    slotsStride: "u32",
  });
  params.write({
    gating: o.gating === "softmax" ? 0 : o.gating === "sigmoid" ? 1 : 2,
    normalize: o.normalize ? 1 : 0,
    scale: o.scale ?? 0,
    hasLogitBias: lb ? 1 : 0,
    logitBiasOffset: lb?.offset ?? 0,
    hasSelBias: sb ? 1 : 0,
    selBiasOffset: sb?.offset ?? 0,
    nGroup,
    nGroupUsed,
    hasResidency: res ? 1 : 0,
    layer,
    residencyOffset: res?.offset ?? 0,
    logitsOffset: logits.offset,
    logitsStride: o.logits.stride,
    idsOffset: ids.offset,
    idsStride: o.ids.stride,
    wOffset: w.offset,
    wStride: o.weights.stride,
    hasSlots: slots ? 1 : 0,
    slotsOffset: slots?.offset ?? 0,
    slotsStride: o.slots?.stride ?? 0,
  });
  const read = placeholder(gpu, "read");
  const write = placeholder(gpu, "write");
  return {
    label: o.label,
    kernel,
    bindings: [
      logits.binding,
      lb?.binding ?? read,
      sb?.binding ?? read,
      res?.binding ?? read,
      ids.binding,
      w.binding,
      slots?.binding ?? write,
      res ? o.misses! : write,
      params.buffer,
    ],
    workgroups: o.fixedTokens !== undefined ? o.fixedTokens : (nTokens: number) => nTokens,
  };
}
