/**
 * The forward pass of a MoE transformer (Mixtral, Qwen2-MoE, Qwen3-MoE):
 * the config, the weights on the GPU, and the run state (every activation
 * buffer and the KV cache, allocated once), and the ops of one batch of
 * tokens prepared once and recorded into a single submit.
 *
 * Per layer: attn_norm → q/k/v (+bias) → q/k norm → RoPE → KV cache →
 * attention → output (+residual) → ffn_norm → router (top-k on the GPU) →
 * routed experts (gate/up → SwiGLU → down) + shared expert → combine
 * (+residual). Then output_norm → lm_head → argmax.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer } from "../gpu/buffers.ts";
import { type ActView, type GpuWeight, type Op, recordOps, STEP } from "../gpu/ops/op.ts";
import type { Workgroups } from "../gpu/dispatch.ts";
import { prepareMatmul, prepareMatmulId } from "../gpu/ops/matmul.ts";
import { prepareGetRows } from "../gpu/ops/get_rows.ts";
import { prepareRmsNorm } from "../gpu/ops/norm.ts";
import { prepareRope } from "../gpu/ops/rope.ts";
import { prepareKvStore } from "../gpu/ops/kv.ts";
import { prepareAttention } from "../gpu/ops/attention.ts";
import { prepareAddBias, prepareCopy, prepareSwiglu } from "../gpu/ops/elementwise.ts";
import { prepareRouter } from "../gpu/ops/router.ts";
import { prepareMoeCombine } from "../gpu/ops/moe.ts";
import { prepareArgmax } from "../gpu/ops/sample.ts";
import { prepareCopyLastRow, prepareSaveIfClean } from "../gpu/ops/rows.ts";
import { tensorName as tn, Tensors } from "../gguf/names.ts";
import type { ModelConfig } from "./config.ts";
import type { GpuWeights } from "./weights.ts";

/** Sizes of the run state. */
export interface RunStateOptions {
  /** Context length: KV cache positions. */
  nCtx: number;
  /** Most tokens in one batch (prefill chunk). */
  maxBatch: number;
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
}

/** Where the routed experts of each layer live on the GPU. */
export interface ExpertStacks {
  /** The arenas holding layer `l`'s experts (one matmul_id dispatch each). */
  arenas(layer: number): readonly ExpertArena[];
  /** i32 [nLayer, nExpert]: the slot of each expert, or −1 when absent. */
  readonly residency: GPUBuffer;
}

