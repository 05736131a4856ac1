/**
 * The FFN half of a block, from its norm to the residual add: a dense SwiGLU
 * FFN (DeepSeek's leading blocks), or the routed experts — router top-k on
 * the GPU, gate/up (+ per-expert biases) → SwiGLU (or GPT-OSS's clamped
 * variant) → down (+ bias) per pool arena — plus the shared expert(s),
 * optionally gated, combined into the residual stream.
 *
 * @module
 */

import { prepareMatmul, prepareMatmulId } from "../../gpu/ops/matmul.ts";
import { type EntryLists, entryListsBytes, prepareEntryLists } from "../../gpu/ops/entry_lists.ts";
import { prepareSwiglu, type SwigluOai } from "../../gpu/ops/elementwise.ts";
import { prepareRouter } from "../../gpu/ops/router.ts";
import { prepareMoeCombine } from "../../gpu/ops/moe.ts";
import { prepareSlotBias } from "../../gpu/ops/expert_bias.ts";
import type { ActView } from "../../gpu/ops/op.ts";
import type { ExpertArena } from "../transformer.ts";
import { tensorName as tn, Tensors } from "../../gguf/names.ts";
import { ffnNormName } from "../config.ts";
import { type OpBuilder, view } from "./builder.ts";

/** GPT-OSS's activation constants (llama.cpp `LLM_FFN_SWIGLU_OAI_MOE`). */
const SWIGLU_OAI: SwigluOai = { alpha: 1.702, limit: 7 };

/** The FFN input norm: `c.ffnNorm` (`ffn_norm`, or GPT-OSS's `post_attention_norm`). */
async function ffnNorm(b: OpBuilder, l: number): Promise<void> {
  const { c, s } = b.ctx;
  const E = c.nEmbd;
  await b.rmsNorm(tn(ffnNormName(c), l), view(s.x, E), view(s.xn, E), E);
}

/**
 * `down · (silu(gate · xn) ⊙ (up · xn))` of `F` hidden units, written to
 * `out` or added to it.
 */
async function swigluFfn(
  b: OpBuilder,
  names: { gate: string; up: string; down: string },
  F: number,
  out: ActView,
  accumulate: boolean,
  label: string,
): Promise<void> {
  const { gpu, c, s } = b.ctx;
  const E = c.nEmbd;
  const gate = view(s.ffGate!, F); // [T, F]
  const up = view(s.ffUp!, F);
  await b.matmul(names.gate, view(s.xn, E), gate);
  await b.matmul(names.up, view(s.xn, E), up);
  b.add(await prepareSwiglu(gpu, { gate, up, out: gate, n: F, label }));
  await b.matmul(names.down, gate, out, accumulate);
}

/** Appends block `l`'s dense FFN (no experts): x += FFN(ffn_norm(x)). */
export async function denseFfn(b: OpBuilder, l: number): Promise<void> {
  const { c, s } = b.ctx;
  await ffnNorm(b, l);
  await swigluFfn(
    b,
    { gate: tn(Tensors.ffnGate, l), up: tn(Tensors.ffnUp, l), down: tn(Tensors.ffnDown, l) },
    c.nFf!,
    view(s.x, c.nEmbd),
    true,
    `blk.${l}.swiglu`,
  );
}

// The entry lists' buffer of a run state, shared by its layers (their ops run one after another).
const sharedLists = new WeakMap<GPUBuffer, GPUBuffer>();

/** Layer `l`'s entry lists over its arenas (the op, and a slot per arena and part). */
async function entryLists(
  b: OpBuilder,
  l: number,
  arenas: readonly ExpertArena[],
): Promise<EntryLists> {
  const { gpu, c, s } = b.ctx;
  const K = c.nExpertUsed;
  const maxTokens = Math.floor(s.expertSlots.size / 4 / K);
  const bytes = entryListsBytes(gpu, arenas.length, maxTokens, K);
  let lists = sharedLists.get(s.expertSlots);
  if (!lists || lists.size < bytes) {
    lists = gpu.device.createBuffer({
      label: "expert_entry_lists",
      size: bytes,
      usage: GPUBufferUsage.STORAGE,
    });
    sharedLists.set(s.expertSlots, lists);
  }
  return await prepareEntryLists(gpu, {
    ids: view(s.expertSlots, K),
    nUsed: K,
    stacks: arenas.map((a) => ({ idBase: a.idBase, nMats: a.gate.nMats })),
    maxTokens,
    step: s.step,
    lists,
    consumersPerStack: 3,
    label: `blk.${l}.expert_lists`,
  });
}

