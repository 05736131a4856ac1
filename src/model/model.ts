/**
 * `loadModel`: a GGUF file → a model whose base weights live on the GPU and
 * whose routed experts stream from the memory-mapped file into a bounded
 * pool of GPU slots, and `Model.forward`: tokens in, logits out.
 *
 * The model runs batches: one submit per batch, each settled before the
 * next attends to its keys. With experts streaming a batch may name an
 * expert that is not resident: the routes are read back, the expert
 * scheduler says which layer missed, loads its experts, and the batch
 * resumes from that layer (stall and repair, DESIGN.md). Generation (the
 * sampler, decode windows, stops) is `src/generate/session.ts`'s, on top of
 * these batches.
 *
 * @module
 */

import type { GgufModelFile } from "../gguf/reader.ts";
import { acquireGpu, type Gpu } from "../gpu/device.ts";
import { createBuffer, recordReadback, upload } from "../gpu/buffers.ts";
import { batchStepWords, type BatchToken, type Op, STEP, stepWords } from "../gpu/ops/op.ts";
import { FINITE } from "../gpu/ops/finite.ts";
import { matmulProfile } from "../gpu/ops/matmul.ts";
import type { BufferBinding } from "../gpu/dispatch.ts";
import { checkMoeConfig, kvCacheBytesPerToken, type ModelConfig } from "./config.ts";
import { archSpec } from "./registry.ts";
import { checkTensorPlan, type GpuWeights, uploadPlannedTensors } from "./weights.ts";
import { checkExpertSource, type ModelFiles, openBase, openExperts, trunkLayers } from "./load.ts";
import { type ExpertStacks, MoeTransformer } from "./transformer.ts";
import type { ExpertSource } from "../experts/source.ts";
import { ExpertPool } from "../experts/pool.ts";
import type { ExpertStats } from "../experts/stats.ts";
import { evictionPolicyFactory, type EvictionPolicyName } from "../experts/policy_predictive.ts";
import { Prefetcher, type PrefetcherOptions } from "../experts/prefetcher.ts";
import type { PrefetchStatsSnapshot } from "../experts/prefetch_stats.ts";
import { ExpertScheduler } from "../experts/scheduler.ts";
import {
  type ContextSnapshot,
  type PositionCaches,
  positionCaches,
  restoreContext,
  snapshotContext,
} from "./kv_snapshot.ts";

export type { ModelFiles } from "./load.ts";
export type { ContextSnapshot } from "./kv_snapshot.ts";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions extends ModelFiles {
  /** Context length (KV cache positions); default min(4096, the model's). */
  nCtx?: number;
  /** Most prompt tokens per batch; default 64. */
  maxBatch?: number;
  /**
   * Sequences that can share one batch (continuous batching, {@linkcode
   * Model.forwardRows}); the KV cache holds `nCtx` positions for each.
   * Default 1; `"auto"` sizes it from memory: up to 4 while their KV caches
   * take at most {@linkcode AUTO_SEQUENCES_KV_BYTES} and one layer's cache
   * fits a storage binding (1 for models with a recurrent state).
   */
  maxSequences?: number | "auto";
  /** A device to use; default a new one. */
  gpu?: Gpu;
  /**
   * GPU memory for routed experts, GiB (default 4): a hard cap, whatever
   * the batch or the mix of tensor types. Its minimum is one token's chosen
   * experts of the largest layer (top-k × its expert bytes); a smaller
   * budget is raised to it with a warning, and 0 means it. A prompt batch
   * whose experts in a layer do not fit at once is computed in expert
   * groups. When every expert fits, all are loaded at start and nothing
   * streams.
   */
  cacheSizeGB?: number;
  /**
   * At most this many experts per pool arena (one GPU buffer, one
   * `matmul_id` dispatch each); default as many as one storage binding
   * holds. Tests give small models several arenas, as large ones have.
   */
  maxSlotsPerArena?: number;
  /** Where load-time warnings go (a raised budget); default `console.warn`. */
  onWarning?: (message: string) => void;
  /** Tokens queued on the GPU before the CPU reads them back (decode); default 16. */
  window?: number;
  /**
   * Hyperparameters to use instead of the file's (like llama.cpp's
   * `--override-kv` or `--rope-freq-base`); shapes cannot change.
   */
  configOverride?: Partial<
    Pick<ModelConfig, "ropeFreqBase" | "ropeFreqScale" | "rmsEps" | "expertWeightsScale">
  >;
  /**
   * Upload the experts a predictor expects before they are needed (while
   * experts stream): the gate lookahead, or the shadow model at
   * `predictorPath`. Predictions never change the tokens, only the syncs.
   */
  enablePrefetch?: boolean;
  /** A trained shadow predictor (`deno task train-shadow`); turns prefetch on. */
  predictorPath?: string;
  /** Prefetcher tuning: predictor kind, depth, experts per layer (`src/experts/prefetcher.ts`). */
  prefetch?: PrefetcherOptions;
  /** The expert pool's eviction policy: `"predictive"` (default), `"lru"` or `"least-stale"`. */
  evictionPolicy?: EvictionPolicyName;
}

