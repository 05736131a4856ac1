/**
 * The two token mixers of the hybrid Qwen models (Qwen3-Next, Qwen3.5-MoE):
 *
 * - {@link deltaNetBlock}, a gated DeltaNet layer: attn_norm → attn_qkv,
 *   attn_gate (z), beta/alpha (`ssm_beta` + `ssm_alpha`, or the fused
 *   `ssm_ba`) → gates (sigmoid beta, exp(softplus(alpha + dt) · a) decay) →
 *   causal conv1d over the conv state → SiLU → the delta rule over the
 *   per-head state (q, k L2-normalised) → RMSNorm per head × silu(z) →
 *   ssm_out, added to the residual stream;
 * - {@link gatedAttention}, gated full attention: attn_norm → Q (per head
 *   [q | gate]) → q norm → K, V → k norm → partial RoPE → KV cache →
 *   attention → × sigmoid(gate) → attn_output, added to the residual.
 *
 * @module
 */

import { prepareKvStore } from "../../gpu/ops/kv.ts";
import { prepareAttentionOps } from "../../gpu/ops/attention.ts";
import { prepareSwiglu } from "../../gpu/ops/elementwise.ts";
import {
  prepareGdn,
  prepareGdnGates,
  prepareSigmoidMul,
  prepareSplitHeads,
  prepareSsmConv,
} from "../../gpu/ops/delta_net.ts";
import { tensorName as tn, Tensors } from "../../gguf/names.ts";
import { type OpBuilder, view } from "./builder.ts";

/** Appends block `l`'s gated DeltaNet, from attn_norm to the residual add. */
export async function deltaNetBlock(b: OpBuilder, l: number): Promise<void> {
  const { gpu, c, w, s } = b.ctx;
  const d = c.deltaNet!;
  const E = c.nEmbd;
  const S = d.stateSize;
  const H = d.nVHeads;
  const valueDim = S * H;
  const convDim = 2 * S * d.nKHeads + valueDim;
  const qkv = view(s.dnQkv!, convDim); // [T, q | k | v]
  const conv = view(s.dnConv!, convDim); // [T, q | k | v] after conv + SiLU
  const z = view(s.dnZ!, valueDim); // [T, H, S]
  const ba = view(s.dnBa!, 2 * H); // [T, 2H]: beta and alpha per head
  const out = view(s.dnOut!, valueDim); // [T, H, S]

  await b.rmsNorm(tn(Tensors.attnNorm, l), view(s.x, E), view(s.xn, E), E);
  await b.matmul(tn(Tensors.attnQkv, l), view(s.xn, E), qkv);
  await b.matmul(tn(Tensors.attnGate, l), view(s.xn, E), z);
  if (d.fusedBa) {
    await b.matmul(tn(Tensors.ssmBa, l), view(s.xn, E), ba);
  } else {
    await b.matmul(tn(Tensors.ssmBeta, l), view(s.xn, E), ba);
    await b.matmul(tn(Tensors.ssmAlpha, l), view(s.xn, E), view(s.dnBa!, 2 * H, H));
  }
  b.add(
    await prepareGdnGates(gpu, {
      ba,
      grouped: d.fusedBa,
      dtBias: w.vector(tn(Tensors.ssmDt, l, "bias")),
      ssmA: w.vector(tn(Tensors.ssmA, l, "")),
      nHeads: H,
      nKHeads: d.nKHeads,
      step: s.step,
      label: `blk.${l}.ssm_gates`,
    }),
  );
  b.add(
    await prepareSsmConv(gpu, {
      x: qkv,
      weight: w.vector(tn(Tensors.ssmConv1d, l)),
      state: s.convState[l]!,
      y: conv,
      nChannels: convDim,
      kernel: d.convKernel,
      step: s.step,
      misses: s.misses,
      label: `blk.${l}.ssm_conv`,
    }),
  );
  b.add(
    await prepareGdn(gpu, {
      qkv: conv,
      ba,
      grouped: d.fusedBa,
      state: s.ssmState[l]!,
      out,
      nHeads: H,
      nKHeads: d.nKHeads,
      headDim: S,
      interleaved: d.interleaved,
      eps: c.rmsEps,
      step: s.step,
      misses: s.misses,
      label: `blk.${l}.gated_delta`,
    }),
  );
  // gated RMSNorm: norm(out) per head × silu(z)
  await b.rmsNorm(tn(Tensors.ssmNorm, l), out, out, S, { rows: H });
  b.add(
    await prepareSwiglu(gpu, { gate: z, up: out, out, n: valueDim, label: `blk.${l}.ssm_gate` }),
  );
  await b.matmul(tn(Tensors.ssmOut, l), out, view(s.x, E), true);
}

/** Appends block `l`'s gated full attention, from attn_norm to the residual add. */
export async function gatedAttention(b: OpBuilder, l: number): Promise<void> {
  const { gpu, c, s, nCtx } = b.ctx;
  const E = c.nEmbd;
  const hd = c.headDimK;
  const qgDim = 2 * c.nHead * hd; // [T, nHead, q | gate]
  const qDim = c.nHead * hd;
  const kDim = c.nHeadKv * hd;
  const qg = view(s.qGate!, qgDim);
  const q = view(s.q, qDim);
  const k = view(s.k!, kDim);
  const v = view(s.v!, kDim);

  await b.rmsNorm(tn(Tensors.attnNorm, l), view(s.x, E), view(s.xn, E), E);
  await b.matmul(tn(Tensors.attnQ, l), view(s.xn, E), qg);
  await b.rmsNorm(tn(Tensors.attnQNorm, l), qg, qg, hd, { rows: c.nHead, rowStride: 2 * hd });
  const heads = { nHead: c.nHead, headDim: hd, srcHeadStride: 2 * hd, step: s.step };
  b.add(await prepareSplitHeads(gpu, { ...heads, src: qg, y: q, label: `blk.${l}.split_q` }));
  await b.matmul(tn(Tensors.attnK, l), view(s.xn, E), k);
  await b.matmul(tn(Tensors.attnV, l), view(s.xn, E), v);
  await b.rmsNorm(tn(Tensors.attnKNorm, l), k, k, hd, { rows: c.nHeadKv });
  await b.rope(q, { nHeads: c.nHead, headDim: hd, label: `blk.${l}.rope_q` });
  await b.rope(k, { nHeads: c.nHeadKv, headDim: hd, label: `blk.${l}.rope_k` });
  b.add(
    await prepareKvStore(gpu, {
      k,
      v,
      kCache: s.kCache[l]!,
      vCache: s.vCache[l]!,
      kRow: kDim,
      vRow: kDim,
      nCtx,
      step: s.step,
      label: `blk.${l}.kv_store`,
    }),
  );
  const attn = view(s.attn, qDim);
  b.add(
    await prepareAttentionOps(gpu, {
      q,
      kCache: s.kCache[l]!,
      vCache: s.vCache[l]!,
      out: attn,
      nHead: c.nHead,
      nHeadKv: c.nHeadKv,
      headDimK: hd,
      headDimV: hd,
      scale: c.attnScale,
      window: 0,
      nCtx,
      step: s.step,
      label: `blk.${l}.attention`,
    }),
  );
  b.add(
    await prepareSigmoidMul(gpu, {
      ...heads,
      src: qg,
      y: attn,
      gateOffset: hd,
      label: `blk.${l}.attn_gate`,
    }),
  );
  await b.matmul(tn(Tensors.attnOut, l), attn, view(s.x, E), true);
}
