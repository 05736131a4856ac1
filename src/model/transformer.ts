/**
 * The forward pass of a MoE transformer (Mixtral, Qwen2-MoE, Qwen3-MoE,
 * OLMoE, GPT-OSS, DeepSeek-V2/V3 and Kimi-K2): the config, the weights on the
 * GPU, and the run state (every activation buffer and the KV cache,
 * allocated once), and the ops of one batch of tokens prepared once and
 * recorded into a single submit.
 *
 * Per layer: attention — grouped-query ({@link gqaAttention}: attn_norm →
 * q/k/v (+bias) → q/k norm → RoPE → KV cache → attention with sliding window
 * and sinks where the model has them → output) or latent ({@link
 * mlaAttention}: the cache holds the compressed latent and rotated key part)
 * — added to the residual; then the FFN from its norm on — routed experts
 * ({@link moeFfn}: router top-k on the GPU → gate/up → SwiGLU → down, plus
 * shared experts → combine) or a dense FFN in DeepSeek's leading blocks
 * ({@link denseFfn}) — added to the residual. Then output_norm → lm_head →
 * argmax.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer } from "../gpu/buffers.ts";
import { type GpuWeight, type Op, recordOps, STEP, stepLength } from "../gpu/ops/op.ts";
import type { Workgroups } from "../gpu/dispatch.ts";
import { prepareMatmul } from "../gpu/ops/matmul.ts";
import { prepareGetRows } from "../gpu/ops/get_rows.ts";
import { prepareRmsNorm } from "../gpu/ops/norm.ts";
import { prepareCopy } from "../gpu/ops/elementwise.ts";
import { prepareArgmax } from "../gpu/ops/sample.ts";
import { prepareCopyLastRow, prepareGatherRows, prepareSaveIfClean } from "../gpu/ops/rows.ts";
import { FINITE, prepareCheckFinite } from "../gpu/ops/finite.ts";
import { tensorName as tn, Tensors } from "../gguf/names.ts";
import { isMoeLayer, isRecurrentLayer, type ModelConfig } from "./config.ts";
import type { GpuWeights } from "./weights.ts";
import { OpBuilder, view } from "./blocks/builder.ts";
import { gqaAttention } from "./blocks/attention.ts";
import { mlaAttention } from "./blocks/mla.ts";
import { denseFfn, moeFfn } from "./blocks/ffn.ts";
import { deltaNetBlock, gatedAttention } from "./blocks/delta_net.ts";

/** Sizes of the run state. */
export interface RunStateOptions {
  /** Context length: KV cache positions of one sequence. */
  nCtx: number;
  /** Most tokens in one batch (prefill chunk). */
  maxBatch: number;
  /**
   * Sequences the KV cache holds, `nCtx` positions each in consecutive
   * regions (continuous batching), and the most whose logits one batch
   * computes ({@link MoeTransformer.record}'s `rows`); default 1: one
   * sequence and the single-sequence head only.
   */
  maxSequences?: number;
}

/** One arena of routed-expert stacks: slots `idBase … idBase + nMats` of a layer's slot group. */
export interface ExpertArena {
  /** Slot of the arena's first matrix. */
  readonly idBase: number;
  /** Gate projections, a stack of slots. */
  readonly gate: GpuWeight;
  /** Up projections. */
  readonly up: GpuWeight;
  /** Down projections. */
  readonly down: GpuWeight;
  /** Per-slot f32 gate biases (`ffn_gate_exps.bias`, GPT-OSS), when the experts have them. */
  readonly gateBias?: GpuWeight;
  /** Per-slot up biases. */
  readonly upBias?: GpuWeight;
  /** Per-slot down biases. */
  readonly downBias?: GpuWeight;
}

/** Where the routed experts of each layer live on the GPU. */
export interface ExpertStacks {
  /** The arenas holding layer `l`'s experts (one matmul_id dispatch each); asked only for MoE layers. */
  arenas(layer: number): readonly ExpertArena[];
  /** i32 [nLayer, nExpert]: the slot of each expert, or −1 when absent. */
  readonly residency: GPUBuffer;
}