/** Appends block `l`'s routed-expert FFN, shared expert included, from its norm to the residual add. */
export async function moeFfn(b: OpBuilder, l: number): Promise<void> {
  const { gpu, c, w, s, experts } = b.ctx;
  const E = c.nEmbd;
  const K = c.nExpertUsed;
  const F = c.nFfExp;
  await ffnNorm(b, l);
  await b.matmul(tn(Tensors.ffnGateInp, l), view(s.xn, E), view(s.routerLogits, c.nExpert));
  b.add(
    await prepareRouter(gpu, {
      logits: view(s.routerLogits, c.nExpert),
      logitBias: c.routerBias ? w.vector(tn(Tensors.ffnGateInp, l, "bias")) : undefined,
      selectionBias: w.maybeVector(tn(Tensors.ffnExpProbsB, l, "bias")),
      // routes are token-major: [token, layer, k]
      ids: { buffer: s.routes, offset: l * K, stride: c.nLayer * K },
      weights: view(s.expertWeights, K),
      slots: view(s.expertSlots, K),
      residency: experts.residency,
      misses: s.misses,
      layer: l,
      nExpert: c.nExpert,
      k: K,
      gating: c.gating,
      normalize: c.normTopK,
      scale: c.expertWeightsScale,
      nGroup: c.nExpertGroups,
      nGroupUsed: c.nExpertGroupsUsed,
      label: `blk.${l}.router`,
    }),
  );
  const slots = view(s.expertSlots, K);
  const arenas = experts.arenas(l);
  const gate = view(s.gate, K * F); // [T, K, F]
  const up = view(s.up, K * F);
  const out = view(s.expertOut, K * E); // [T, K, E]
  // Over several arenas, each arena's one-entry matvecs run over its own entries only.
  const lists = arenas.length > 1 ? await entryLists(b, l, arenas) : undefined;
  if (lists) b.add(lists.op);
  const matmulId = async (part: "gate" | "up" | "down", x: ActView, y: ActView) => {
    for (const [i, arena] of arenas.entries()) {
      b.add(
        await prepareMatmulId(gpu, {
          w: arena[part],
          ids: slots,
          idBase: arena.idBase,
          nUsed: K,
          x,
          xPerSlot: part === "down",
          y,
          step: s.step,
          label: `blk.${l}.ffn_${part}_exps@${arena.idBase}`,
          entryLists: lists ? { lists, stack: i } : undefined,
          nChoices: c.nExpert,
        }),
      );
    }
  };
  // GPT-OSS's per-expert biases, streamed with their expert: found by pool slot
  const expertBias = async (part: "gate" | "up" | "down", y: ActView, n: number) => {
    for (const arena of arenas) {
      const bias = arena[`${part}Bias`];
      if (!bias) continue;
      b.add(
        await prepareSlotBias(gpu, {
          bias,
          idBase: arena.idBase,
          slots,
          y,
          k: K,
          n,
          label: `blk.${l}.ffn_${part}_exps.bias@${arena.idBase}`,
        }),
      );
    }
  };
  await matmulId("gate", view(s.xn, E), gate);
  await matmulId("up", view(s.xn, E), up);
  await expertBias("gate", gate, F);
  await expertBias("up", up, F);
  b.add(
    await prepareSwiglu(gpu, {
      gate,
      up,
      out: gate,
      n: K * F,
      oai: c.expertAct === "swiglu_oai" ? SWIGLU_OAI : undefined,
      label: `blk.${l}.swiglu_exps`,
    }),
  );
  await matmulId("down", gate, out);
  await expertBias("down", out, E);
  let shared: ActView | undefined;
  let sharedGate: ActView | undefined;
  if (c.nFfShexp > 0) {
    shared = view(s.ffOut!, E);
    await swigluFfn(
      b,
      {
        gate: tn(Tensors.ffnGateShexp, l),
        up: tn(Tensors.ffnUpShexp, l),
        down: tn(Tensors.ffnDownShexp, l),
      },
      c.nFfShexp,
      shared,
      false,
      `blk.${l}.swiglu_shexp`,
    );
    if (c.sharedExpertGated) {
      // ffn_gate_inp_shexp is a vector [nEmbd]: a 1-row matrix.
      const name = tn(Tensors.ffnGateInpShexp, l);
      b.add(
        await prepareMatmul(gpu, {
          w: w.vectorAsRow(name, E),
          x: view(s.xn, E),
          y: view(s.shGateLogit!, 1),
          step: s.step,
          label: name,
        }),
      );
      sharedGate = view(s.shGateLogit!, 1);
    }
  }
  b.add(
    await prepareMoeCombine(gpu, {
      y: out,
      weights: view(s.expertWeights, K),
      out: view(s.x, E),
      accumulate: true,
      shared,
      sharedGate,
      k: K,
      n: E,
      label: `blk.${l}.moe_combine`,
    }),
  );
}
