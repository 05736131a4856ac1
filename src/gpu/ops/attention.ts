/**
 * Attention against the KV cache (`shaders/attention.wgsl`): causal, with
 * grouped-query heads, `headDimV` ≠ `headDimK` (MLA), an optional sliding
 * window, GPT-OSS attention sinks and logit soft-capping. One workgroup per
 * (head, token) walks the visible keys in tiles with an online softmax: no
 * scratch buffer, no per-token allocation, decode and prefill alike.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import {
  bindFrom,
  type BufRef,
  checkInt,
  placeholder,
  resolveRef,
  tokenGrid,
} from "./elementwise.ts";
import { cacheExtent, cachePositions } from "./kv.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareAttention}. */
export interface AttentionOptions {
  /** Queries `[T, nHead, headDimK]` (token stride from the view). */
  q: ActView;
  /** Elements between query heads; default `headDimK`. */
  qHeadStride?: number;
  /** The layer's key cache `[nCtx, nHeadKv, headDimK]`. */
  kCache: BufRef;
  /** The layer's value cache `[nCtx, nHeadKv, headDimV]`; may be the key cache (MLA). */
  vCache: BufRef;
  /** Elements between key positions; default `nHeadKv · headDimK`. */
  kRowStride?: number;
  /** Elements between value positions; default `nHeadKv · headDimV`. */
  vRowStride?: number;
  /** Elements between kv heads in a key row; default `headDimK`. */
  kHeadStride?: number;
  /** Elements between kv heads in a value row; default `headDimV`. */
  vHeadStride?: number;
  /** Output `[T, nHead, headDimV]`; must not share a buffer with q or the caches. */
  out: ActView;
  /** Elements between output heads; default `headDimV`. */
  outHeadStride?: number;
  /** Query heads. */
  nHead: number;
  /** Key/value heads; `nHead` must be a multiple. */
  nHeadKv: number;
  /** Query/key head width. */
  headDimK: number;
  /** Value (and output) head width. */
  headDimV: number;
  /** Multiplies q·k (e.g. 1/√headDimK; MLA's YaRN mscale² folded in by the caller). */
  scale: number;
  /** Cache positions; the caches must hold this many. Default: as many as they hold. */
  nCtx?: number;
  /** Sliding window: key j visible iff `0 ≤ pos − j < window`; 0 or omitted = off. */
  window?: number;
  /** f32 `[nHead]` sink logits (GPT-OSS), added to each softmax denominator. */
  sinks?: BufRef;
  /** Soft cap of the raw q·k (`cap · tanh(x / cap)`, Gemma-2/Grok); 0 or omitted = off. */
  softcap?: number;
  /** The step buffer (`STEP.pos0` is read; token t sees keys ≤ pos0 + t). */
  step: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
  /**
   * Query heads per workgroup (default 1). Heads of one workgroup share a kv
   * head and each cached row is read once for all of them (MLA: all heads
   * read the one latent row). `"auto"`: the most that divide
   * `nHead / nHeadKv` and fit the device's workgroup memory (up to 16).
   */
  headsPerWorkgroup?: number | "auto";
}

/** `attend_heads`' invocation-private limits (REG_MAX, KPT2 in the shader). */
const REG_MAX = 64;
const KPT2 = 2;

/** Workgroup bytes `attend_heads` needs for `g` heads. */
function groupedShared(g: number, headDimK: number): number {
  return (g * headDimK + g * KPT2 * WG_SIZE + 2 * g) * 4;
}

/** Heads per workgroup for `attend_heads`: valid, and the largest that fits when "auto". */
function headsPerWorkgroup(gpu: Gpu, o: AttentionOptions): number {
  const group = o.nHead / o.nHeadKv;
  const vpt = Math.ceil(o.headDimV / WG_SIZE);
  const fits = (g: number) =>
    group % g === 0 && g * vpt <= REG_MAX && g * KPT2 <= REG_MAX &&
    groupedShared(g, o.headDimK) <= gpu.limits.maxComputeWorkgroupStorageSize;
  const want = o.headsPerWorkgroup ?? 1;
  if (want === "auto") {
    for (let g = Math.min(16, group); g > 1; g--) if (fits(g)) return g;
    return 1;
  }
  checkInt(o.label, "headsPerWorkgroup", want, 1);
  if (want > 1 && !fits(want)) {
    throw new RangeError(
      `${o.label}: ${want} heads per workgroup must divide the ${group} query heads per kv head, ` +
        `keep ${want} × ⌈headDimV / ${WG_SIZE}⌉ ≤ ${REG_MAX}, and need ` +
        `${groupedShared(want, o.headDimK)} bytes of workgroup memory ` +
        `(device: ${gpu.limits.maxComputeWorkgroupStorageSize})`,
    );
  }
  return want;
}