/** Every activation buffer of the forward pass. */
export class RunState {
  /** u32 [stepLength(maxBatch)]: position of the batch, tokens in it, keys after it, per-token positions. */
  readonly step: GPUBuffer;
  /**
   * With several sequences: u32 [4 + maxSequences], the rows of a batch the
   * head computes logits for: `[1]` their number, `[4 + r]` the batch row of
   * output r (see {@link MoeTransformer.headRows}).
   */
  readonly headStep?: GPUBuffer;
  /** With several sequences: f32 [maxSequences, nEmbd], the gathered rows, normed. */
  readonly lastRows?: GPUBuffer;
  /** With several sequences: f32 [maxSequences, nVocab], their logits. */
  readonly logitsRows?: GPUBuffer;
  /** u32 [STEP.length]: a constant batch of one token, for the output head. */
  readonly stepOne: GPUBuffer;
  /** u32 [maxBatch]: the batch's token ids (the sampled id lands in [0]). */
  readonly tokens: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: the residual stream. */
  readonly x: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: normalised input of a sub-block. */
  readonly xn: GPUBuffer;
  /** f32 [maxBatch, nHead · headDimK] (MLA: [maxBatch, nHead, nope + rope]). */
  readonly q: GPUBuffer;
  /** f32 [maxBatch, nHeadKv · headDimK]; absent with MLA. */
  readonly k?: GPUBuffer;
  /** f32 [maxBatch, nHeadKv · headDimV]; absent with MLA. */
  readonly v?: GPUBuffer;
  /** f32 [maxBatch, nHead · headDimV]: attention output before the projection. */
  readonly attn: GPUBuffer;
  /** MLA: f32 [maxBatch, q_lora], the compressed query (when the model compresses it). */
  readonly qA?: GPUBuffer;
  /** MLA: f32 [maxBatch, kv_lora + rope], each token's [latent | k_pe] (the cached row). */
  readonly kvA?: GPUBuffer;
  /** MLA: f32 [maxBatch, nHead, kv_lora + rope], each head's [absorbed q_nope | q_pe]. */
  readonly qMla?: GPUBuffer;
  /** MLA: f32 [maxBatch, nHead, kv_lora], attention output in latent space. */
  readonly attnLatent?: GPUBuffer;
  /** MLA: u32 [nHead] = 0…nHead−1, the per-head matrices' ids for matmul_id. */
  readonly headIds?: GPUBuffer;
  /** f32 [maxBatch, nExpert]: router logits. */
  readonly routerLogits: GPUBuffer;
  /** u32 [maxBatch, nLayer, nExpertUsed]: every layer's chosen expert ids (the routes), token-major. */
  readonly routes: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed]: their weights. */
  readonly expertWeights: GPUBuffer;
  /** u32 [maxBatch, nExpertUsed]: their pool slots. */
  readonly expertSlots: GPUBuffer;
  /** u32: miss counter and records (layer, token, expert). */
  readonly misses: GPUBuffer;
  /**
   * u32 [1]: the first layer whose output held a NaN or an infinity
   * (`nLayer` = the output head), or 0xffffffff; see `src/gpu/ops/finite.ts`.
   */
  readonly nonFinite: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: the residual stream entering the first MoE step that missed. */
  readonly saved: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nFfExp]: gate projections, then SwiGLU output. */
  readonly gate: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nFfExp]. */
  readonly up: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nEmbd]: each chosen expert's output. */
  readonly expertOut: GPUBuffer;
  /** f32 [maxBatch, max(nFfShexp, nFf)]: gate then SwiGLU of the shared expert or dense FFN. */
  readonly ffGate?: GPUBuffer;
  /** f32 [maxBatch, max(nFfShexp, nFf)]: their up projection. */
  readonly ffUp?: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: the shared expert's output. */
  readonly ffOut?: GPUBuffer;
  /** f32 [maxBatch]: the shared expert's gate logit. */
  readonly shGateLogit?: GPUBuffer;
  /** f32 [nEmbd]: the last token's final hidden state. */
  readonly last: GPUBuffer;
  /** f32 [nVocab]: logits of the last token. */
  readonly logits: GPUBuffer;
  /** Per layer: f32 [maxBatch, nEmbd], the residual stream entering its MoE step. */
  readonly hidden: GPUBuffer[] = [];
  /**
   * Per layer: f32 [nCtx, nHeadKv, headDimK] keys and [nCtx, nHeadKv,
   * headDimV] values; with MLA one [nCtx, kv_lora + rope] cache of
   * [latent | k_pe] rows that serves as both (vCache[l] === kCache[l]).
   */
  readonly kCache: GPUBuffer[] = [];
  /** Values cache, per layer. */
  readonly vCache: GPUBuffer[] = [];
  /** Gated attention: f32 [maxBatch, nHead, 2 · headDimK], each head's [q | gate]. */
  readonly qGate?: GPUBuffer;
  /** DeltaNet: f32 [maxBatch, 2 · nK · S + nV · S], the q/k/v projection. */
  readonly dnQkv?: GPUBuffer;
  /** DeltaNet: f32 [maxBatch, 2 · nK · S + nV · S], after the conv and SiLU. */
  readonly dnConv?: GPUBuffer;
  /** DeltaNet: f32 [maxBatch, nV · S], the output gate z. */
  readonly dnZ?: GPUBuffer;
  /** DeltaNet: f32 [maxBatch, 2 · nV], beta and alpha, then sigmoid(beta) and the decay. */
  readonly dnBa?: GPUBuffer;
  /** DeltaNet: f32 [maxBatch, nV · S], the recurrence's output, then normed and gated. */
  readonly dnOut?: GPUBuffer;
  /**
   * Per DeltaNet layer (others: a 4-byte placeholder): f32 [convDim, K − 1],
   * the last inputs of the conv. With {@link ssmState}, the recurrent cache:
   * one sequence's, reset at position 0.
   */
  readonly convState: GPUBuffer[] = [];
  /** Per DeltaNet layer: f32 [nV, S, S], each value head's state matrix. */
  readonly ssmState: GPUBuffer[] = [];
  /** Bytes allocated. */
  readonly bytes: number;

  /** Allocates everything once. */
  constructor(gpu: Gpu, c: ModelConfig, o: RunStateOptions) {
    let bytes = 0;
    const f32 = (label: string, n: number) => {
      bytes += n * 4;
      return createBuffer(gpu, { label, size: Math.max(4, n * 4) });
    };
    const B = o.maxBatch;
    const K = c.nExpertUsed;
    const m = c.mla;
    this.step = createBuffer(gpu, {
      label: "step",
      size: stepLength(o.maxBatch) * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.stepOne = createBuffer(gpu, {
      label: "step_one",
      data: new Uint32Array([0, 1, 1, 0]),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.tokens = f32("tokens", B);
    this.x = f32("x", B * c.nEmbd);
    this.xn = f32("xn", B * c.nEmbd);
    this.attn = f32("attn", B * c.nHead * c.headDimV);
    if (m) {
      const kvRow = m.kvLoraRank + m.ropeDim;
      this.q = f32("q", B * c.nHead * (m.nopeDim + m.ropeDim));
      if (m.qLoraRank > 0) this.qA = f32("q_a", B * m.qLoraRank);
      this.kvA = f32("kv_a", B * kvRow);
      this.qMla = f32("q_mla", B * c.nHead * kvRow);
      this.attnLatent = f32("attn_latent", B * c.nHead * m.kvLoraRank);
      this.headIds = createBuffer(gpu, {
        label: "head_ids",
        data: Uint32Array.from({ length: c.nHead }, (_, h) => h),
      });
      for (let l = 0; l < c.nLayer; l++) {
        const cache = f32(`kv_cache.${l}`, kvRows(o) * kvRow);
        this.kCache.push(cache);
        this.vCache.push(cache);
      }
    } else {
      this.q = f32("q", B * c.nHead * c.headDimK);
      this.k = f32("k", B * c.nHeadKv * c.headDimK);
      this.v = f32("v", B * c.nHeadKv * c.headDimV);
      for (let l = 0; l < c.nLayer; l++) {
        // DeltaNet layers keep no KV cache
        const n = isRecurrentLayer(c, l) ? 0 : kvRows(o);
        this.kCache.push(f32(`k_cache.${l}`, n * c.nHeadKv * c.headDimK));
        this.vCache.push(f32(`v_cache.${l}`, n * c.nHeadKv * c.headDimV));
      }
    }
    if (c.attnGated) this.qGate = f32("q_gate", B * 2 * c.nHead * c.headDimK);
    const d = c.deltaNet;
    if (d) {
      const valueDim = d.stateSize * d.nVHeads;
      const convDim = 2 * d.stateSize * d.nKHeads + valueDim;
      this.dnQkv = f32("dn_qkv", B * convDim);
      this.dnConv = f32("dn_conv", B * convDim);
      this.dnZ = f32("dn_z", B * valueDim);
      this.dnBa = f32("dn_ba", B * 2 * d.nVHeads);
      this.dnOut = f32("dn_out", B * valueDim);
      for (let l = 0; l < c.nLayer; l++) {
        const r = d.recurrent[l];
        this.convState.push(f32(`conv_state.${l}`, r ? convDim * (d.convKernel - 1) : 0));
        this.ssmState.push(f32(`ssm_state.${l}`, r ? d.nVHeads * d.stateSize ** 2 : 0));
      }
    }
    this.routerLogits = f32("router_logits", B * c.nExpert);
    this.routes = f32("routes", B * c.nLayer * K);
    this.expertWeights = f32("expert_weights", B * K);
    this.expertSlots = f32("expert_slots", B * K);
    this.misses = f32("misses", 4 + 3 * B * K);
    this.nonFinite = createBuffer(gpu, { label: "non_finite", data: new Uint32Array([FINITE]) });
    this.saved = f32("saved", B * c.nEmbd);
    this.gate = f32("gate", B * K * c.nFfExp);
    this.up = f32("up", B * K * c.nFfExp);
    this.expertOut = f32("expert_out", B * K * c.nEmbd);
    const ff = Math.max(c.nFfShexp, (c.nLayerDenseLead ?? 0) > 0 ? c.nFf ?? 0 : 0);
    if (ff > 0) {
      this.ffGate = f32("ff_gate", B * ff);
      this.ffUp = f32("ff_up", B * ff);
    }
    if (c.nFfShexp > 0) this.ffOut = f32("sh_out", B * c.nEmbd);
    if (c.sharedExpertGated) this.shGateLogit = f32("sh_gate_logit", B);
    this.last = f32("last", c.nEmbd);
    this.logits = f32("logits", c.nVocab);
    const S = o.maxSequences ?? 1;
    if (S > 1) {
      this.headStep = createBuffer(gpu, {
        label: "head_step",
        size: 4 * (STEP.tokens + S),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      this.lastRows = f32("last_rows", S * c.nEmbd);
      this.logitsRows = f32("logits_rows", S * c.nVocab);
    }
    for (let l = 0; l < c.nLayer; l++) this.hidden.push(f32(`hidden.${l}`, B * c.nEmbd));
    this.bytes = bytes;
  }

  /** Frees every buffer. */
  destroy(): void {
    const all = new Set<GPUBuffer>([
      ...this.kCache,
      ...this.vCache,
      ...this.hidden,
      ...this.convState,
      ...this.ssmState,
    ]);
    for (const v of Object.values(this)) if (v instanceof GPUBuffer) all.add(v);
    for (const b of all) b.destroy();
  }
}

/** KV cache rows: `nCtx` positions for each sequence. */
export function kvRows(o: RunStateOptions): number {
  return o.nCtx * (o.maxSequences ?? 1);
}

/** An op's workgroups for a fixed batch size, whatever batch is recorded. */
function fixedBatch(op: Op, nTokens: number): Workgroups {
  return typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
}

/** The prepared forward pass of a MoE transformer, in segments a repaired token can resume from. */
export class MoeTransformer {
  /** Token ids → embeddings. */
  readonly embed: Op[] = [];
  /** Per layer: attention, from attn_norm to the residual add. */
  readonly attention: Op[][] = [];
  /** Per layer: save the residual stream while no expert has missed. */
  readonly save: Op[] = [];
  /** Per layer: log the residual stream entering the MoE step (predictors read it). */
  readonly logHidden: Op[] = [];
  /** Per layer: the FFN (routed experts, or dense in leading blocks), from its norm to the residual add. */
  readonly moe: Op[][] = [];
  /** Per layer: flag a NaN or infinity in the residual stream leaving it. */
  readonly check: Op[] = [];
  /** Last row → output_norm → lm_head (logits of the last token), then the logits' check. */
  readonly head: Op[] = [];
  /** Greedy sampling: argmax of the logits into tokens[0]. */
  readonly argmax: Op[] = [];
  /**
   * With several sequences: the rows of `headStep` → output_norm → lm_head
   * (logits of each, `logitsRows`), then their check; recorded with the
   * number of rows as the batch size.
   */
  readonly headRows: Op[] = [];
  /** Restores the saved residual stream before resuming at a MoE step. */
  restore!: Op;

  private constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly weights: GpuWeights,
    readonly state: RunState,
    readonly experts: ExpertStacks,
  ) {}

  /** Builds the ops for a model; nothing is allocated after this. */
  static async build(
    gpu: Gpu,
    config: ModelConfig,
    weights: GpuWeights,
    experts: ExpertStacks,
    o: RunStateOptions,
  ): Promise<MoeTransformer> {
    const m = new MoeTransformer(gpu, config, weights, new RunState(gpu, config, o), experts);
    await m.#prepare(o);
    return m;
  }

  async #prepare(o: RunStateOptions): Promise<void> {
    const { gpu, config: c, weights: w, state: s } = this;
    const b = new OpBuilder({ gpu, c, w, s, experts: this.experts, nCtx: kvRows(o) });
    const E = c.nEmbd;

    // token ids → embeddings
    b.ops = this.embed;
    b.add(
      await prepareGetRows(gpu, {
        w: w.matrix(tn(Tensors.tokenEmbd)),
        ids: { buffer: s.tokens, offset: 0 },
        out: view(s.x, E),
        step: s.step,
        label: "token_embd",
      }),
    );

    for (let l = 0; l < c.nLayer; l++) {
      this.attention.push(b.ops = []);
      await (c.mla
        ? mlaAttention(b, l)
        : isRecurrentLayer(c, l)
        ? deltaNetBlock(b, l)
        : c.attnGated
        ? gatedAttention(b, l)
        : gqaAttention(b, l));
      this.save.push(
        await prepareSaveIfClean(gpu, {
          x: view(s.x, E),
          out: s.saved,
          n: E,
          misses: s.misses,
          label: `blk.${l}.save`,
        }),
      );
      this.logHidden.push(
        await prepareCopy(gpu, {
          x: view(s.x, E),
          y: view(s.hidden[l]!, E),
          n: E,
          label: `blk.${l}.log_hidden`,
        }),
      );
      this.moe.push(b.ops = []);
      await (isMoeLayer(c, l) ? moeFfn(b, l) : denseFfn(b, l));
      this.check.push(
        await prepareCheckFinite(gpu, {
          x: view(s.x, E),
          n: E,
          flag: s.nonFinite,
          misses: s.misses,
          step: s.step,
          layer: l,
          label: `blk.${l}.check_finite`,
        }),
      );
    }

    // output head on the last token only (a fixed batch of one, whatever the batch size)
    b.ops = this.head;
    b.add(
      await prepareCopyLastRow(gpu, {
        x: view(s.x, E),
        out: s.last,
        n: E,
        step: s.step,
        label: "last_row",
      }),
    );
    const head = w.maybeMatrix(tn(Tensors.output)) ?? w.matrix(tn(Tensors.tokenEmbd));
    /** output_norm → lm_head → the logits' check over rows of `rows` (fixed: one, whatever the batch). */
    const headOps = async (
      rows: GPUBuffer,
      logits: GPUBuffer,
      step: GPUBuffer,
      fixed: boolean,
      suffix: string,
    ) => {
      b.add(
        await prepareRmsNorm(gpu, {
          x: view(rows, E),
          y: view(rows, E),
          weight: w.vector(tn(Tensors.outputNorm)),
          n: E,
          rowsPerToken: 1,
          eps: c.rmsEps,
          fixedTokens: fixed ? 1 : undefined,
          label: `output_norm${suffix}`,
        }),
      );
      const mm = await prepareMatmul(gpu, {
        w: head,
        x: view(rows, E),
        y: view(logits, c.nVocab),
        step,
        label: `output${suffix}`,
      });
      b.add(fixed ? mm.map((op) => ({ ...op, workgroups: fixedBatch(op, 1) })) : mm);
      b.add(
        await prepareCheckFinite(gpu, {
          x: view(logits, c.nVocab),
          n: c.nVocab,
          flag: s.nonFinite,
          misses: s.misses,
          step: fixed ? s.step : step,
          layer: c.nLayer,
          fixedTokens: fixed ? 1 : undefined,
          label: `output${suffix}.check_finite`,
        }),
      );
    };
    await headOps(s.last, s.logits, s.stepOne, true, "");
    // several sequences: the rows listed in headStep (each sequence's last token)
    if (s.headStep && s.lastRows && s.logitsRows) {
      b.ops = this.headRows;
      b.add(
        await prepareGatherRows(gpu, {
          x: view(s.x, E),
          out: s.lastRows,
          n: E,
          step: s.headStep,
          label: "gather_rows",
        }),
      );
      await headOps(s.lastRows, s.logitsRows, s.headStep, false, ".rows");
    }
    b.ops = this.argmax;
    b.add(
      await prepareArgmax(gpu, {
        logits: view(s.logits, c.nVocab),
        n: c.nVocab,
        out: { buffer: s.tokens, index: 0 },
        label: "argmax",
      }),
    );
    this.restore = await prepareCopy(gpu, {
      x: view(s.saved, E),
      y: view(s.x, E),
      n: E,
      label: "restore",
    });
  }

  /**
   * Records a batch of `nTokens` into one compute pass: the whole forward
   * pass, or — to repair a batch whose experts missed at layer `fromLayer` —
   * the saved residual stream restored and everything from that layer's MoE
   * step on. Then, unless `head` is false, the output head and `sample`
   * (default: argmax).
   *
   * `expertGroup` computes layer `fromLayer` in expert groups, when its
   * batch needs more experts than the pool holds at once: each group's pass
   * restores the saved stream and runs the layer's MoE step with that
   * group's experts resident; the pairs routed to absent experts are
   * skipped (slot NONE), so their rows of the expert outputs keep what the
   * earlier groups computed. `"partial"`: that step only. `"last"`: then the
   * miss flag is cleared (the earlier groups' experts are absent now but were
   * computed) and the pass goes on to the later layers and the head.
   *
   * `sequences` > 1: the batch's tokens belong to several sequences (the
   * step buffer's per-token positions and KV regions; attention token by
   * token). `rows`: the head computes the logits of the `rows` batch rows
   * listed in `headStep` instead of the last token's; no sampling.
   */
  record(
    encoder: GPUCommandEncoder,
    nTokens: number,
    o: {
      fromLayer?: number;
      sample?: readonly Op[];
      head?: boolean;
      expertGroup?: "partial" | "last";
      keepWindowFlag?: boolean;
      rows?: number;
      sequences?: number;
    } = {},
  ): void {
    const many = (o.sequences ?? 1) > 1;
    // `keepWindowFlag`: a decode-window token after the first keeps the
    // misses' window word, so that if an earlier token of the window missed
    // (and this one will be dropped) the recurrent state is left alone.
    encoder.clearBuffer(this.state.misses, 0, o.keepWindowFlag ? 4 : 16);
    let pass = encoder.beginComputePass({ label: `forward×${nTokens}` });
    const L = this.config.nLayer;
    if (o.fromLayer === undefined) {
      if (o.expertGroup) throw new RangeError("record: expertGroup needs fromLayer");
      recordOps(pass, this.embed, nTokens);
      for (let l = 0; l < L; l++) this.#layer(pass, l, nTokens, many);
    } else {
      recordOps(pass, [this.restore], nTokens);
      recordOps(pass, this.moe[o.fromLayer]!, nTokens);
      if (o.expertGroup === "partial") {
        pass.end();
        return;
      }
      if (o.expertGroup === "last") {
        pass.end();
        encoder.clearBuffer(this.state.misses, 0, 16);
        pass = encoder.beginComputePass({ label: `forward×${nTokens}.after_groups` });
      }
      recordOps(pass, [this.check[o.fromLayer]!], nTokens);
      for (let l = o.fromLayer + 1; l < L; l++) this.#layer(pass, l, nTokens, many);
    }
    if (o.head !== false && o.rows !== undefined) {
      if (this.headRows.length === 0) {
        throw new RangeError("record: rows needs a run state made with maxSequences > 1");
      }
      recordOps(pass, this.headRows, o.rows!);
    } else if (o.head !== false) {
      recordOps(pass, this.head, nTokens);
      recordOps(pass, o.sample ?? this.argmax, nTokens);
    }
    pass.end();
  }

  #layer(pass: GPUComputePassEncoder, l: number, nTokens: number, many: boolean): void {
    recordOps(pass, this.attention[l]!, nTokens, many);
    recordOps(pass, [this.save[l]!, this.logHidden[l]!], nTokens);
    recordOps(pass, this.moe[l]!, nTokens);
    recordOps(pass, [this.check[l]!], nTokens);
  }

  /** Frees the run state (the weights belong to the caller). */
  destroy(): void {
    this.state.destroy();
  }
}
