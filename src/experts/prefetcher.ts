/**
 * The prefetcher: the engine's side of expert prediction. It records the
 * predictor's kernels after the output head of every submit, keeps each
 * queued token's predictions in a ring that is read back with the routes
 * (the same sync), and turns predictions into uploads before the next submit:
 *
 * - **at a stall** (stall and repair): the token stopped at layer l*, whose
 *   hidden state is valid; the predictions made from it for layers
 *   l*+1 … l*+depth are uploaded with the repair, so the resumed pass does
 *   not stall again there;
 * - **between tokens**: the next token's first layers, from the predictor's
 *   next-token predictions (shadow model) or the history of recent tokens.
 *
 * Prefetches are best effort and bounded: at most `maxPerStep` experts per
 * call, into the pool's fixed slots (so the pool's bytes never exceed its
 * budget, a hard cap), never evicting an expert the current token still
 * needs (the experts of the layer being repaired and those just prefetched
 * for it are pinned). With a {@linkcode PredictivePolicy} it also tells the
 * pool where the token is and what is predicted.
 *
 * Statistics ({@linkcode PrefetchStats}): prefetch accuracy, recall@k per
 * lookahead distance, wasted upload bytes, stalls per decoded token.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer } from "../gpu/buffers.ts";
import type { BufferBinding } from "../gpu/dispatch.ts";
import type { ExpertPool } from "./pool.ts";
import { expertKey } from "./eviction.ts";
import { type EvictionPolicyName, PredictivePolicy } from "./policy_predictive.ts";
import { LookaheadPredictor, type RouterWeights } from "../predictor/lookahead.ts";
import { checkShadowFits, loadShadow, ShadowPredictor } from "../predictor/shadow.ts";
import {
  type ExpertPredictor,
  HistoryPredictor,
  type LayerPrediction,
  predictionWords,
} from "../predictor/predictor.ts";
import { PrefetchStats } from "./prefetch_stats.ts";

/** The model facts the prefetcher needs. */
export interface PrefetchModel {
  /** Layers. */
  readonly nLayer: number;
  /** Hidden size. */
  readonly nEmbd: number;
  /** Experts per layer. */
  readonly nExpert: number;
  /** Experts chosen per token. */
  readonly nExpertUsed: number;
  /** RMSNorm epsilon. */
  readonly rmsEps: number;
  /** Leading blocks without experts (DeepSeek); default 0. */
  readonly nLayerDenseLead?: number;
  /** The FFN input norm's tensor (default `ffn_norm`). */
  readonly ffnNorm?: string;
  /** The router adds `ffn_gate_inp.bias` (GPT-OSS). */
  readonly routerBias?: boolean;
}

/** Options of {@linkcode Prefetcher.create}. */
export interface PrefetcherOptions {
  /**
   * Upload predicted experts (default true). Off, the prefetcher still
   * counts stalls per token and moves a predictive policy's cursor.
   */
  enabled?: boolean;
  /** A trained shadow model (safetensors); default: the gate lookahead. */
  predictorPath?: string;
  /** Predictor to use instead of the default: `"lookahead"`, `"shadow"` (needs the path) or `"history"`. */
  predictor?: "lookahead" | "shadow" | "history";
  /** Lookahead depth of the gate lookahead (default 1). */
  depth?: number;
  /** Experts uploaded per predicted layer (default nExpertUsed). */
  perLayer?: number;
  /** Most experts prefetched per call (default: depth × perLayer × tokens, at most a quarter of the slots). */
  maxPerStep?: number;
  /** Prefetch the next token's first layers between tokens (default true). */
  betweenTokens?: boolean;
  /** Weight kept per token by the history (default 0.9). */
  historyDecay?: number;
}

/** Where the predictor reads and how large batches are. */
export interface PrefetchContext {
  /** The device. */
  gpu: Gpu;
  /** The model's sizes. */
  model: PrefetchModel;
  /** The model's norms and routers (lookahead, residual shadow). */
  weights: RouterWeights;
  /** Per layer: f32 `[maxBatch, nEmbd]`, the residual stream entering the MoE step. */
  hidden: readonly GPUBuffer[];
  /** The run state's step buffer. */
  step: GPUBuffer;
  /** The expert pool. */
  pool: ExpertPool;
  /** Decode tokens queued per readback at most (ring slots). */
  window: number;
  /** Most tokens per batch. */
  maxBatch: number;
  /** The pool's eviction policy, for the statistics. */
  policy: EvictionPolicyName;
}