/**
 * The forward pass produced a NaN or an infinity (a corrupt weight, an
 * overflow): the generation ends with this instead of sampling from NaN
 * logits. The routed experts of the layer are dropped from the pool, so
 * the next request reads them from disk again.
 */
export class NonFiniteError extends Error {
  /** The first layer whose output was not finite; `nLayer` means the output head. */
  readonly layer: number;
  /** Builds the error for a model of `nLayer` layers. */
  constructor(layer: number, nLayer: number) {
    const where = layer >= nLayer ? "the output head (logits)" : `layer ${layer}`;
    super(
      `NaN or infinite values appeared in the output of ${where}; the weights there are ` +
        `probably corrupt (check the model file, e.g. with deno task verify)`,
    );
    this.name = "NonFiniteError";
    this.layer = layer;
  }
}

/** What a sampling pass reads and writes, restored before a repaired batch samples again. */
export interface SampleState {
  /** The buffer (e.g. the sampler's history ring). */
  readonly buffer: GPUBuffer;
  /** Its content before the batch first sampled. */
  readonly data: Uint32Array;
}

/** One sequence's part of a batch of several (see {@linkcode Model.forwardRows}). */
export interface SequenceRun {
  /** Its KV region: 0 … `maxSequences − 1`. */
  readonly sequence: number;
  /** The position of its first token (its tokens before it are in its region). */
  readonly pos: number;
  /** Its tokens (at least one). */
  readonly tokens: readonly number[];
}

/** How a batch ends (see {@linkcode Model.settle} and {@linkcode Model.prefill}). */
export interface BatchEnd {
  /** Run the output head (default true). */
  readonly head?: boolean;
  /** Sampling ops after the head instead of argmax (they write tokens[0]). */
  readonly sample?: readonly Op[];
  /**
   * Restored before each pass of a repair that samples again, so a
   * repaired batch samples as if it had run once (a sampler's history ring
   * got the first pass's token appended).
   */
  readonly sampleState?: readonly SampleState[];
}

const GIB = 1024 ** 3;

/** The KV-cache memory `maxSequences: "auto"` may give all sequences together. */
export const AUTO_SEQUENCES_KV_BYTES = GIB;

/** `maxSequences: "auto"` for a model (see {@linkcode LoadModelOptions.maxSequences}). */
export function autoSequences(
  c: ModelConfig,
  nCtx: number,
  maxBindingBytes: number,
  maxBatch: number,
): number {
  if (c.deltaNet) return 1;
  const perToken = kvCacheBytesPerToken(c);
  const layerRow = Math.max(1, perToken / c.nLayer);
  const fit = Math.min(
    Math.floor(AUTO_SEQUENCES_KV_BYTES / Math.max(1, nCtx * perToken)),
    Math.floor(maxBindingBytes / (nCtx * layerRow)),
  );
  return Math.max(1, Math.min(4, maxBatch, fit));
}

/** A loaded model. */
export class Model {
  /** Tokens in the KV cache. */
  nPast = 0;
  /** u32 [nCtx, nLayer, nExpertUsed]: the routes of every position. */
  readonly #routeLog: GPUBuffer;
  readonly #caches: PositionCaches;
  #contextVersion = 0;

