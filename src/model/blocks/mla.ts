/**
 * Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2) as llama.cpp runs it
 * with the absorption optimisation (`src/models/deepseek2.cpp`): the cache
 * holds, per position, the normalised latent `c` (kv_lora elements) and the
 * rotated shared key part `k_pe` (rope elements) — not per-head K and V.
 *
 * Per head h, with q = [q_nope | q_pe]:
 *   score(h, j) = (W_kb[h] · q_nope[h]) · c_j + rope(q_pe[h]) · k_pe_j
 *   out[h]      = W_vb[h] · Σ_j softmax(score)_j · c_j
 * which equals attention over the decompressed k_nope = W_kb[h]ᵀ c and
 * v = W_vb[h] c. Scores are scaled by mscale² / √(nope + rope) (YaRN).
 *
 * So the attention kernel sees one kv head of width kv_lora + rope whose
 * value is the row's first kv_lora elements, and each query head as
 * `[W_kb[h] · q_nope[h] | q_pe[h]]`. It scores and accumulates a group of
 * heads per workgroup, so each cached row is read once per group rather
 * than once per head (`headsPerWorkgroup: "auto"`, 8 at Kimi-K2's widths).
 *
 * @module
 */

import { prepareMatmulId } from "../../gpu/ops/matmul.ts";
import { prepareKvStore } from "../../gpu/ops/kv.ts";
import { prepareAttention } from "../../gpu/ops/attention.ts";
import { prepareCopyRows } from "../../gpu/ops/copy_rows.ts";
import { tensorName as tn, Tensors } from "../../gguf/names.ts";
import { type OpBuilder, view } from "./builder.ts";

/** Appends block `l`'s latent attention, from attn_norm to the residual add. */
export async function mlaAttention(b: OpBuilder, l: number): Promise<void> {
  const { gpu, c, w, s, nCtx } = b.ctx;
  const m = c.mla!;
  const E = c.nEmbd;
  const H = c.nHead;
  const qHead = m.nopeDim + m.ropeDim; // q head [nope | rope]
  const kvRow = m.kvLoraRank + m.ropeDim; // cached row [latent | k_pe]
  const q = view(s.q, H * qHead); // [T, H, nope + rope]
  const kvA = view(s.kvA!, kvRow); // [T, kv_lora + rope]
  const qMla = view(s.qMla!, H * kvRow); // [T, H, kv_lora + rope]
  const latent = view(s.attnLatent!, H * m.kvLoraRank); // [T, H, kv_lora]
  const heads = { buffer: s.headIds!, offset: 0, stride: 0 }; // every token: heads 0…H−1

  await b.rmsNorm(tn(Tensors.attnNorm, l), view(s.x, E), view(s.xn, E), E);
  if (m.qLoraRank > 0) {
    const qA = view(s.qA!, m.qLoraRank); // [T, q_lora]
    await b.matmul(tn(Tensors.attnQA, l), view(s.xn, E), qA);
    await b.rmsNorm(tn(Tensors.attnQANorm, l), qA, qA, m.qLoraRank);
    await b.matmul(tn(Tensors.attnQB, l), qA, q);
  } else {
    await b.matmul(tn(Tensors.attnQ, l), view(s.xn, E), q);
  }
  await b.matmul(tn(Tensors.attnKvAMqa, l), view(s.xn, E), kvA);
  // k_pe: the shared rotated key part; the latent is normalised (its norm does not touch k_pe)
  await b.rope(kvA, {
    nHeads: 1,
    headDim: kvRow,
    dimOffset: m.kvLoraRank,
    label: `blk.${l}.rope_k`,
  });
  await b.rmsNorm(tn(Tensors.attnKvANorm, l), kvA, kvA, m.kvLoraRank);
  await b.rope(q, { nHeads: H, headDim: qHead, dimOffset: m.nopeDim, label: `blk.${l}.rope_q` });
  // absorbed query: W_kb[h] · q_nope[h] into each head's first kv_lora elements
  b.add(
    await prepareMatmulId(gpu, {
      w: w.matrix(tn(Tensors.attnKB, l)), // H × [kv_lora, nope]
      ids: heads,
      nUsed: H,
      x: q,
      xPerSlot: true,
      xSlotStride: qHead,
      y: qMla,
      ySlotStride: kvRow,
      step: s.step,
      label: tn(Tensors.attnKB, l),
    }),
  );
  b.add(
    await prepareCopyRows(gpu, {
      x: view(s.q, H * qHead, m.nopeDim),
      xRowStride: qHead,
      y: view(s.qMla!, H * kvRow, m.kvLoraRank),
      yRowStride: kvRow,
      rows: H,
      n: m.ropeDim,
      label: `blk.${l}.q_pe`,
    }),
  );
  b.add(
    await prepareKvStore(gpu, {
      k: kvA,
      kCache: s.kCache[l]!,
      kRow: kvRow,
      nCtx,
      step: s.step,
      label: `blk.${l}.kv_store`,
    }),
  );
  b.add(
    await prepareAttention(gpu, {
      q: qMla,
      kCache: s.kCache[l]!,
      vCache: s.kCache[l]!, // the value is the latent: a prefix of each cached row
      kRowStride: kvRow,
      vRowStride: kvRow,
      out: latent,
      nHead: H,
      nHeadKv: 1,
      headDimK: kvRow,
      headDimV: m.kvLoraRank,
      scale: c.attnScale,
      nCtx,
      step: s.step,
      label: `blk.${l}.attention`,
      // all heads read the one latent row: read it once per group of heads
      headsPerWorkgroup: "auto",
    }),
  );
  // decompress each head's output: W_vb[h] · latent[h]
  const vDim = H * m.vHeadDim;
  b.add(
    await prepareMatmulId(gpu, {
      w: w.matrix(tn(Tensors.attnVB, l)), // H × [v_head, kv_lora]
      ids: heads,
      nUsed: H,
      x: latent,
      xPerSlot: true,
      xSlotStride: m.kvLoraRank,
      y: view(s.attn, vDim),
      ySlotStride: m.vHeadDim,
      step: s.step,
      label: tn(Tensors.attnVB, l),
    }),
  );
  await b.matmul(tn(Tensors.attnOut, l), view(s.attn, vDim), view(s.x, E), true);
}