/**
 * Prepares causal attention of the batch's queries against the cache:
 * workgroups `[nHead / headsPerWorkgroup, T]`.
 */
export async function prepareAttention(gpu: Gpu, o: AttentionOptions): Promise<Op> {
  checkInt(o.label, "nHead", o.nHead, 1);
  checkInt(o.label, "nHeadKv", o.nHeadKv, 1);
  checkInt(o.label, "headDimK", o.headDimK, 1);
  checkInt(o.label, "headDimV", o.headDimV, 1);
  checkInt(o.label, "window", o.window ?? 0, 0);
  if (o.nHead % o.nHeadKv !== 0) {
    throw new RangeError(`${o.label}: nHead ${o.nHead} is not a multiple of nHeadKv ${o.nHeadKv}.`);
  }
  // q, the output accumulator, 4 · WG_SIZE probabilities (KPT in the shader) and the reduction.
  const shared = (o.headDimK + o.headDimV + 5 * WG_SIZE) * 4;
  if (shared > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new RangeError(
      `${o.label}: head widths ${o.headDimK}/${o.headDimV} need ${shared} bytes of workgroup ` +
        `memory, over this device's ${gpu.limits.maxComputeWorkgroupStorageSize}.`,
    );
  }
  const kRowStride = o.kRowStride ?? o.nHeadKv * o.headDimK;
  const vRowStride = o.vRowStride ?? o.nHeadKv * o.headDimV;
  const kHeadStride = o.kHeadStride ?? o.headDimK;
  const vHeadStride = o.vHeadStride ?? o.headDimV;
  const kc = resolveRef(o.kCache);
  const vc = resolveRef(o.vCache);
  const kWidth = (o.nHeadKv - 1) * kHeadStride + o.headDimK;
  const vWidth = (o.nHeadKv - 1) * vHeadStride + o.headDimV;
  const nCtx = o.nCtx ?? Math.min(
    cachePositions(kc.buffer, kc.offset, kRowStride, kWidth),
    cachePositions(vc.buffer, vc.offset, vRowStride, vWidth),
  );
  checkInt(o.label, "nCtx", nCtx, 1);
  const kb = bindFrom(
    gpu,
    kc.buffer,
    kc.offset,
    cacheExtent(nCtx, kRowStride, kWidth),
  );
  const vb = bindFrom(
    gpu,
    vc.buffer,
    vc.offset,
    cacheExtent(nCtx, vRowStride, vWidth),
  );
  const q = bindFrom(gpu, o.q.buffer, o.q.offset);
  const out = bindFrom(gpu, o.out.buffer, o.out.offset);
  const sk = o.sinks ? resolveRef(o.sinks) : undefined;
  const sb = sk ? bindFrom(gpu, sk.buffer, sk.offset, o.nHead) : undefined;
  const g = headsPerWorkgroup(gpu, o);
  const kernel = await getPipeline(
    gpu,
    "attention",
    g > 1
      ? {
        entryPoint: "attend_heads",
        constants: { WG_SIZE, D_K: o.headDimK, D_V: o.headDimV, G: g },
      }
      : { entryPoint: "attend", constants: { WG_SIZE, D_K: o.headDimK, D_V: o.headDimV } },
  );
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    group: "u32",
    qOffset: "u32",
    qStride: "u32",
    qHeadStride: "u32",
    kOffset: "u32",
    kRowStride: "u32",
    kHeadStride: "u32",
    vOffset: "u32",
    vRowStride: "u32",
    vHeadStride: "u32",
    oOffset: "u32",
    oStride: "u32",
    oHeadStride: "u32",
    window: "u32",
    hasSinks: "u32",
    sinksOffset: "u32",
    scale: "f32",
    softcap: "f32",
  });
  params.write({
    group: o.nHead / o.nHeadKv,
    qOffset: q.offset,
    qStride: o.q.stride,
    qHeadStride: o.qHeadStride ?? o.headDimK,
    kOffset: kb.offset,
    kRowStride,
    kHeadStride,
    vOffset: vb.offset,
    vRowStride,
    vHeadStride,
    oOffset: out.offset,
    oStride: o.out.stride,
    oHeadStride: o.outHeadStride ?? o.headDimV,
    window: o.window ?? 0,
    hasSinks: sb ? 1 : 0,
    sinksOffset: sb?.offset ?? 0,
    scale: o.scale,
    softcap: o.softcap ?? 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [
      q.binding,
      kb.binding,
      vb.binding,
      sb?.binding ?? placeholder(gpu, "read"),
      out.binding,
      o.step,
      params.buffer,
    ],
    workgroups: tokenGrid(o.nHead / g),
  };
}