/** Every activation buffer of the forward pass. */
export class RunState {
  /** u32 [STEP.length]: position of the batch, tokens in it, keys after it. */
  readonly step: GPUBuffer;
  /** u32 [STEP.length]: a constant batch of one token, for the output head. */
  readonly stepOne: GPUBuffer;
  /** u32 [maxBatch]: the batch's token ids (the sampled id lands in [0]). */
  readonly tokens: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: the residual stream. */
  readonly x: GPUBuffer;
  /** f32 [maxBatch, nEmbd]: normalised input of a sub-block. */
  readonly xn: GPUBuffer;
  /** f32 [maxBatch, nHead · headDimK]. */
  readonly q: GPUBuffer;
  /** f32 [maxBatch, nHeadKv · headDimK]. */
  readonly k: GPUBuffer;
  /** f32 [maxBatch, nHeadKv · headDimV]. */
  readonly v: GPUBuffer;
  /** f32 [maxBatch, nHead · headDimV]: attention output before the projection. */
  readonly attn: GPUBuffer;
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
  /** f32 [maxBatch, nEmbd]: the residual stream entering the first MoE step that missed. */
  readonly saved: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nFfExp]: gate projections, then SwiGLU output. */
  readonly gate: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nFfExp]. */
  readonly up: GPUBuffer;
  /** f32 [maxBatch, nExpertUsed, nEmbd]: each chosen expert's output. */
  readonly expertOut: GPUBuffer;
  /** f32 [maxBatch, nFfShexp] ×2 and [maxBatch, nEmbd], [maxBatch]: the shared expert. */
  readonly shGate?: GPUBuffer;
  /** Shared expert up projection. */
  readonly shUp?: GPUBuffer;
  /** Shared expert output. */
  readonly shOut?: GPUBuffer;
  /** Shared expert gate logit. */
  readonly shGateLogit?: GPUBuffer;
  /** f32 [nEmbd]: the last token's final hidden state. */
  readonly last: GPUBuffer;
  /** f32 [nVocab]: logits of the last token. */
  readonly logits: GPUBuffer;
  /** Per layer: f32 [maxBatch, nEmbd], the residual stream entering its MoE step. */
  readonly hidden: GPUBuffer[] = [];
  /** Per layer: f32 [nCtx, nHeadKv, headDimK] keys and [nCtx, nHeadKv, headDimV] values. */
  readonly kCache: GPUBuffer[] = [];
  /** Values cache, per layer. */
  readonly vCache: GPUBuffer[] = [];
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
    this.step = createBuffer(gpu, {
      label: "step",
      size: STEP.length * 4,
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
    this.q = f32("q", B * c.nHead * c.headDimK);
    this.k = f32("k", B * c.nHeadKv * c.headDimK);
    this.v = f32("v", B * c.nHeadKv * c.headDimV);
    this.attn = f32("attn", B * c.nHead * c.headDimV);
    this.routerLogits = f32("router_logits", B * c.nExpert);
    this.routes = f32("routes", B * c.nLayer * K);
    this.expertWeights = f32("expert_weights", B * K);
    this.expertSlots = f32("expert_slots", B * K);
    this.misses = f32("misses", 4 + 3 * B * K);
    this.saved = f32("saved", B * c.nEmbd);
    this.gate = f32("gate", B * K * c.nFfExp);
    this.up = f32("up", B * K * c.nFfExp);
    this.expertOut = f32("expert_out", B * K * c.nEmbd);
    if (c.nFfShexp > 0) {
      this.shGate = f32("sh_gate", B * c.nFfShexp);
      this.shUp = f32("sh_up", B * c.nFfShexp);
      this.shOut = f32("sh_out", B * c.nEmbd);
      this.shGateLogit = f32("sh_gate_logit", B);
    }
    this.last = f32("last", c.nEmbd);
    this.logits = f32("logits", c.nVocab);
    for (let l = 0; l < c.nLayer; l++) {
      this.hidden.push(f32(`hidden.${l}`, B * c.nEmbd));
      this.kCache.push(f32(`k_cache.${l}`, o.nCtx * c.nHeadKv * c.headDimK));
      this.vCache.push(f32(`v_cache.${l}`, o.nCtx * c.nHeadKv * c.headDimV));
    }
    this.bytes = bytes;
  }

  /** Frees every buffer. */
  destroy(): void {
    for (const v of Object.values(this)) if (v instanceof GPUBuffer) v.destroy();
    for (const b of [...this.kCache, ...this.vCache, ...this.hidden]) b.destroy();
  }
}

