/**
 * Attention against the KV cache (`shaders/attention.wgsl`): causal, with
 * grouped-query heads, `headDimV` ≠ `headDimK` (MLA), an optional sliding
 * window, GPT-OSS attention sinks and logit soft-capping. Workgroups walk
 * the visible keys in tiles with an online softmax: no scratch buffer, no
 * per-token allocation, decode and prefill alike. By default one workgroup
 * takes a block of query tokens of one head (`attend_tiled`), so a prefill
 * batch reads each cached key and value once per block rather than once per
 * token; heads that share a kv head may instead be grouped
 * (`headsPerWorkgroup`, MLA), and one workgroup per (head, token)
 * (`attend`) remains for `queriesPerWorkgroup: 1` and head widths too wide
 * for a block.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { ParamsBuffer } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import type { BufferBinding } from "../dispatch.ts";
import {
  bindFrom,
  type BufRef,
  checkInt,
  placeholder,
  resolveRef,
  tokenGrid,
} from "./elementwise.ts";
import { cacheExtent, cachePositions } from "./kv.ts";
import { matmulProfile } from "./matmul.ts";
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
  /** The step buffer (per-token words from `STEP.tokens`: token t sees its sequence's keys up to its position). */
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
  /**
   * {@linkcode prepareAttentionOps}: query tokens per workgroup of the
   * block dispatch when heads are not grouped (default
   * `"auto"`: the most of 16, 8, 4 that fit the device's workgroup
   * memory and the shader's registers, else 1). 1: one workgroup per
   * (head, token) only, each reading the whole visible cache.
   */
  queriesPerWorkgroup?: number | "auto";
  /**
   * Whether to use `shaders/attention_vec.wgsl` (vec4 loads, G heads of a kv
   * head per workgroup, every token in one dispatch). Default `"auto"`: on
   * adapters of the `software` matmul profile (llvmpipe: a storage load costs
   * the same at any width) wherever the widths, offsets and strides are
   * multiples of 4; `false` on GPUs, whose kernels are the blocks above.
   * `true` refuses options it cannot run.
   */
  vec4?: boolean | "auto";
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

/** `attend_vec`'s invocations (one CPU vector of lanes on llvmpipe: no barrier in its key loop). */
const VEC_WG = 8;
/** `attend_vec`'s limits on the values it unrolls: query vec4s (G · D_K / 4), accumulators (G · D_V / 4). */
const VEC_QREG = 640;
const VEC_ACC = 256;

/** Heads of `attend_vec`'s final combination per round: its workgroup buffer fits 16 KiB. */
function vecCombineHeads(g: number, dv: number): number {
  let gh = g;
  while (gh > 1 && gh * (dv / 4) * VEC_WG * 16 > 16384) gh /= 2;
  return gh;
}

/**
 * The `attend_vec` entry point of `shaders/attention_vec.wgsl` for `g`
 * heads of `dk` / `dv` elements (multiples of 4), with every loop over heads
 * and vec4s unrolled: the G queries are `let`s, a key's G scores and an
 * invocation's G · dv / 4 accumulators are plain variables (llvmpipe keeps
 * an array indexed in a loop in memory that it reads lane by lane).
 */
