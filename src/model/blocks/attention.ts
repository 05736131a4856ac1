/**
 * Grouped-query attention with a K/V cache (Mixtral, Qwen-MoE, OLMoE,
 * GPT-OSS): attn_norm → q/k/v (+bias) → q/k norm → RoPE → cache →
 * attention (sliding window and sinks where the model has them) → output
 * (+bias) added to the residual stream.
 *
 * @module
 */

import { prepareKvStore } from "../../gpu/ops/kv.ts";
import { prepareAttentionOps } from "../../gpu/ops/attention.ts";
import { tensorName as tn, Tensors } from "../../gguf/names.ts";
import { type OpBuilder, view } from "./builder.ts";

/** Appends block `l`'s attention, from attn_norm to the residual add. */
export async function gqaAttention(b: OpBuilder, l: number): Promise<void> {
  const { gpu, c, w, s, nCtx } = b.ctx;
  const E = c.nEmbd;
  const qDim = c.nHead * c.headDimK; // [T, nHead, headDimK]
  const kDim = c.nHeadKv * c.headDimK; // [T, nHeadKv, headDimK]
  const vDim = c.nHeadKv * c.headDimV; // [T, nHeadKv, headDimV]
  const q = view(s.q, qDim);
  const k = view(s.k!, kDim);
  const v = view(s.v!, vDim);

  await b.rmsNorm(tn(Tensors.attnNorm, l), view(s.x, E), view(s.xn, E), E);
  await b.matmul(tn(Tensors.attnQ, l), view(s.xn, E), q);
  await b.matmul(tn(Tensors.attnK, l), view(s.xn, E), k);
  await b.matmul(tn(Tensors.attnV, l), view(s.xn, E), v);
  await b.bias(tn(Tensors.attnQ, l, "bias"), q, qDim);
  await b.bias(tn(Tensors.attnK, l, "bias"), k, kDim);
  await b.bias(tn(Tensors.attnV, l, "bias"), v, vDim);
  if (c.qkNorm !== "none") {
    // per head (Qwen3) or over the whole projection (OLMoE)
    const perHead = c.qkNorm === "head";
    for (
      const [t, x, heads, dim] of [[Tensors.attnQNorm, q, c.nHead, qDim], [
        Tensors.attnKNorm,
        k,
        c.nHeadKv,
        kDim,
      ]] as const
    ) {
      await b.rmsNorm(tn(t, l), x, x, perHead ? c.headDimK : dim, { rows: perHead ? heads : 1 });
    }
  }
  const window = c.windows?.[l] ?? 0;
  const freqBase = window > 0 ? c.ropeFreqBaseSwa ?? c.ropeFreqBase : c.ropeFreqBase;
  await b.rope(q, { nHeads: c.nHead, headDim: c.headDimK, freqBase, label: `blk.${l}.rope_q` });
  await b.rope(k, { nHeads: c.nHeadKv, headDim: c.headDimK, freqBase, label: `blk.${l}.rope_k` });
  b.add(
    await prepareKvStore(gpu, {
      k,
      v,
      kCache: s.kCache[l]!,
      vCache: s.vCache[l]!,
      kRow: kDim,
      vRow: vDim,
      nCtx,
      step: s.step,
      label: `blk.${l}.kv_store`,
    }),
  );
  b.add(
    await prepareAttentionOps(gpu, {
      q,
      kCache: s.kCache[l]!,
      vCache: s.vCache[l]!,
      out: view(s.attn, c.nHead * c.headDimV),
      nHead: c.nHead,
      nHeadKv: c.nHeadKv,
      headDimK: c.headDimK,
      headDimV: c.headDimV,
      scale: c.attnScale,
      window,
      sinks: c.attnSinks ? w.vector(tn(Tensors.attnSinks, l)) : undefined,
      nCtx,
      step: s.step,
      label: `blk.${l}.attention`,
    }),
  );
  // x += W_o · attn (+ b_o)
  await b.matmul(tn(Tensors.attnOut, l), view(s.attn, c.nHead * c.headDimV), view(s.x, E), true);
  await b.bias(tn(Tensors.attnOut, l, "bias"), view(s.x, E), E);
}