const view = (buffer: GPUBuffer, stride: number, offset = 0): ActView => ({
  buffer,
  offset,
  stride,
});

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
  /** Per layer: the MoE FFN, from ffn_norm to the residual add. */
  readonly moe: Op[][] = [];
  /** Last row → output_norm → lm_head (logits of the last token). */
  readonly head: Op[] = [];
  /** Greedy sampling: argmax of the logits into tokens[0]. */
  readonly argmax: Op[] = [];
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
    let ops: Op[] = this.embed;
    const step = s.step;
    const E = c.nEmbd;
    const K = c.nExpertUsed;
    const qDim = c.nHead * c.headDimK;
    const kDim = c.nHeadKv * c.headDimK;
    const vDim = c.nHeadKv * c.headDimV;
    const add = (more: Op | Op[]) => ops.push(...(Array.isArray(more) ? more : [more]));
    const matmul = async (name: string, x: ActView, y: ActView, accumulate = false) =>
      add(await prepareMatmul(gpu, { w: w.matrix(name), x, y, step, accumulate, label: name }));
    const bias = async (name: string, y: ActView, n: number) => {
      const b = w.maybeVector(name);
      if (b) add(await prepareAddBias(gpu, { y, bias: b, n, label: name }));
    };

    // token ids → embeddings
    add(
      await prepareGetRows(gpu, {
        w: w.matrix(tn(Tensors.tokenEmbd)),
        ids: { buffer: s.tokens, offset: 0 },
        out: view(s.x, E),
        step,
        label: "token_embd",
      }),
    );

    for (let l = 0; l < c.nLayer; l++) {
      // attention
      this.attention.push(ops = []);
      add(
        await prepareRmsNorm(gpu, {
          x: view(s.x, E),
          y: view(s.xn, E),
          weight: w.vector(tn(Tensors.attnNorm, l)),
          n: E,
          rowsPerToken: 1,
          eps: c.rmsEps,
          label: `blk.${l}.attn_norm`,
        }),
      );
      await matmul(tn(Tensors.attnQ, l), view(s.xn, E), view(s.q, qDim));
      await matmul(tn(Tensors.attnK, l), view(s.xn, E), view(s.k, kDim));
      await matmul(tn(Tensors.attnV, l), view(s.xn, E), view(s.v, vDim));
      await bias(tn(Tensors.attnQ, l, "bias"), view(s.q, qDim), qDim);
      await bias(tn(Tensors.attnK, l, "bias"), view(s.k, kDim), kDim);
      await bias(tn(Tensors.attnV, l, "bias"), view(s.v, vDim), vDim);
      if (c.qkNorm !== "none") {
        for (
          const [t, buf, heads, dim] of [[Tensors.attnQNorm, s.q, c.nHead, qDim], [
            Tensors.attnKNorm,
            s.k,
            c.nHeadKv,
            kDim,
          ]] as const
        ) {
          const perHead = c.qkNorm === "head";
          add(
            await prepareRmsNorm(gpu, {
              x: view(buf, dim),
              y: view(buf, dim),
              weight: w.vector(tn(t, l)),
              n: perHead ? c.headDimK : dim,
              rowsPerToken: perHead ? heads : 1,
              eps: c.rmsEps,
              label: tn(t, l),
            }),
          );
        }
      }
      for (
        const [buf, heads, dim, name] of [[s.q, c.nHead, qDim, "q"], [
          s.k,
          c.nHeadKv,
          kDim,
          "k",
        ]] as const
      ) {
        add(
          await prepareRope(gpu, {
            x: view(buf, dim),
            nHeads: heads,
            headDim: c.headDimK,
            nRot: c.nRot,
            mode: c.ropeType,
            freqBase: c.ropeFreqBase,
            freqScale: c.ropeFreqScale,
            extFactor: c.yarnExtFactor,
            attnFactor: c.yarnAttnFactor,
            betaFast: c.yarnBetaFast,
            betaSlow: c.yarnBetaSlow,
            nCtxOrig: c.nCtxOrig,
            step,
            label: `blk.${l}.rope_${name}`,
          }),
        );
      }
      add(
        await prepareKvStore(gpu, {
          k: view(s.k, kDim),
          v: view(s.v, vDim),
          kCache: s.kCache[l]!,
          vCache: s.vCache[l]!,
          kRow: kDim,
          vRow: vDim,
          nCtx: o.nCtx,
          step,
          label: `blk.${l}.kv_store`,
        }),
      );
      add(
        await prepareAttention(gpu, {
          q: view(s.q, qDim),
          kCache: s.kCache[l]!,
          vCache: s.vCache[l]!,
          out: view(s.attn, c.nHead * c.headDimV),
          nHead: c.nHead,
          nHeadKv: c.nHeadKv,
          headDimK: c.headDimK,
          headDimV: c.headDimV,
          scale: c.attnScale,
          nCtx: o.nCtx,
          step,
          label: `blk.${l}.attention`,
        }),
      );
      // x += W_o · attn
      await matmul(tn(Tensors.attnOut, l), view(s.attn, c.nHead * c.headDimV), view(s.x, E), true);
      await bias(tn(Tensors.attnOut, l, "bias"), view(s.x, E), E);

      // MoE FFN
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
      this.moe.push(ops = []);
      add(
        await prepareRmsNorm(gpu, {
          x: view(s.x, E),
          y: view(s.xn, E),
          weight: w.vector(tn(Tensors.ffnNorm, l)),
          n: E,
          rowsPerToken: 1,
          eps: c.rmsEps,
          label: `blk.${l}.ffn_norm`,
        }),
      );
      await matmul(tn(Tensors.ffnGateInp, l), view(s.xn, E), view(s.routerLogits, c.nExpert));
      add(
        await prepareRouter(gpu, {
          logits: view(s.routerLogits, c.nExpert),
          // routes are token-major: [token, layer, k]
          ids: { buffer: s.routes, offset: l * K, stride: c.nLayer * K },
          weights: view(s.expertWeights, K),
          slots: view(s.expertSlots, K),
          residency: this.experts.residency,
          misses: s.misses,
          layer: l,
          nExpert: c.nExpert,
          k: K,
          gating: c.gating,
          normalize: c.normTopK,
          scale: c.expertWeightsScale,
          label: `blk.${l}.router`,
        }),
      );
      const slots = { buffer: s.expertSlots, offset: 0 };
      const arenas = this.experts.arenas(l);
      for (const [part, out, name] of [["gate", s.gate, "gate"], ["up", s.up, "up"]] as const) {
        for (const arena of arenas) {
          add(
            await prepareMatmulId(gpu, {
              w: arena[part],
              ids: slots,
              idBase: arena.idBase,
              nUsed: K,
              x: view(s.xn, E),
              xPerSlot: false,
              y: view(out, K * c.nFfExp),
              step,
              label: `blk.${l}.ffn_${name}_exps@${arena.idBase}`,
            }),
          );
        }
      }
      add(
        await prepareSwiglu(gpu, {
          gate: view(s.gate, K * c.nFfExp),
          up: view(s.up, K * c.nFfExp),
          out: view(s.gate, K * c.nFfExp),
          n: K * c.nFfExp,
          label: `blk.${l}.swiglu_exps`,
        }),
      );
      for (const arena of arenas) {
        add(
          await prepareMatmulId(gpu, {
            w: arena.down,
            ids: slots,
            idBase: arena.idBase,
            nUsed: K,
            x: view(s.gate, K * c.nFfExp),
            xPerSlot: true,
            y: view(s.expertOut, K * E),
            step,
            label: `blk.${l}.ffn_down_exps@${arena.idBase}`,
          }),
        );
      }
      let shared: ActView | undefined;
      let sharedGate: ActView | undefined;
      if (c.nFfShexp > 0) {
        const F = c.nFfShexp;
        await matmul(tn(Tensors.ffnGateShexp, l), view(s.xn, E), view(s.shGate!, F));
        await matmul(tn(Tensors.ffnUpShexp, l), view(s.xn, E), view(s.shUp!, F));
        add(
          await prepareSwiglu(gpu, {
            gate: view(s.shGate!, F),
            up: view(s.shUp!, F),
            out: view(s.shGate!, F),
            n: F,
            label: `blk.${l}.swiglu_shexp`,
          }),
        );
        await matmul(tn(Tensors.ffnDownShexp, l), view(s.shGate!, F), view(s.shOut!, E));
        shared = view(s.shOut!, E);
        if (c.sharedExpertGated) {
          // ffn_gate_inp_shexp is a vector [nEmbd]: a 1-row matrix.
          const name = tn(Tensors.ffnGateInpShexp, l);
          add(
            await prepareMatmul(gpu, {
              w: w.vectorAsRow(name, E),
              x: view(s.xn, E),
              y: view(s.shGateLogit!, 1),
              step,
              label: name,
            }),
          );
          sharedGate = view(s.shGateLogit!, 1);
        }
      }
      add(
        await prepareMoeCombine(gpu, {
          y: view(s.expertOut, K * E),
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

    // output head on the last token only (a fixed batch of one, whatever the batch size)
    ops = this.head;
    add(
      await prepareCopyLastRow(gpu, {
        x: view(s.x, E),
        out: s.last,
        n: E,
        step,
        label: "last_row",
      }),
    );
    add(
      await prepareRmsNorm(gpu, {
        x: view(s.last, E),
        y: view(s.last, E),
        weight: w.vector(tn(Tensors.outputNorm)),
        n: E,
        rowsPerToken: 1,
        eps: c.rmsEps,
        fixedTokens: 1,
        label: "output_norm",
      }),
    );
    const head = w.maybeMatrix(tn(Tensors.output)) ?? w.matrix(tn(Tensors.tokenEmbd));
    const headOps = await prepareMatmul(gpu, {
      w: head,
      x: view(s.last, E),
      y: view(s.logits, c.nVocab),
      step: s.stepOne,
      label: "output",
    });
    add(headOps.map((op) => ({ ...op, workgroups: fixedBatch(op, 1) })));
    ops = this.argmax;
    add(
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
   */
  record(
    encoder: GPUCommandEncoder,
    nTokens: number,
    o: { fromLayer?: number; sample?: readonly Op[]; head?: boolean } = {},
  ): void {
    encoder.clearBuffer(this.state.misses, 0, 16);
    const pass = encoder.beginComputePass({ label: `forward×${nTokens}` });
    const L = this.config.nLayer;
    if (o.fromLayer === undefined) {
      recordOps(pass, this.embed, nTokens);
      for (let l = 0; l < L; l++) this.#layer(pass, l, nTokens);
    } else {
      recordOps(pass, [this.restore], nTokens);
      recordOps(pass, this.moe[o.fromLayer]!, nTokens);
      for (let l = o.fromLayer + 1; l < L; l++) this.#layer(pass, l, nTokens);
    }
    if (o.head !== false) {
      recordOps(pass, this.head, nTokens);
      recordOps(pass, o.sample ?? this.argmax, nTokens);
    }
    pass.end();
  }

  #layer(pass: GPUComputePassEncoder, l: number, nTokens: number): void {
    recordOps(pass, this.attention[l]!, nTokens);
    recordOps(pass, [this.save[l]!, this.logHidden[l]!], nTokens);
    recordOps(pass, this.moe[l]!, nTokens);
  }

  /** Frees the run state (the weights belong to the caller). */
  destroy(): void {
    this.state.destroy();
  }
}