export function attendVecWgsl(g: number, dk: number, dv: number): string {
  if (![1, 2, 4, 8].includes(g) || dk % 4 !== 0 || dv % 4 !== 0) {
    throw new RangeError(`attendVecWgsl: ${g} heads, widths ${dk}/${dv}.`);
  }
  const wg = VEC_WG, nk = dk / 4, nv = dv / 4, gh = vecCombineHeads(g, dv);
  const heads = [...Array(g).keys()];
  const lines: string[] = [];
  const L = (x: string) => lines.push(x);
  L(`// Generated by src/gpu/ops/attention.ts attendVecWgsl(${g}, ${dk}, ${dv}).`);
  L(`const GH: u32 = ${gh}u; // heads per round of the combination`);
  L(`var<workgroup> red: array<vec4f, ${gh * nv * wg}>;`);
  L(`@compute @workgroup_size(${wg})`);
  L(`fn attend_vec(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {`);
  L(`  let h0 = wid.x * ${g}u; // first query head of this workgroup`);
  L(`  let t = wid.y;`);
  L(`  let kEnd = step[4u + 2u * t] + 1u;`);
  L(`  let base = step[5u + 2u * t];`);
  L(`  var kStart = 0u;`);
  L(`  if (params.window > 0u && kEnd > params.window) {`);
  L(`    kStart = kEnd - params.window;`);
  L(`  }`);
  L(`  let kvh = h0 / params.group;`);
  L(`  let kb = (params.kOffset + kvh * params.kHeadStride + base * params.kRowStride) / 4u;`);
  L(`  let vb = (params.vOffset + kvh * params.vHeadStride + base * params.vRowStride) / 4u;`);
  L(`  let kRow = params.kRowStride / 4u;`);
  L(`  let vRow = params.vRowStride / 4u;`);
  L(`  let qb = (params.qOffset + t * params.qStride + h0 * params.qHeadStride) / 4u;`);
  L(`  let qHead = params.qHeadStride / 4u;`);
  for (const h of heads) {
    for (let c = 0; c < nk; c++) L(`  let q${h}_${c} = q[qb + ${h}u * qHead + ${c}u];`);
  }
  for (const h of heads) {
    L(`  var m${h} = NEG_BIG;`);
    L(`  var l${h} = 0.0;`);
    for (let c = 0; c < nv; c++) L(`  var a${h}_${c} = vec4f(0.0);`);
  }
  L(`  // the invocation's own online softmax over keys kStart + lid, + ${wg}, …`);
  L(`  for (var key = kStart + lid; key < kEnd; key += ${wg}u) {`);
  L(`    let row = kb + key * kRow;`);
  L(`    let vrow = vb + key * vRow;`);
  for (const h of heads) L(`    var d${h} = 0.0;`);
  for (let c = 0; c < nk; c++) {
    L(`    {`);
    L(`      let kv = k[row + ${c}u];`);
    for (const h of heads) L(`      d${h} += dot(q${h}_${c}, kv);`);
    L(`    }`);
  }
  for (const h of heads) {
    L(`    if (params.softcap > 0.0) {`);
    L(`      d${h} = params.softcap * tanh(d${h} / params.softcap);`);
    L(`    }`);
    L(`    let s${h} = d${h} * params.scale;`);
    L(`    let n${h} = max(m${h}, s${h});`);
    L(`    let al${h} = exp(m${h} - n${h});`);
    L(`    let p${h} = exp(s${h} - n${h});`);
    L(`    m${h} = n${h};`);
    L(`    l${h} = l${h} * al${h} + p${h};`);
  }
  for (let c = 0; c < nv; c++) {
    L(`    {`);
    L(`      let vv = v[vrow + ${c}u];`);
    for (const h of heads) L(`      a${h}_${c} = a${h}_${c} * al${h} + p${h} * vv;`);
    L(`    }`);
  }
  L(`  }`);
  L(`  // combine the invocations: maxima and denominators, then the accumulators GH heads at a time`);
  for (const h of heads) {
    L(`  mm[${h * wg}u + lid] = m${h};`);
    L(`  ll[${h * wg}u + lid] = l${h};`);
  }
  L(`  workgroupBarrier();`);
  for (const h of heads) {
    L(`  var M${h} = NEG_BIG;`);
    L(`  for (var i = 0u; i < ${wg}u; i++) {`);
    L(`    M${h} = max(M${h}, mm[${h * wg}u + i]);`);
    L(`  }`);
    L(`  var S${h} = 0.0;`);
    L(`  for (var i = 0u; i < ${wg}u; i++) {`);
    L(`    S${h} += ll[${h * wg}u + i] * exp(mm[${h * wg}u + i] - M${h});`);
    L(`  }`);
    L(`  var I${h} = 1.0 / S${h};`);
    L(`  if (params.hasSinks != 0u) {`);
    L(`    let sink = sinks[params.sinksOffset + h0 + ${h}u];`);
    L(`    let mAll = max(M${h}, sink);`);
    L(`    let corr = exp(M${h} - mAll);`);
    L(`    I${h} = corr / (S${h} * corr + exp(sink - mAll));`);
    L(`  }`);
    L(`  let f${h} = exp(m${h} - M${h}) * I${h};`);
  }
  L(`  let ob = (params.oOffset + t * params.oStride) / 4u;`);
  L(`  let oHead = params.oHeadStride / 4u;`);
  for (let r = 0; r < g; r += gh) {
    L(`  workgroupBarrier();`);
    for (let h = r; h < r + gh; h++) {
      for (let c = 0; c < nv; c++) {
        L(`  red[${((h - r) * nv + c) * wg}u + lid] = a${h}_${c} * f${h};`);
      }
    }
    L(`  workgroupBarrier();`);
    L(`  for (var idx = lid; idx < ${gh * nv}u; idx += ${wg}u) {`);
    L(`    var o = vec4f(0.0);`);
    L(`    for (var i = 0u; i < ${wg}u; i++) {`);
    L(`      o += red[idx * ${wg}u + i];`);
    L(`    }`);
    L(`    out[ob + (h0 + ${r}u + idx / ${nv}u) * oHead + idx % ${nv}u] = o;`);
    L(`  }`);
  }
  L(`}`);
  return lines.join("\n") + "\n";
}