  private constructor(
    readonly gpu: Gpu,
    readonly file: GgufModelFile,
    readonly config: ModelConfig,
    readonly transformer: MoeTransformer,
    /** The routed experts: the pool, the prefetcher, which layer missed and its repair. */
    readonly scheduler: ExpertScheduler,
    /** Context length of a sequence (KV cache positions each). */
    readonly nCtx: number,
    readonly maxBatch: number,
    /** Sequences the KV cache holds (regions of `nCtx` positions), and the most one batch may mix. */
    readonly maxSequences: number,
    /** Decode tokens queued before a readback at most (a generation's window). */
    readonly window: number,
    readonly ownsGpu: boolean,
    readonly weights: GpuWeights,
  ) {
    const c = config;
    this.#routeLog = createBuffer(gpu, {
      label: "route_log",
      size: 4 * nCtx * c.nLayer * c.nExpertUsed,
    });
    this.#caches = positionCaches(transformer.state.kCache, transformer.state.vCache, nCtx);
  }

  /** Loads a model; see {@linkcode loadModel}. */
  static async load(o: LoadModelOptions): Promise<Model> {
    const { file, bytes, close } = openBase(o);
    let source: ExpertSource | undefined;
    let made: Gpu | undefined;
    try {
      const spec = archSpec(file.architecture);
      const config: ModelConfig = { ...spec.readConfig(file.metadata), ...o.configOverride };
      if (o.configOverride) checkMoeConfig(config);
      const fullPlan = spec.tensorPlan(config);
      const plan = checkTensorPlan(file, fullPlan.filter((e) => e.role === "base"));
      const nCtx = o.nCtx ?? Math.min(4096, config.nCtxTrain || 4096);
      const maxBatch = o.maxBatch ?? 64;
      const gpu = o.gpu ?? (made = await acquireGpu());
      const maxSequences = o.maxSequences === "auto"
        ? autoSequences(config, nCtx, gpu.limits.maxStorageBufferBindingSize, maxBatch)
        : o.maxSequences ?? 1;
      if (!(Number.isInteger(maxSequences) && maxSequences >= 1 && maxSequences <= maxBatch)) {
        throw new RangeError(
          `maxSequences must be an integer in 1…${maxBatch} (the batch size), got ${o.maxSequences}`,
        );
      }
      if (maxSequences > 1 && config.deltaNet) {
        throw new RangeError(
          `${config.arch} keeps one recurrent state (gated DeltaNet layers); it runs one ` +
            `sequence at a time (maxSequences 1, --parallel 1), not ${maxSequences}`,
        );
      }
      // the attention kernels bind a layer's whole KV cache (every sequence's region)
      const cacheRow = 4 *
        (config.mla
          ? config.mla.kvLoraRank + config.mla.ropeDim
          : config.nHeadKv * Math.max(config.headDimK, config.headDimV));
      const bindingBytes = gpu.limits.maxStorageBufferBindingSize;
      if (nCtx * maxSequences * cacheRow > bindingBytes) {
        const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
        const fitSequences = Math.floor(bindingBytes / (nCtx * cacheRow));
        const fitCtx = Math.floor(bindingBytes / (maxSequences * cacheRow));
        throw new RangeError(
          `a layer's KV cache for ${maxSequences} sequence(s) of ${nCtx} positions takes ` +
            `${mib(nCtx * maxSequences * cacheRow)}, over this device's largest storage binding ` +
            `(${mib(bindingBytes)}): ${
              fitSequences >= 1
                ? `lower --parallel (at most ${fitSequences} at this context) or --ctx-size `
                : "lower --ctx-size "
            }(at most ${fitCtx} positions for ${maxSequences} sequence(s))`,
        );
      }
      const window = o.window ?? 16;
      if (!(Number.isInteger(window) && window >= 1)) {
        throw new RangeError(`window must be an integer ≥ 1, got ${o.window}`);
      }
      const cacheSizeGB = o.cacheSizeGB ?? 4;
      if (!(cacheSizeGB >= 0)) throw new RangeError(`cacheSizeGB must be ≥ 0, got ${cacheSizeGB}`);
      source = trunkLayers(o.expertSource ?? openExperts(o, file), config.nLayer);
      checkExpertSource(source, fullPlan.filter((e) => e.role === "expert"));
      const weights = uploadPlannedTensors(gpu, file, bytes, plan, ["base"]);
      const pool = new ExpertPool(gpu, source, {
        budgetBytes: Math.floor(cacheSizeGB * GIB),
        minSlots: config.nExpertUsed,
        nLayer: config.nLayer,
        maxSlotsPerArena: o.maxSlotsPerArena,
        policy: evictionPolicyFactory(o.evictionPolicy ?? "predictive", config.nLayer),
      });
      if (pool.budgetRaised && cacheSizeGB > 0) {
        (o.onWarning ?? console.warn)(
          `--cache-size-gb ${cacheSizeGB} (${pool.requestedBudgetBytes} bytes) is below the ` +
            `smallest expert budget of this model, ${pool.minBudgetBytes} bytes (top-k ` +
            `${config.nExpertUsed} × ${pool.slotBytes} bytes, the largest layer's experts); ` +
            `using ${pool.budgetBytes} bytes (--cache-size-gb 0 asks for this minimum)`,
        );
      }
      if (pool.allResident) pool.preloadAll();
      const experts: ExpertStacks = {
        residency: pool.residencyBuffer,
        arenas: (l) =>
          pool.arenasFor(l).map((a) => ({
            idBase: a.idBase,
            gate: a.weights["gate"]!,
            up: a.weights["up"]!,
            down: a.weights["down"]!,
            gateBias: a.weights["gate.bias"],
            upBias: a.weights["up.bias"],
            downBias: a.weights["down.bias"],
          })),
      };
      const transformer = await MoeTransformer.build(gpu, config, weights, experts, {
        nCtx,
        maxBatch,
        maxSequences,
      });
      // while experts stream: prefetch, or with it off the stall statistics and the policy's cursor
      const prefetch = !pool.allResident
        ? await Prefetcher.create({
          gpu,
          model: config,
          weights,
          hidden: transformer.state.hidden,
          step: transformer.state.step,
          pool,
          window,
          maxBatch,
          policy: o.evictionPolicy ?? "predictive",
        }, {
          enabled: o.enablePrefetch === true || o.predictorPath !== undefined,
          predictorPath: o.predictorPath,
          ...o.prefetch,
        })
        : undefined;
      const scheduler = new ExpertScheduler(pool, config, prefetch);
      return new Model(
        gpu,
        file,
        config,
        transformer,
        scheduler,
        nCtx,
        maxBatch,
        maxSequences,
        window,
        !o.gpu,
        weights,
      );
    } catch (e) {
      source?.close();
      made?.destroy(); // a device made here for a model that failed to load
      throw e;
    } finally {
      close();
    }
  }

  /**
   * The most rows a batch of one token per sequence may have while every
   * row is computed exactly as it is alone (the matrix kernels of one token
   * and of a few take the same sums in the same order; past this many tokens
   * a tiled kernel takes over, whose sums differ in the last bits).
   */
  get exactBatchRows(): number {
    const t = matmulProfile(this.gpu).tuning;
    return Math.max(
      1,
      Math.min(t.matvecMaxTokens, t.idMatvecMaxTokens, t.idRoutedTMaxTokens ?? Infinity),
    );
  }

  /** The GPU expert pool. */
  get pool(): ExpertPool {
    return this.scheduler.pool;
  }

  /** Batches repaired after a missing expert, since load. */
  get stalls(): number {
    return this.scheduler.stalls;
  }

  /** Expert cache statistics (hits, misses, bytes, latency, per layer). */
  get expertStats(): ExpertStats {
    return this.pool.stats;
  }

  /**
   * Prefetch statistics (accuracy, recall@k per distance, wasted bytes,
   * stalls per token) while experts stream; none when every expert fits.
   */
  get prefetchStats(): PrefetchStatsSnapshot | undefined {
    return this.scheduler.prefetchStats;
  }

  /** The prefetcher (prefetch on or off) while experts stream. */
  get prefetcher(): Prefetcher | undefined {
    return this.scheduler.prefetcher;
  }

  /** The non-finite flag (u32: the first layer whose output was not finite), to read back with tokens. */
  get finiteFlag(): BufferBinding {
    return { buffer: this.transformer.state.nonFinite, offset: 0, size: 4 };
  }

  /**
   * Before a run: clears the non-finite flag, and refills the slots of
   * experts dropped after a non-finite result when every expert is meant to
   * be resident (an unreadable file throws `ExpertReadError` here).
   */
  beginChecks(): void {
    upload(this.gpu, this.transformer.state.nonFinite, new Uint32Array([FINITE]));
    this.scheduler.refill();
  }

  /**
   * Throws {@link NonFiniteError} when the flag read back (see
   * {@linkcode finiteFlag}) says a layer's output was not finite, after
   * dropping that layer's routed experts from the pool (a corrupt file's
   * bytes must not outlive its repair).
   */
  checkFinite(flag: ArrayBuffer | undefined): void {
    const layer = flag ? new Uint32Array(flag)[0]! : FINITE;
    if (layer === FINITE) return;
    this.scheduler.dropAfterNonFinite(layer);
    throw new NonFiniteError(layer, this.config.nLayer);
  }

  /** Forgets the context (the KV cache is overwritten from position 0). */
  reset(): void {
    this.nPast = 0;
    this.#contextVersion++;
  }

  /**
   * Changes whenever the context changes (reset, truncate, a batch): a
   * caller that remembers which tokens it left in the KV cache knows they
   * are still there while this is what it was.
   */
  get contextVersion(): number {
    return this.#contextVersion;
  }

  /** Marks the context as changed (see {@linkcode contextVersion}); a generation does at its start. */
  touchContext(): void {
    this.#contextVersion++;
  }

  /**
   * Keeps the first `n` positions of the context and forgets the rest: the
   * next tokens take positions from `n` on. Every cache is indexed by
   * absolute position and attention reads only positions below the batch's
   * own, so what was written beyond `n` is never seen (sliding windows and
   * MLA included).
   */
  truncate(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.nPast) {
      throw new RangeError(`truncate: ${n} is not a position in 0…${this.nPast}`);
    }
    if (!this.canRewind && n !== 0 && n !== this.nPast) {
      throw new RangeError(
        `truncate: ${this.config.arch} keeps a recurrent state (gated DeltaNet layers) that ` +
          `holds all ${this.nPast} positions at once; it can be kept whole or reset (0), not cut to ${n}`,
      );
    }
    this.nPast = n;
    this.#contextVersion++;
  }

  /** A copy of the KV cache's first `n` positions (default all in the context) in CPU memory. */
  snapshotContext(n: number = this.nPast): Promise<ContextSnapshot> {
    if (!Number.isInteger(n) || n < 0 || n > this.nPast) {
      throw new RangeError(`snapshotContext: ${n} is not a position in 0…${this.nPast}`);
    }
    return snapshotContext(this.gpu, this.#caches, n);
  }

  /**
   * Makes the context the snapshot's first `n` positions: uploads rows
   * `from … n−1` and keeps the first `from` (which must already hold the
   * same tokens: a prefix shared with the context).
   */
  restoreContext(snapshot: ContextSnapshot, from: number, n: number): void {
    if (!Number.isInteger(from) || from < 0 || from > this.nPast) {
      throw new RangeError(`restoreContext: ${from} is not a position in 0…${this.nPast}`);
    }
    restoreContext(this.gpu, this.#caches, snapshot, from, n);
    this.nPast = n;
    this.#contextVersion++;
  }

  /**
   * Whether {@link truncate} may cut the context anywhere: false for models
   * with a recurrent state (gated DeltaNet layers), which sums up every
   * position and keeps no per-position history to go back to — the context
   * can only be kept whole (and extended) or reset.
   */
  get canRewind(): boolean {
    return this.config.deltaNet === undefined;
  }

  /** Writes the step buffer: a batch of `nTokens` at positions from `pos0`. */
  writeStep(pos0: number, nTokens: number): void {
    upload(this.gpu, this.transformer.state.step, stepWords(pos0, nTokens));
  }

  /** Throws a RangeError unless `n` more tokens fit in the context. */
  checkRoom(n: number): void {
    if (this.nPast + n > this.nCtx) {
      throw new RangeError(
        `context full: ${this.nPast} tokens + ${n} more exceed the context size ${this.nCtx}`,
      );
    }
  }

  /** Throws a RangeError naming the first id outside the vocabulary. */
  checkIds(tokens: readonly number[]): void {
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.config.nVocab) {
        throw new RangeError(
          `token id ${t} is outside the vocabulary (0…${this.config.nVocab - 1})`,
        );
      }
    }
  }

  /**
   * Records a batch of `nTokens` at `pos` (the step buffer written): the
   * forward pass (or its resumption from `fromLayer`), the head and
   * sampler as `end` says, the predictor into ring `slot`, and its routes
   * into the route log.
   */
  recordBatch(
    enc: GPUCommandEncoder,
    pos: number,
    nTokens: number,
    o: BatchEnd & {
      fromLayer?: number;
      expertGroup?: "partial" | "last";
      slot?: number;
      /** A decode-window token after the first (see {@linkcode MoeTransformer.record}). */
      keepWindowFlag?: boolean;
      /** The head computes the logits of these many rows (listed in `headStep`). */
      rows?: number;
      /** Sequences in the batch (default 1). */
      sequences?: number;
    } = {},
  ): void {
    this.transformer.record(enc, nTokens, {
      fromLayer: o.fromLayer,
      sample: o.sample,
      head: o.head ?? true,
      expertGroup: o.expertGroup,
      keepWindowFlag: o.keepWindowFlag,
      rows: o.rows,
      sequences: o.sequences,
    });
    if (o.expertGroup === "partial") return;
    this.scheduler.record(enc, nTokens, o.slot);
    const w = this.scheduler.routeWords * 4;
    enc.copyBufferToBuffer(this.transformer.state.routes, 0, this.#routeLog, pos * w, nTokens * w);
  }

  /**
   * Reads the logged routes of `nTokens` from `pos` (u32 `[nTokens, nLayer,
   * nExpertUsed]`) and `extra` in one sync.
   */
  async readRoutes(
    pos: number,
    nTokens: number,
    extra: readonly BufferBinding[] = [],
  ): Promise<[Uint32Array, ArrayBuffer[]]> {
    const w = this.scheduler.routeWords * 4;
    const enc = this.gpu.device.createCommandEncoder();
    const pending = recordReadback(this.gpu, enc, [
      { buffer: this.#routeLog, offset: pos * w, size: nTokens * w },
      ...extra,
    ]);
    this.gpu.submit(enc);
    const [routes, ...rest] = await pending.read();
    return [new Uint32Array(routes!), rest];
  }

  /**
   * Settles the batch at `pos` whose routes (read back) are `routes`: while
   * the scheduler finds a layer that missed, it loads that layer's experts
   * and the batch resumes from there. `restoreFrom` holds the batch's saved
   * residual stream when it is not in the run state's `saved` buffer (decode
   * windows); `extra` is read back with the last routes, in the same sync.
   * Returns the final routes and `extra`'s bytes (none when nothing missed).
   */
  async settle(
    pos: number,
    nTokens: number,
    routes: Uint32Array,
    o: BatchEnd & {
      restoreFrom?: { buffer: GPUBuffer; offset: number };
      extra?: readonly BufferBinding[];
      /** A batch of {@linkcode forwardRows}: its step words, rows the head computes, sequences. */
      many?: { step: Uint32Array; rows: number; sequences: number };
    } = {},
  ): Promise<{ routes: Uint32Array; extra: ArrayBuffer[]; repaired: boolean }> {
    const sch = this.scheduler;
    const repaired = new Set<number>();
    let extra: ArrayBuffer[] = [];
    let miss = sch.firstMiss(routes, nTokens);
    let first = true;
    const nExtra = o.extra?.length ?? 0;
    const head = o.head ?? true;
    while (miss) {
      if (o.many) upload(this.gpu, this.transformer.state.step, o.many.step);
      else this.writeStep(pos, nTokens);
      for (const pass of sch.repair(miss)) {
        if (pass !== "partial" && head) {
          for (const s of o.sampleState ?? []) upload(this.gpu, s.buffer, s.data);
        }
        const enc = this.gpu.device.createCommandEncoder();
        if (first && o.restoreFrom) {
          enc.copyBufferToBuffer(
            o.restoreFrom.buffer,
            o.restoreFrom.offset,
            this.transformer.state.saved,
            0,
            4 * nTokens * this.config.nEmbd,
          );
        }
        first = false;
        // More experts than the pool holds: the layer runs in expert groups
        // (see MoeTransformer.record), the last one resuming the batch.
        this.recordBatch(enc, pos, nTokens, {
          fromLayer: miss.layer,
          sample: o.sample,
          head,
          expertGroup: pass === "whole" ? undefined : pass,
          rows: o.many?.rows,
          sequences: o.many?.sequences,
        });
        this.gpu.submit(enc);
      }
      repaired.add(miss.layer);
      [routes, extra] = await this.readRoutes(pos, nTokens, [
        ...o.extra ?? [],
        ...sch.readRange(nTokens),
      ]);
      sch.seen(extra[nExtra], nTokens);
      miss = sch.firstMiss(routes, nTokens, miss.layer + 1);
    }
    sch.account(routes, nTokens, repaired);
    return { routes, extra: extra.slice(0, nExtra), repaired: repaired.size > 0 };
  }

  /**
   * Runs `tokens` from position `nPast` in batches of at most `maxBatch`,
   * each settled before the next (with experts streaming a batch must be
   * whole before the next attends to its keys); the last one's head and
   * sampler run as `end` says (by default no head). Advances `nPast`.
   */
  async prefill(tokens: readonly number[], end: BatchEnd = { head: false }): Promise<void> {
    const sch = this.scheduler;
    this.#contextVersion++;
    for (let i = 0; i < tokens.length; i += this.maxBatch) {
      const chunk = tokens.slice(i, i + this.maxBatch);
      const last = i + this.maxBatch >= tokens.length;
      const batchEnd: BatchEnd = last ? end : { head: false };
      const pos = this.nPast;
      upload(this.gpu, this.transformer.state.tokens, new Uint32Array(chunk));
      this.writeStep(pos, chunk.length);
      const enc = this.gpu.device.createCommandEncoder();
      this.recordBatch(enc, pos, chunk.length, batchEnd);
      this.gpu.submit(enc);
      this.nPast += chunk.length;
      if (sch.streaming) {
        const [routes, [preds]] = await this.readRoutes(
          pos,
          chunk.length,
          sch.readRange(chunk.length),
        );
        sch.seen(preds, chunk.length);
        const settled = await this.settle(pos, chunk.length, routes, batchEnd);
        sch.settle(settled.routes, chunk.length, false);
      }
    }
    if (!sch.streaming) {
      // every expert resident: count the lookups in one readback at the end
      const start = this.nPast - tokens.length;
      const [routes] = await this.readRoutes(start, tokens.length);
      sch.account(routes, tokens.length);
    }
  }

  /**
   * Appends `tokens` to the context and returns the logits after the last
   * one (f32 [nVocab]).
   */
  async forward(tokens: readonly number[]): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("forward needs at least one token");
    this.checkIds(tokens);
    this.checkRoom(tokens.length);
    this.beginChecks();
    await this.prefill(tokens, { head: true, sample: [] });
    const enc = this.gpu.device.createCommandEncoder();
    const pending = recordReadback(this.gpu, enc, [this.transformer.state.logits, this.finiteFlag]);
    this.gpu.submit(enc);
    const [logits, flag] = await pending.read();
    this.checkFinite(flag);
    return new Float32Array(logits!);
  }

  /**
   * Uploads the step words and head rows of a batch of `runs` (and their
   * token ids unless `feed` is false: a sampler wrote them on the GPU).
   */
  #writeRows(
    runs: readonly SequenceRun[],
    feed: boolean,
  ): { n: number; R: number; step: Uint32Array } {
    const s = this.transformer.state;
    if (!s.headStep || !s.logitsRows) {
      throw new RangeError("forwardRows needs a model loaded with maxSequences > 1");
    }
    if (runs.length === 0 || runs.length > this.maxSequences) {
      throw new RangeError(`forwardRows takes 1…${this.maxSequences} runs, got ${runs.length}`);
    }
    const tokens: BatchToken[] = [];
    const ids: number[] = [];
    const rows: number[] = [];
    const seen = new Set<number>();
    for (const r of runs) {
      if (!Number.isInteger(r.sequence) || r.sequence < 0 || r.sequence >= this.maxSequences) {
        throw new RangeError(
          `forwardRows: sequence ${r.sequence} is not in 0…${this.maxSequences - 1}`,
        );
      }
      if (seen.has(r.sequence)) {
        throw new RangeError(`forwardRows: sequence ${r.sequence} appears twice`);
      }
      seen.add(r.sequence);
      if (r.tokens.length === 0) {
        throw new RangeError(`forwardRows: sequence ${r.sequence} has no tokens`);
      }
      if (!Number.isInteger(r.pos) || r.pos < 0 || r.pos + r.tokens.length > this.nCtx) {
        throw new RangeError(
          `context full: sequence ${r.sequence} at position ${r.pos} + ${r.tokens.length} tokens ` +
            `exceeds the context size ${this.nCtx}`,
        );
      }
      this.checkIds(r.tokens);
      const base = r.sequence * this.nCtx;
      r.tokens.forEach((t, i) => {
        tokens.push({ pos: r.pos + i, base });
        ids.push(t);
      });
      rows.push(tokens.length - 1);
    }
    const n = ids.length;
    if (n > this.maxBatch) {
      throw new RangeError(`forwardRows: ${n} tokens exceed the batch size ${this.maxBatch}`);
    }
    const R = rows.length;
    const step = batchStepWords(tokens);
    const head = new Uint32Array(STEP.tokens + R);
    head[STEP.nTokens] = head[STEP.nKv] = R;
    head.set(rows, STEP.tokens);
    if (feed) upload(this.gpu, s.tokens, new Uint32Array(ids));
    upload(this.gpu, s.step, step);
    upload(this.gpu, s.headStep, head);
    return { n, R, step };
  }

  /**
   * Records and submits a batch of several sequences one token each without
   * reading anything back (a round of a decode window, every expert
   * resident): `runs` as in {@linkcode forwardRows}, with `feed` false their
   * ids are taken from the token buffer (rows in run order, written there by
   * the previous round's samplers); its routes are logged from row `logRow`
   * of the route log (read them with {@linkcode readRoutes}); `after` records
   * into the same encoder after the head (the samplers). Call {@linkcode
   * beginChecks} before a window's first round and read {@linkcode finiteFlag}
   * with its results.
   */
  queueRows(
    runs: readonly SequenceRun[],
    o: {
      feed: boolean;
      logRow: number;
      /** Attention token by token even for one run (as for several: its numbers then match). */
      tokenByToken?: boolean;
      after?: (enc: GPUCommandEncoder) => void;
    },
  ): void {
    if (this.scheduler.streaming) {
      throw new RangeError("queueRows runs only while every expert is resident (use forwardRows)");
    }
    const { n, R } = this.#writeRows(runs, o.feed);
    const enc = this.gpu.device.createCommandEncoder();
    this.recordBatch(enc, o.logRow, n, { rows: R, sequences: o.tokenByToken ? Math.max(2, R) : R });
    o.after?.(enc);
    this.gpu.submit(enc);
  }

  /**
   * One batch of several sequences (continuous batching): each run's tokens
   * go into its own KV region at its positions, and the logits after each
   * run's last token come back (f32 [nVocab] each, in order), in one
   * submit and one readback (more when experts stream and a layer misses:
   * the batch is repaired as a whole). A token's result does not depend on
   * the other sequences in the batch. The single-sequence context
   * (`nPast`, region 0) is left as it is; a caller mixing both keeps region
   * 0's sequence out of the runs.
   */
  async forwardRows(
    runs: readonly SequenceRun[],
    o: {
      /** Attention token by token even for one run (as for several: its numbers then match). */
      tokenByToken?: boolean;
    } = {},
  ): Promise<Float32Array[]> {
    const s = this.transformer.state;
    const sch = this.scheduler;
    this.beginChecks();
    const { n, R, step } = this.#writeRows(runs, true);
    const sequences = o.tokenByToken ? Math.max(2, R) : R;
    const enc = this.gpu.device.createCommandEncoder();
    this.recordBatch(enc, 0, n, { rows: R, sequences });
    this.gpu.submit(enc);
    const logits = { buffer: s.logitsRows!, offset: 0, size: 4 * R * this.config.nVocab };
    const range = sch.streaming ? sch.readRange(n) : [];
    const [routes, rest] = await this.readRoutes(0, n, [...range, logits, this.finiteFlag]);
    let out = rest.slice(range.length);
    if (sch.streaming) {
      sch.seen(range.length ? rest[0] : undefined, n);
      const settled = await this.settle(0, n, routes, {
        many: { step, rows: R, sequences },
        extra: [logits, this.finiteFlag],
      });
      sch.settle(settled.routes, n, false);
      if (settled.repaired) out = settled.extra;
    } else {
      sch.account(routes, n);
    }
    this.checkFinite(out[1]);
    const all = new Float32Array(out[0]!);
    const V = this.config.nVocab;
    return Array.from({ length: R }, (_, i) => all.subarray(i * V, (i + 1) * V));
  }

  /** Frees GPU memory (and the device if the model made it). */
  close(): void {
    this.transformer.destroy();
    this.weights.destroy();
    this.scheduler.destroy();
    this.#routeLog.destroy();
    if (this.ownsGpu) this.gpu.destroy();
  }
}

/**
 * Loads a GGUF model onto the GPU.
 *
 * ```ts ignore
 * // generate: src/generate/session.ts
 * const model = await loadModel({ model: "qwen3moe.gguf", cacheSizeGB: 1 });
 * const logits = await model.forward([1, 2, 3]);
 * const { tokens } = await generate(model, [4, 5], { maxTokens: 8 });
 * model.close();
 * ```
 */
export function loadModel(o: LoadModelOptions): Promise<Model> {
  return Model.load(o);
}
