/**
 * KV cache writes (`shaders/kv.wgsl`): the batch's K and V rows are copied
 * into a layer's f32 cache, token t at row `base + pos` (its sequence's
 * first cache row and its position, from the step buffer's per-token words;
 * `0 + pos0 + t` for a batch of one sequence). A row is whatever one position holds — `nHeadKv · headDim`
 * for a plain cache, `[latent | k_pe]` for MLA — so only its width matters.
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
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 64;

/** Options of {@linkcode prepareKvStore}. */
export interface KvStoreOptions {
  /** The batch's keys `[T, kRow]` (token stride from the view). */
  k: ActView;
  /** The layer's key cache `[nCtx, kRow]` (from an element offset if given). */
  kCache: BufRef;
  /** Elements of one key row (nHeadKv · headDimK, or MLA's kv_lora + rope). */
  kRow: number;
  /** Elements between cache positions of K; default `kRow`. */
  kCacheStride?: number;
  /** The batch's values `[T, vRow]`; omit to store keys only (MLA). */
  v?: ActView;
  /** The layer's value cache `[nCtx, vRow]`. */
  vCache?: BufRef;
  /** Elements of one value row. */
  vRow?: number;
  /** Elements between cache positions of V; default `vRow`. */
  vCacheStride?: number;
  /** Cache positions; the caches must hold this many. Default: as many as they hold. */
  nCtx?: number;
  /** The step buffer (per-token words from `STEP.tokens`: position, sequence base row). */
  step: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
}

/** Elements from a cache's first element to the end of its last position. */
export function cacheExtent(nCtx: number, stride: number, width: number): number {
  return (nCtx - 1) * stride + width;
}

/** Positions of `width` elements, `stride` apart from element `offset`, that `buffer` holds. */
export function cachePositions(
  buffer: GPUBuffer,
  offset: number,
  stride: number,
  width: number,
): number {
  const room = buffer.size / 4 - offset - width;
  return room < 0 ? 0 : Math.floor(room / stride) + 1;
}

function checkCache(
  label: string,
  name: string,
  buf: GPUBuffer,
  offset: number,
  extent: number,
): void {
  if ((offset + extent) * 4 > buf.size) {
    throw new RangeError(
      `${label}: ${name} "${buf.label}" holds ${buf.size} bytes; the cache needs elements ` +
        `${offset}…${offset + extent} (nCtx positions × row stride).`,
    );
  }
}

/** Prepares the store of a batch's K (and V) rows into the cache at `pos0 + t`. */
export async function prepareKvStore(gpu: Gpu, o: KvStoreOptions): Promise<Op> {
  checkInt(o.label, "kRow", o.kRow, 1);
  const vRow = o.v ? o.vRow ?? 0 : 0;
  if (o.v && (!o.vCache || vRow < 1)) {
    throw new TypeError(`${o.label}: v needs vCache and a positive vRow.`);
  }
  const kc = resolveRef(o.kCache);
  const kcStride = o.kCacheStride ?? o.kRow;
  const vc = o.v && o.vCache ? resolveRef(o.vCache) : undefined;
  const vcStride = o.vCacheStride ?? vRow;
  const nCtx = o.nCtx ?? Math.min(
    cachePositions(kc.buffer, kc.offset, kcStride, o.kRow),
    vc ? cachePositions(vc.buffer, vc.offset, vcStride, vRow) : Infinity,
  );
  checkInt(o.label, "nCtx", nCtx, 1);
  const kExtent = cacheExtent(nCtx, kcStride, o.kRow);
  checkCache(o.label, "kCache", kc.buffer, kc.offset, kExtent);
  const vExtent = cacheExtent(nCtx, vcStride, vRow);
  if (vc) checkCache(o.label, "vCache", vc.buffer, vc.offset, vExtent);

  const kernel = await getPipeline(gpu, "kv", { entryPoint: "store", constants: { WG_SIZE } });
  const k = bindFrom(gpu, o.k.buffer, o.k.offset);
  const v = o.v ? bindFrom(gpu, o.v.buffer, o.v.offset) : undefined;
  const kcb = bindFrom(gpu, kc.buffer, kc.offset, kExtent);
  const vcb = vc ? bindFrom(gpu, vc.buffer, vc.offset, vExtent) : undefined;
  const params = new ParamsBuffer(gpu, `${o.label}.params`, {
    kWidth: "u32",
    kOffset: "u32",
    kStride: "u32",
    kcOffset: "u32",
    kcStride: "u32",
    vWidth: "u32",
    vOffset: "u32",
    vStride: "u32",
    vcOffset: "u32",
    vcStride: "u32",
  });
  params.write({
    kWidth: o.kRow,
    kOffset: k.offset,
    kStride: o.k.stride,
    kcOffset: kcb.offset,
    kcStride,
    vWidth: vRow,
    vOffset: v?.offset ?? 0,
    vStride: o.v?.stride ?? 0,
    vcOffset: vcb?.offset ?? 0,
    vcStride: vc ? vcStride : 0,
  });
  return {
    label: o.label,
    kernel,
    bindings: [
      k.binding,
      v?.binding ?? placeholder(gpu, "read"),
      kcb.binding,
      vcb?.binding ?? placeholder(gpu, "write"),
      o.step,
      params.buffer,
    ],
    workgroups: tokenGrid(Math.ceil((o.kRow + vRow) / WG_SIZE)),
  };
}