/**
 * Heads per workgroup of `attend_vec` (the most of 8, 4, 2, 1 that divide a
 * kv head's query heads and fit the shader's registers), or 0 where it cannot
 * run: widths, offsets or strides not multiples of 4, or `vec4` off
 * (`"auto"`: on for the `software` profile).
 */
function vecHeads(gpu: Gpu, o: AttentionOptions, aligned: number[]): number {
  const want = o.vec4 ?? "auto";
  if (want === false || (want === "auto" && matmulProfile(gpu).name !== "software")) return 0;
  const group = o.nHead / o.nHeadKv;
  const g = aligned.every((x) => x % 4 === 0)
    ? [8, 4, 2, 1].find((g) =>
      group % g === 0 && g * o.headDimK / 4 <= VEC_QREG && g * o.headDimV / 4 <= VEC_ACC
    ) ?? 0
    : 0;
  if (g === 0 && want === true) {
    throw new RangeError(
      `${o.label}: vec4 attention needs head widths, offsets and strides that are multiples ` +
        `of 4 elements and at most ${VEC_QREG} query / ${VEC_ACC} value vec4s per workgroup ` +
        `(widths ${o.headDimK}/${o.headDimV}, offsets and strides ${aligned.slice(2).join(", ")}).`,
    );
  }
  return g;
}

/** `attend_tiled`'s invocation-private limit on query tokens per workgroup (TQ_MAX). */
const TQ_MAX = 32;

/** Workgroup bytes `attend` needs (q, the output accumulator, 4 · WG_SIZE probabilities, the reduction). */
function tokenShared(headDimK: number, headDimV: number): number {
  return (headDimK + headDimV + 5 * WG_SIZE) * 4;
}

/** Workgroup bytes `attend_tiled` needs for blocks of `qb` tokens. */
function tiledShared(qb: number, headDimK: number): number {
  return (qb * headDimK + qb * WG_SIZE + 4 * WG_SIZE + qb) * 4;
}

/** Query tokens per workgroup for `attend_tiled` (1: the per-token `attend`). */
function queriesPerWorkgroup(gpu: Gpu, o: AttentionOptions): number {
  const vpt = Math.ceil(o.headDimV / WG_SIZE);
  const fits = (qb: number) =>
    qb % 4 === 0 && WG_SIZE % qb === 0 && qb <= TQ_MAX && qb * vpt <= REG_MAX &&
    tiledShared(qb, o.headDimK) <= gpu.limits.maxComputeWorkgroupStorageSize;
  const want = o.queriesPerWorkgroup ?? "auto";
  if (want === "auto") {
    for (const qb of [16, 8, 4]) if (fits(qb)) return qb;
    return 1;
  }
  checkInt(o.label, "queriesPerWorkgroup", want, 1);
  if (want > 1 && !fits(want)) {
    throw new RangeError(
      `${o.label}: ${want} query tokens per workgroup must be a multiple of 4 dividing ` +
        `${WG_SIZE}, at most ` +
        `${TQ_MAX}, keep ${want} × ⌈headDimV / ${WG_SIZE}⌉ ≤ ${REG_MAX}, and need ` +
        `${tiledShared(want, o.headDimK)} bytes of workgroup memory ` +
        `(device: ${gpu.limits.maxComputeWorkgroupStorageSize})`,
    );
  }
  return want;
}

/**
 * Prepares causal attention of the batch's queries against the cache as one
 * dispatch: one workgroup per (head, token), `[nHead, T]`, or per (group of
 * heads, token), `[nHead / headsPerWorkgroup, T]` (`queriesPerWorkgroup`
 * is not used: see {@linkcode prepareAttentionOps}).
 */
export async function prepareAttention(gpu: Gpu, o: AttentionOptions): Promise<Op> {
  return (await prepare(gpu, o, false))[0]!;
}

/**
 * Prepares causal attention of the batch's queries against the cache, the
 * way a model records it: where heads are not grouped and a block fits,
 * `attend_tiled` over the whole blocks of `qb = queriesPerWorkgroup` tokens
 * (`[nHead, ⌊T / qb⌋]`), when qb > 4 again over the whole blocks of 4
 * after them, then `attend` over the tokens left (`[nHead, T mod 4]`; a
 * decode step is all remainder, the tiled dispatches empty); otherwise
 * {@linkcode prepareAttention}'s one dispatch.
 */