/** The engine's prefetcher (see the module doc). */
export class Prefetcher {
  /** The predictor (GPU or history). */
  readonly predictor: ExpertPredictor;
  /** The history of recent tokens (also the next-token fallback). */
  readonly history: HistoryPredictor;
  /** Statistics. */
  readonly stats: PrefetchStats;
  /** Ring slot for prefill batches and repairs (decode tokens use slots 0 … window−1). */
  readonly batchSlot: number;
  readonly #ctx: PrefetchContext;
  readonly #o: PrefetcherOptions & { perLayer: number; betweenTokens: boolean };
  readonly #ring?: GPUBuffer;
  readonly #words: number;
  readonly #maxTokens: number;
  readonly #dense: number;
  readonly #policies: PredictivePolicy[];
  // u32 [nTokens, words] of the predictions read last, and how many tokens they hold.
  #last?: { preds: Uint32Array; nTokens: number };
  // Decode first pass of the token being settled: its predictions and first missed layer.
  #firstPass?: { preds: Uint32Array; firstMiss: number };
  // Next-token predictions of the last clean decode token (for next-token recall).
  #pendingNext: LayerPrediction[] = [];
  #stallsSinceSettle = 0;

  private constructor(
    ctx: PrefetchContext,
    predictor: ExpertPredictor,
    history: HistoryPredictor,
    o: PrefetcherOptions & { perLayer: number; betweenTokens: boolean },
    maxTokens: number,
  ) {
    this.#ctx = ctx;
    this.predictor = predictor;
    this.history = history;
    this.#o = o;
    this.#maxTokens = maxTokens;
    this.#dense = ctx.model.nLayerDenseLead ?? 0;
    this.batchSlot = ctx.window;
    this.#words = predictionWords({
      nLayer: ctx.model.nLayer,
      depth: predictor.depth,
      topK: predictor.topK,
    });
    if (predictor.output) {
      this.#ring = createBuffer(ctx.gpu, {
        label: "prediction_ring",
        size: 4 * this.#words * (ctx.window + maxTokens),
      });
    }
    this.#policies = ctx.pool.policy instanceof PredictivePolicy ? [ctx.pool.policy] : [];
    this.stats = new PrefetchStats(
      ctx.pool,
      predictor.name,
      ctx.policy,
      predictor.depth,
      ctx.model.nExpertUsed,
    );
  }

  /** Builds the predictor the options ask for and the ring its output goes to. */
  static async create(ctx: PrefetchContext, o: PrefetcherOptions = {}): Promise<Prefetcher> {
    const m = ctx.model;
    const maxTokens = Math.min(ctx.maxBatch, 16);
    const source = {
      hidden: (l: number) => ({ buffer: ctx.hidden[l]!, offset: 0, stride: m.nEmbd }),
      step: ctx.step,
      maxTokens,
    };
    const kind = o.predictor ?? (o.predictorPath ? "shadow" : "lookahead");
    const perLayer = o.perLayer ?? m.nExpertUsed;
    const history = new HistoryPredictor(m.nLayer, m.nExpert, m.nExpertUsed, {
      depth: o.depth ?? 1,
      topK: perLayer,
      decay: o.historyDecay,
    });
    let predictor: ExpertPredictor;
    if (o.enabled === false) {
      predictor = { name: "off", depth: 1, topK: 0, predict: () => [] };
    } else if (kind === "shadow") {
      if (!o.predictorPath) throw new TypeError("the shadow predictor needs predictorPath");
      const w = loadShadow(o.predictorPath);
      checkShadowFits(w, m, o.predictorPath);
      predictor = await ShadowPredictor.create(ctx.gpu, w, source, {
        routers: ctx.weights,
        rmsEps: m.rmsEps,
        nLayerDenseLead: m.nLayerDenseLead,
        ffnNorm: m.ffnNorm,
        routerBias: m.routerBias,
      });
    } else if (kind === "lookahead") {
      predictor = await LookaheadPredictor.create(ctx.gpu, ctx.weights, source, {
        ...m,
        depth: o.depth ?? 1,
      });
    } else {
      predictor = history;
    }
    return new Prefetcher(
      ctx,
      predictor,
      history,
      { ...o, perLayer, betweenTokens: o.betweenTokens ?? true },
      maxTokens,
    );
  }

  /**
   * Records the predictor for a batch of `nTokens` after the forward pass in
   * `encoder` and copies its output into ring `slot` (0 … window−1 for
   * decode tokens, {@linkcode batchSlot} for batches and repairs).
   */
  record(encoder: GPUCommandEncoder, nTokens: number, slot: number): void {
    const p = this.predictor;
    if (!p.record || !p.output || !this.#ring || nTokens > this.#maxTokens) return;
    p.record(encoder, nTokens);
    encoder.copyBufferToBuffer(
      p.output,
      0,
      this.#ring,
      4 * slot * this.#words,
      4 * nTokens * this.#words,
    );
  }

  /** The ring range of `nTokens` predictions from `slot`, to read back with the routes; none for CPU predictors. */
  readRange(slot: number, nTokens: number): BufferBinding[] {
    if (!this.#ring || nTokens > this.#maxTokens) return [];
    return [{
      buffer: this.#ring,
      offset: 4 * slot * this.#words,
      size: 4 * nTokens * this.#words,
    }];
  }

  /**
   * The predictions read back with the routes that go with them: `bytes`
   * as read from {@linkcode readRange} (undefined when none were made),
   * holding `nTokens` tokens from token `o.token` of the range. `o.firstMiss`:
   * a decode token's first pass, with its first layer that missed (nLayer
   * when none).
   */
  seen(
    bytes: ArrayBuffer | undefined,
    nTokens: number,
    o: { token?: number; firstMiss?: number } = {},
  ): void {
    const off = 4 * (o.token ?? 0) * this.#words;
    const ok = bytes !== undefined && bytes.byteLength >= off + 4 * nTokens * this.#words;
    this.#last = ok
      ? { preds: new Uint32Array(bytes, off, nTokens * this.#words), nTokens }
      : undefined;
    if (o.firstMiss !== undefined) {
      this.#firstPass = this.#last
        ? { preds: this.#last.preds, firstMiss: o.firstMiss }
        : undefined;
    }
  }

  /** Before a repair's ensure at `layer`: tells a predictive policy where the token is. */
  cursor(layer: number): void {
    for (const p of this.#policies) p.setCursor(layer);
  }

  /**
   * After the ensure of a stall at `layer` (whose `experts` are pinned):
   * uploads the experts predicted from `layer`'s hidden state for the layers
   * after it, from the predictions last {@linkcode seen}.
   */
  onStall(layer: number, experts: readonly number[]): void {
    this.#stallsSinceSettle++;
    if (!this.enabled) return;
    const L = this.#ctx.model.nLayer;
    const byLayer = new Map<number, number[][]>();
    const nTokens = this.#last?.nTokens ?? 1;
    for (let t = 0; t < nTokens; t++) {
      const preds = this.#predict(layer, t).filter((p) => !p.nextToken);
      for (const p of preds) {
        if (p.layer >= L || p.layer < this.#dense) continue;
        const list = byLayer.get(p.layer) ?? [];
        list.push(p.experts.slice(0, this.#o.perLayer));
        byLayer.set(p.layer, list);
      }
    }
    const pinned = new Set(experts.map((e) => expertKey(layer, e)));
    this.#issue(byLayer, pinned, nTokens);
  }

  /**
   * Before the next decode window is queued: uploads the experts predicted
   * for the next token's first layers (the predictor's next-token
   * predictions, or the history's).
   */
  beforeNext(): void {
    if (!this.enabled || !this.#o.betweenTokens) return;
    const byLayer = new Map<number, number[][]>();
    const L = this.#ctx.model.nLayer;
    // next-token predictions come from the last layers' hidden states
    for (let src = L - 1; src >= Math.max(0, L - this.predictor.depth); src--) {
      for (const p of this.#predict(src, (this.#last?.nTokens ?? 1) - 1)) {
        if (p.nextToken && p.layer >= this.#dense && !byLayer.has(p.layer)) {
          byLayer.set(p.layer, [p.experts.slice(0, this.#o.perLayer)]);
        }
      }
    }
    if (byLayer.size === 0) {
      for (let l = this.#dense; l < Math.min(L, this.#dense + this.predictor.depth); l++) {
        const top = this.history.top(l, this.#o.perLayer);
        if (top.length > 0) byLayer.set(l, [top]);
      }
    }
    this.#issue(byLayer, new Set(), 1);
  }

  /**
   * Routes of accepted tokens (u32 `[nTokens, nLayer, nExpertUsed]`): the
   * history learns them; `decode` tokens are counted (stalls per token,
   * recall of the first pass's predictions).
   */
  settle(routes: Uint32Array, nTokens: number, decode: boolean): void {
    this.history.observe(routes, nTokens);
    for (const p of this.#policies) p.nextToken();
    if (!decode) {
      this.#stallsSinceSettle = 0;
      return;
    }
    this.stats.recordTokens(nTokens, this.#stallsSinceSettle);
    this.#stallsSinceSettle = 0;
    const { nLayer: L, nExpertUsed: K } = this.#ctx.model;
    const t = nTokens - 1;
    const tokenRoutes = routes.subarray(t * L * K, (t + 1) * L * K);
    for (const p of this.#pendingNext) {
      this.stats.recordRecall(p.distance, p.experts, tokenRoutes, p.layer * K, K, true);
    }
    this.#pendingNext = [];
    const first = this.#firstPass;
    this.#firstPass = undefined;
    if (!first || this.predictor === this.history || !this.enabled) return;
    const last = Math.min(first.firstMiss, L - 1);
    for (let src = 0; src <= last; src++) {
      for (const p of this.predictor.predict(src, first.preds, 0)) {
        if (p.layer < this.#dense) continue;
        if (p.nextToken) {
          if (first.firstMiss >= L) this.#pendingNext.push(p);
        } else {
          this.stats.recordRecall(p.distance, p.experts, tokenRoutes, p.layer * K, K, false);
        }
      }
    }
  }

  /** Whether predicted experts are uploaded (false: statistics and the policy's cursor only). */
  get enabled(): boolean {
    return this.predictor.name !== "off";
  }

  /** Frees the predictor's buffers and the ring. */
  destroy(): void {
    this.predictor.destroy?.();
    this.#ring?.destroy();
  }

  #predict(source: number, token: number): LayerPrediction[] {
    if (this.predictor === this.history) return this.history.predict(source);
    if (!this.#last || token < 0 || token >= this.#last.nTokens) return [];
    return this.predictor.predict(source, this.#last.preds, token);
  }

  // Uploads the predictions, nearest layer first, rank-interleaved across
  // tokens, within maxPerStep, pinning what the current token needs.
  #issue(byLayer: Map<number, number[][]>, pinned: Set<string>, nTokens: number): void {
    const pool = this.#ctx.pool;
    const slots = pool.nSlots;
    const cap = this.#o.maxPerStep ??
      Math.max(
        1,
        Math.min(Math.floor(slots / 4), this.predictor.depth * this.#o.perLayer * nTokens),
      );
    const predicted = new Set<string>();
    for (const [layer, lists] of byLayer) {
      for (const list of lists) for (const e of list) predicted.add(expertKey(layer, e));
    }
    for (const p of this.#policies) p.setPredicted(predicted);
    let budget = cap;
    for (const [layer, lists] of byLayer) {
      if (budget <= 0) break;
      const order: number[] = [];
      const seen = new Set<number>();
      const depth = Math.max(...lists.map((l) => l.length));
      for (let r = 0; r < depth; r++) {
        for (const list of lists) {
          const e = list[r];
          if (e !== undefined && !seen.has(e)) {
            seen.add(e);
            order.push(e);
          }
        }
      }
      const want = order.slice(0, budget);
      const missing = want.filter((e) => pool.slotOf(layer, e) < 0).length;
      const r = pool.prefetch(layer, want, { pinned, maxEvict: missing, flush: false });
      budget -= r.uploaded.length;
      for (const e of want) if (pool.slotOf(layer, e) >= 0) pinned.add(expertKey(layer, e));
    }
    pool.flush();
    // The pool's slots are allocated once within the budget, so this cannot fail; say so if it ever does.
    if (pool.residentBytes > pool.budgetBytes) {
      throw new Error(
        `prefetch left ${pool.residentBytes} expert bytes on the GPU, over the budget of ` +
          `${pool.budgetBytes}`,
      );
    }
  }
}