export function prepareAttentionOps(gpu: Gpu, o: AttentionOptions): Promise<Op[]> {
  return prepare(gpu, o, true);
}

async function prepare(gpu: Gpu, o: AttentionOptions, blocks: boolean): Promise<Op[]> {
  checkInt(o.label, "nHead", o.nHead, 1);
  checkInt(o.label, "nHeadKv", o.nHeadKv, 1);
  checkInt(o.label, "headDimK", o.headDimK, 1);
  checkInt(o.label, "headDimV", o.headDimV, 1);
  checkInt(o.label, "window", o.window ?? 0, 0);
  if (o.nHead % o.nHeadKv !== 0) {
    throw new RangeError(`${o.label}: nHead ${o.nHead} is not a multiple of nHeadKv ${o.nHeadKv}.`);
  }
  const shared = tokenShared(o.headDimK, o.headDimV);
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
  const fields = {
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
  };
  const dims = { WG_SIZE, D_K: o.headDimK, D_V: o.headDimV };
  const gv = vecHeads(gpu, o, [
    o.headDimK,
    o.headDimV,
    fields.qOffset,
    fields.qStride,
    fields.qHeadStride,
    fields.kOffset,
    kRowStride,
    kHeadStride,
    fields.vOffset,
    vRowStride,
    vHeadStride,
    fields.oOffset,
    fields.oStride,
    fields.oHeadStride,
  ]);
  const grouped = headsPerWorkgroup(gpu, o); // validated even where attend_vec runs
  const g = gv > 0 ? gv : grouped;
  const qb = gv > 0 || g > 1 || !blocks ? 1 : queriesPerWorkgroup(gpu, o);
  const kernel = await getPipeline(
    gpu,
    gv > 0 ? "attention_vec" : "attention",
    gv > 0
      ? {
        entryPoint: "attend_vec",
        variant: `g${gv}_k${o.headDimK}_v${o.headDimV}`,
        defines: { ATTEND_VEC: attendVecWgsl(gv, o.headDimK, o.headDimV) },
        constants: { G: gv },
      }
      : g > 1
      ? { entryPoint: "attend_heads", constants: { ...dims, G: g } }
      : { entryPoint: "attend", constants: dims },
  );
  /** The bindings with a params buffer whose `block` is `block`. */
  const bindings = (label: string, block: number): BufferBinding[] => {
    const params = new ParamsBuffer(gpu, `${label}.params`, {
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
      block: "u32",
    });
    params.write({ ...fields, block });
    return [
      q.binding,
      kb.binding,
      vb.binding,
      sb?.binding ?? placeholder(gpu, "read"),
      out.binding,
      o.step,
      params.buffer,
    ];
  };
  if (qb === 1) {
    return [{
      label: o.label,
      kernel,
      bindings: bindings(o.label, 0),
      workgroups: tokenGrid(o.nHead / g),
    }];
  }
  // blocks of qb tokens, then of 4 (a 27-token batch: 16 + 2 × 4 + 3), then token by token
  const sizes = qb > 4 ? [qb, 4] : [qb];
  const whole = (n: number, b: number) => b === 0 ? 0 : Math.floor(n / b) * b;
  const ops: Op[] = [];
  for (let i = 0; i < sizes.length; i++) {
    const size = sizes[i]!, before = sizes[i - 1] ?? 0;
    const label = `${o.label}.blocks${size}`;
    ops.push({
      label,
      kernel: await getPipeline(gpu, "attention", {
        entryPoint: "attend_tiled",
        constants: { ...dims, QB: size },
      }),
      bindings: bindings(label, before),
      workgroups: (nTokens: number) => [
        o.nHead,
        (whole(nTokens, size) - whole(nTokens, before)) / size,
      ],
      sequences: "one",
    });
  }
  const last = sizes[sizes.length - 1]!;
  ops.push({
    label: o.label,
    kernel,
    bindings: bindings(o.label, last),
    workgroups: (nTokens: number) => [o.nHead, nTokens % last],
    sequences: "one",
  });
  // a batch of several sequences: no blocks (their tokens are not consecutive positions of one)
  ops.push({
    label: `${o.label}.tokens`,
    kernel,
    bindings: bindings(`${o.label}.tokens`, 0),
    workgroups: tokenGrid(o.nHead),
    sequences: "many",
  });
  return ops;
}
