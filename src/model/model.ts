/**
 * `loadModel`: a GGUF file → a model whose base weights live on the GPU and
 * whose routed experts stream from the memory-mapped file into a bounded
 * pool of GPU slots. One submit per batch; the CPU reads back once per
 * window of tokens — unless an expert was missing, in which case the token
 * stalls at that layer, the missing experts are uploaded, and it resumes
 * from there (stall and repair, DESIGN.md).
 *
 * @module
 */

import { type GgufModelFile, type GgufTensorInfo, readGgufModel } from "../gguf/reader.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import { acquireGpu, type Gpu } from "../gpu/device.ts";
import { createBuffer, recordReadback, upload } from "../gpu/buffers.ts";
import { type Op, stepWords } from "../gpu/ops/op.ts";
import { FINITE } from "../gpu/ops/finite.ts";
import { isGpuWeightType, UnsupportedWeightTypeError } from "../gpu/ops/quant_wgsl.ts";
import type { BufferBinding } from "../gpu/dispatch.ts";
import { checkMoeConfig, type ModelConfig, type TensorPlanEntry } from "./config.ts";
import { archSpec } from "./registry.ts";
import {
  checkTensorPlan,
  type GpuWeights,
  type TensorBytes,
  TensorPlanError,
  uploadPlannedTensors,
} from "./weights.ts";
import { openBaseModel } from "../converted/reader.ts";
import { ExpertDirSource } from "../experts/expert_dir_source.ts";
import { type ExpertStacks, MoeTransformer } from "./transformer.ts";
import { type ExpertSource, GgufExpertSource } from "../experts/source.ts";
import { ExpertPool } from "../experts/pool.ts";
import type { ExpertStats } from "../experts/stats.ts";
import { evictionPolicyFactory, type EvictionPolicyName } from "../experts/policy_predictive.ts";
import { Prefetcher, type PrefetcherOptions } from "../experts/prefetcher.ts";
import type { PrefetchStatsSnapshot } from "../experts/prefetch_stats.ts";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /** Path of the GGUF file holding everything (any shard of a split model). */
  model?: string;
  /** The converter's `DIR/base_model` (base weights), with `expertDir` or `ggufExperts`. */
  baseWeights?: string;
  /** The converter's `DIR/experts` (one safetensors file per expert). */
  expertDir?: string;
  /** A GGUF file to stream the routed experts from (with `baseWeights`). */
  ggufExperts?: string;
  /** Context length (KV cache positions); default min(4096, the model's). */
  nCtx?: number;
  /** Most prompt tokens per batch; default 64. */
  maxBatch?: number;
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
  /** Where load-time warnings go (a raised budget); default `console.warn`. */
  onWarning?: (message: string) => void;
  /** Where routed experts are read from; default the model's GGUF file(s). */
  expertSource?: ExpertSource;
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

/** Statistics of one generation. */
export interface GenerateStats {
  /** Prompt tokens processed. */
  promptTokens: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Prefill time (to the first token), ms. */
  prefillMs: number;
  /** Decode time (after the first token), ms. */
  decodeMs: number;
  /** GPU→CPU readbacks during decode, per decoded token. */
  syncsPerToken: number;
  /** Submits during decode, per decoded token. */
  submitsPerToken: number;
  /** Batches that stalled on a missing expert and were repaired. */
  stalls: number;
}

/** What {@linkcode Model.generate} returns. */
export interface GenerateResult {
  /** Generated token ids (a stop token included). */
  tokens: number[];
  /** Logits after the last prompt token, when asked for. */
  promptLogits?: Float32Array;
  /** Timings and sync counts. */
  stats: GenerateStats;
}

/** Options of {@linkcode Model.generate} and {@linkcode Model.generateSteps}. */
export interface GenerateOptions {
  /** Tokens to generate at most. */
  maxTokens: number;
  /** Token ids that end generation (included in the output). */
  stopTokens?: readonly number[];
  /** Tokens queued before each readback; default the model's window. */
  window?: number;
  /** Also return the logits after the last prompt token. */
  promptLogits?: boolean;
  /** Sampling ops to run after the output head instead of argmax (they write tokens[0]). */
  sample?: readonly Op[];
  /** Called after each readback with the accepted tokens' positions, before the next window. */
  onAccepted?: (fromPos: number, tokens: readonly number[]) => void;
  /**
   * Called before the next window is queued when a batch was repaired (its
   * sampler ran more than once, and tokens queued after it were dropped):
   * a sampler keeping a history on the GPU rewrites it here.
   */
  onStall?: () => void;
  /**
   * Called before a repaired batch runs the sampler again, with the tokens
   * generated before the one being resampled: a sampler keeping a history on
   * the GPU rewrites it here (the stalled pass appended a wrong token).
   */
  onResample?: (generated: readonly number[]) => void;
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

class MappedTensors implements TensorBytes {
  constructor(readonly files: MappedFile[]) {}
  bytes(t: GgufTensorInfo): Uint8Array {
    return this.files[t.fileIndex]!.view(t.fileOffset, t.nBytes);
  }
}

const GIB = 1024 ** 3;

/** A loaded model. */
export class Model {
  /** Tokens in the KV cache. */
  nPast = 0;
  /** Batches repaired after a missing expert, since load. */
  stalls = 0;
  /** u32 [nCtx, nLayer, nExpertUsed]: the routes of every position. */
  readonly #routeLog: GPUBuffer;
  /** u32 [nCtx + 1]: the token sampled after each position (at the position it will take). */
  readonly #tokenLog: GPUBuffer;
  /** f32 [window, nEmbd]: each queued decode token's saved residual stream. */
  readonly #savedRing: GPUBuffer;
  readonly #window: number;
  readonly #prefetch?: Prefetcher;

  private constructor(
    readonly gpu: Gpu,
    readonly file: GgufModelFile,
    readonly config: ModelConfig,
    readonly transformer: MoeTransformer,
    readonly pool: ExpertPool,
    readonly nCtx: number,
    readonly maxBatch: number,
    window: number,
    readonly ownsGpu: boolean,
    readonly weights: GpuWeights,
    prefetch?: Prefetcher,
  ) {
    const c = config;
    this.#window = window;
    this.#prefetch = prefetch;
    this.#routeLog = createBuffer(gpu, {
      label: "route_log",
      size: 4 * nCtx * c.nLayer * c.nExpertUsed,
    });
    this.#tokenLog = createBuffer(gpu, { label: "token_log", size: 4 * (nCtx + 1) });
    this.#savedRing = createBuffer(gpu, { label: "saved_ring", size: 4 * window * c.nEmbd });
  }

  /** Loads a model; see {@linkcode loadModel}. */
  static async load(o: LoadModelOptions): Promise<Model> {
    const { file, bytes, close } = openBase(o);
    let source: ExpertSource | undefined;
    try {
      const spec = archSpec(file.architecture);
      const config: ModelConfig = { ...spec.readConfig(file.metadata), ...o.configOverride };
      if (o.configOverride) checkMoeConfig(config);
      const fullPlan = spec.tensorPlan(config);
      const plan = checkTensorPlan(file, fullPlan.filter((e) => e.role === "base"));
      const nCtx = o.nCtx ?? Math.min(4096, config.nCtxTrain || 4096);
      const maxBatch = o.maxBatch ?? 64;
      const window = o.window ?? 16;
      if (!(Number.isInteger(window) && window >= 1)) {
        throw new RangeError(`window must be an integer ≥ 1, got ${o.window}`);
      }
      const cacheSizeGB = o.cacheSizeGB ?? 4;
      if (!(cacheSizeGB >= 0)) throw new RangeError(`cacheSizeGB must be ≥ 0, got ${cacheSizeGB}`);
      source = trunkLayers(o.expertSource ?? openExperts(o, file), config.nLayer);
      checkExpertSource(source, fullPlan.filter((e) => e.role === "expert"));
      const gpu = o.gpu ?? await acquireGpu();
      const weights = uploadPlannedTensors(gpu, file, bytes, plan, ["base"]);
      const pool = new ExpertPool(gpu, source, {
        budgetBytes: Math.floor(cacheSizeGB * GIB),
        minSlots: config.nExpertUsed,
        nLayer: config.nLayer,
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
      return new Model(
        gpu,
        file,
        config,
        transformer,
        pool,
        nCtx,
        maxBatch,
        window,
        !o.gpu,
        weights,
        prefetch,
      );
    } catch (e) {
      source?.close();
      throw e;
    } finally {
      close();
    }
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
    return this.#prefetch?.stats.snapshot();
  }

  /** The prefetcher (prefetch on or off) while experts stream. */
  get prefetcher(): Prefetcher | undefined {
    return this.#prefetch;
  }

  /** The non-finite flag, read back with the tokens. */
  get #flag(): BufferBinding {
    return { buffer: this.transformer.state.nonFinite, offset: 0, size: 4 };
  }

  /**
   * Clears the non-finite flag before a generation, and refills the slots of
   * experts dropped after a non-finite result when every expert is meant to
   * be resident (an unreadable file throws `ExpertReadError` here).
   */
  #beginChecks(): void {
    upload(this.gpu, this.transformer.state.nonFinite, new Uint32Array([FINITE]));
    if (this.pool.allResident && this.#dropped) {
      this.pool.preloadAll();
      this.#dropped = false;
    }
  }

  /**
   * Throws {@link NonFiniteError} when the flag read back says a layer's
   * output was not finite, after dropping that layer's routed experts from
   * the pool (a corrupt file's bytes must not outlive its repair).
   */
  #checkFinite(flag: ArrayBuffer | undefined): void {
    const layer = flag ? new Uint32Array(flag)[0]! : FINITE;
    if (layer === FINITE) return;
    const L = this.config.nLayer;
    const dropFrom = Math.min(layer, L - 1);
    try {
      if (this.pool.dropLayer(dropFrom) > 0) this.#dropped = true;
    } catch (e) {
      if (!(e instanceof RangeError)) throw e; // a dense layer: nothing to drop
    }
    throw new NonFiniteError(layer, L);
  }

  #dropped = false;

  /** Forgets the context (the KV cache is overwritten from position 0). */
  reset(): void {
    this.nPast = 0;
    this.#contextVersion++;
  }

  #contextVersion = 0;

  /**
   * Changes whenever the context changes (reset, truncate, forward, a
   * generation): a caller that remembers which tokens it left in the KV
   * cache knows they are still there while this is what it was.
   */
  get contextVersion(): number {
    return this.#contextVersion;
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
    this.nPast = n;
    this.#contextVersion++;
  }

  #writeStep(pos0: number, nTokens: number): void {
    upload(this.gpu, this.transformer.state.step, stepWords(pos0, nTokens));
  }

  #checkRoom(n: number): void {
    if (this.nPast + n > this.nCtx) {
      throw new RangeError(
        `context full: ${this.nPast} tokens + ${n} more exceed the context size ${this.nCtx}`,
      );
    }
  }

  #checkIds(tokens: readonly number[]): void {
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.config.nVocab) {
        throw new RangeError(
          `token id ${t} is outside the vocabulary (0…${this.config.nVocab - 1})`,
        );
      }
    }
  }

  get #routeWords(): number {
    return this.config.nLayer * this.config.nExpertUsed;
  }

  /** Copies a batch's routes into the route log and the sampled token into the token log. */
  #logBatch(enc: GPUCommandEncoder, pos: number, nTokens: number): void {
    const w = this.#routeWords * 4;
    enc.copyBufferToBuffer(this.transformer.state.routes, 0, this.#routeLog, pos * w, nTokens * w);
    enc.copyBufferToBuffer(
      this.transformer.state.tokens,
      0,
      this.#tokenLog,
      4 * (pos + nTokens),
      4,
    );
  }

  /**
   * The first layer from `fromLayer` on at which any of `nTokens` routes
   * (token-major) names an expert that is not resident, with that layer's
   * experts; null when every expert was resident. Layers before a repaired
   * one are not looked at again: they ran with their experts present, which
   * the repair's uploads may since have evicted.
   */
  #firstMiss(
    routes: Uint32Array,
    nTokens: number,
    fromLayer = 0,
  ): { layer: number; experts: number[] } | null {
    const { nLayer: L, nExpertUsed: K } = this.config;
    // leading dense blocks (DeepSeek) route nothing
    for (let l = Math.max(fromLayer, this.config.nLayerDenseLead ?? 0); l < L; l++) {
      const wanted = new Set<number>();
      for (let t = 0; t < nTokens; t++) {
        for (let k = 0; k < K; k++) wanted.add(routes[(t * L + l) * K + k]!);
      }
      for (const e of wanted) {
        if (this.pool.slotOf(l, e) < 0) return { layer: l, experts: [...wanted] };
      }
    }
    return null;
  }

  /** Counts the lookups of settled routes: hits for every layer not repaired (those were counted by ensure). */
  #account(routes: Uint32Array, nTokens: number, repaired: ReadonlySet<number>): void {
    const { nLayer: L, nExpertUsed: K } = this.config;
    for (let l = this.config.nLayerDenseLead ?? 0; l < L; l++) {
      if (repaired.has(l)) continue;
      const ids: number[] = [];
      for (let t = 0; t < nTokens; t++) {
        for (let k = 0; k < K; k++) ids.push(routes[(t * L + l) * K + k]!);
      }
      this.pool.touch(l, ids);
    }
  }

  async #readRoutes(
    pos: number,
    nTokens: number,
    extra: BufferBinding[] = [],
  ): Promise<[Uint32Array, ArrayBuffer[]]> {
    const w = this.#routeWords * 4;
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
   * `experts` of `layer` cut into groups the pool can hold at once (its
   * slots), the resident ones first so they are used before any is evicted;
   * one group when they all fit.
   */
  #expertGroups(layer: number, experts: readonly number[]): number[][] {
    const n = this.pool.slotsFor(layer);
    if (experts.length <= n) return [[...experts]];
    const resident = experts.filter((e) => this.pool.slotOf(layer, e) >= 0);
    const absent = experts.filter((e) => this.pool.slotOf(layer, e) < 0);
    const order = [...resident, ...absent];
    const groups: number[][] = [];
    for (let i = 0; i < order.length; i += n) groups.push(order.slice(i, i + n));
    return groups;
  }

  /**
   * Repairs the batch at `pos` whose routes are `routes` until no expert is
   * missing: upload the first missing layer's experts, resume from there.
   * `restoreFrom` holds the batch's saved residual stream when it is not in
   * the run state's `saved` buffer (decode windows). Returns the final routes.
   */
  async #repair(
    pos: number,
    nTokens: number,
    routes: Uint32Array,
    o: {
      sample?: readonly Op[];
      head: boolean;
      restoreFrom?: { buffer: GPUBuffer; offset: number };
      /** Read back with the last routes, in the same sync (the repaired token's id). */
      extra?: BufferBinding[];
      /** Runs before each repair submit that samples (see {@linkcode GenerateOptions.onResample}). */
      beforeSample?: () => void;
    },
  ): Promise<{ routes: Uint32Array; extra: ArrayBuffer[] }> {
    const repaired = new Set<number>();
    let extra: ArrayBuffer[] = [];
    let miss = this.#firstMiss(routes, nTokens);
    let first = true;
    const p = this.#prefetch;
    const nExtra = o.extra?.length ?? 0;
    while (miss) {
      this.stalls++;
      p?.cursor(miss.layer);
      this.#writeStep(pos, nTokens);
      // More experts than the pool holds: the layer runs in expert groups
      // (see MoeTransformer.record), the last one resuming the batch.
      const groups = this.#expertGroups(miss.layer, miss.experts);
      const restore = (enc: GPUCommandEncoder) => {
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
      };
      for (const group of groups.slice(0, -1)) {
        this.pool.ensure(miss.layer, group);
        const enc = this.gpu.device.createCommandEncoder();
        restore(enc);
        this.transformer.record(enc, nTokens, { fromLayer: miss.layer, expertGroup: "partial" });
        this.gpu.submit(enc);
      }
      const last = groups[groups.length - 1]!;
      if (groups.length > 1) this.pool.stats.recordSplit(groups.length);
      this.pool.ensure(miss.layer, last);
      p?.onStall(miss.layer, last);
      repaired.add(miss.layer);
      if (o.head) o.beforeSample?.();
      const enc = this.gpu.device.createCommandEncoder();
      restore(enc);
      this.transformer.record(enc, nTokens, {
        fromLayer: miss.layer,
        sample: o.sample,
        head: o.head,
        expertGroup: groups.length > 1 ? "last" : undefined,
      });
      p?.record(enc, nTokens, p.batchSlot);
      this.#logBatch(enc, pos, nTokens);
      this.gpu.submit(enc);
      [routes, extra] = await this.#readRoutes(pos, nTokens, [
        ...o.extra ?? [],
        ...p?.readRange(p.batchSlot, nTokens) ?? [],
      ]);
      p?.seen(extra[nExtra], nTokens);
      miss = this.#firstMiss(routes, nTokens, miss.layer + 1);
    }
    this.#account(routes, nTokens, repaired);
    return { routes, extra: extra.slice(0, nExtra) };
  }

  /** Runs the prompt batches; the last one's head and sampler run too. */
  async #prefill(
    tokens: readonly number[],
    sample: readonly Op[] | undefined,
    beforeSample?: () => void,
  ): Promise<void> {
    const streaming = !this.pool.allResident;
    for (let i = 0; i < tokens.length; i += this.maxBatch) {
      const chunk = tokens.slice(i, i + this.maxBatch);
      const last = i + this.maxBatch >= tokens.length;
      const pos = this.nPast;
      upload(this.gpu, this.transformer.state.tokens, new Uint32Array(chunk));
      this.#writeStep(pos, chunk.length);
      const enc = this.gpu.device.createCommandEncoder();
      this.transformer.record(enc, chunk.length, { sample: last ? sample : [], head: last });
      const p = this.#prefetch;
      p?.record(enc, chunk.length, p.batchSlot);
      this.#logBatch(enc, pos, chunk.length);
      this.gpu.submit(enc);
      this.nPast += chunk.length;
      // With experts streaming, a batch must be whole before the next attends to its keys.
      if (streaming) {
        const [routes, [preds]] = await this.#readRoutes(
          pos,
          chunk.length,
          p?.readRange(p.batchSlot, chunk.length),
        );
        p?.seen(preds, chunk.length);
        const settled = await this.#repair(pos, chunk.length, routes, {
          sample: last ? sample : [],
          head: last,
          beforeSample,
        });
        p?.settle(settled.routes, chunk.length, false);
      }
    }
    if (!streaming) {
      // every expert resident: count the lookups in one readback at the end
      const start = this.nPast - tokens.length;
      const [routes] = await this.#readRoutes(start, tokens.length);
      this.#account(routes, tokens.length, new Set());
    }
  }

  /**
   * Appends `tokens` to the context and returns the logits after the last
   * one (f32 [nVocab]).
   */
  async forward(tokens: readonly number[]): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("forward needs at least one token");
    this.#contextVersion++;
    this.#checkIds(tokens);
    this.#checkRoom(tokens.length);
    this.#beginChecks();
    await this.#prefill(tokens, undefined);
    const enc = this.gpu.device.createCommandEncoder();
    const pending = recordReadback(this.gpu, enc, [this.transformer.state.logits, this.#flag]);
    this.gpu.submit(enc);
    const [logits, flag] = await pending.read();
    this.#checkFinite(flag);
    return new Float32Array(logits!);
  }

  /**
   * Generation after `prompt` (appended to the context), as an async
   * generator of accepted token ids, a window at a time. Tokens are sampled
   * on the GPU and fed back without a round trip; the CPU reads a window
   * back at once, checks it for experts that were missing (repairing the
   * first such token and dropping those queued after it), and yields it.
   * Stopping the iteration early leaves the context at the tokens yielded.
   */
  async *generateSteps(
    prompt: readonly number[],
    o: GenerateOptions,
  ): AsyncGenerator<number[], { promptLogits?: Float32Array }, void> {
    if (prompt.length === 0) throw new RangeError("generate needs a prompt of at least one token");
    this.#contextVersion++;
    if (!(o.maxTokens >= 1)) throw new RangeError(`maxTokens must be ≥ 1, got ${o.maxTokens}`);
    this.#checkIds(prompt);
    this.#checkRoom(prompt.length + o.maxTokens - 1);
    const s = this.transformer.state;
    const stop = new Set(o.stopTokens ?? []);
    if (o.window !== undefined && !(Number.isInteger(o.window) && o.window >= 1)) {
      throw new RangeError(`window must be an integer ≥ 1, got ${o.window}`);
    }
    const maxWindow = Math.max(1, Math.min(o.window ?? this.#window, this.#window));
    this.#beginChecks();
    const streaming = !this.pool.allResident;
    let emitted = 0;
    const generated: number[] = []; // tokens yielded so far
    let failed = false;
    const startPos = this.nPast;
    try {
      let stallsSeen = this.stalls;
      await this.#prefill(prompt, o.sample, () => o.onResample?.([]));
      const posFirst = this.nPast; // the first generated token takes this position
      const extra = o.promptLogits ? [s.logits] : [];
      const enc0 = this.gpu.device.createCommandEncoder();
      const first = recordReadback(this.gpu, enc0, [
        {
          buffer: this.#tokenLog,
          offset: 4 * posFirst,
          size: 4,
        },
        this.#flag,
        ...extra,
      ]);
      this.gpu.submit(enc0);
      const [firstId, flag0, logitsBytes] = await first.read();
      this.#checkFinite(flag0);
      const t0 = new Uint32Array(firstId!)[0]!;
      const promptLogits = logitsBytes ? new Float32Array(logitsBytes) : undefined;
      emitted = 1;
      generated.push(t0);
      o.onAccepted?.(posFirst, [t0]);
      yield [t0];
      if (stop.has(t0)) return { promptLogits };
      if (this.stalls !== stallsSeen) {
        stallsSeen = this.stalls;
        o.onStall?.();
      }

      let pos = posFirst; // position of the token to feed next
      let window = streaming ? 1 : maxWindow;
      const p = this.#prefetch;
      while (emitted < o.maxTokens) {
        const n = Math.min(window, o.maxTokens - emitted);
        const syncsBefore = this.gpu.stats.syncs;
        const missesBefore = this.pool.stats.snapshot().misses;
        p?.beforeNext();
        for (let j = 0; j < n; j++) {
          this.#writeStep(pos + j, 1);
          const enc = this.gpu.device.createCommandEncoder();
          this.transformer.record(enc, 1, { sample: o.sample, head: true });
          p?.record(enc, 1, j);
          this.#logBatch(enc, pos + j, 1);
          if (streaming) {
            enc.copyBufferToBuffer(
              s.saved,
              0,
              this.#savedRing,
              4 * j * this.config.nEmbd,
              4 * this.config.nEmbd,
            );
          }
          this.gpu.submit(enc);
        }
        const [routes, [idsBytes, flagBytes, preds]] = await this.#readRoutes(pos, n, [
          { buffer: this.#tokenLog, offset: 4 * (pos + 1), size: 4 * n },
          this.#flag,
          ...p?.readRange(0, n) ?? [],
        ]);
        this.#checkFinite(flagBytes);
        const ids = new Uint32Array(idsBytes!);
        const accepted: number[] = [];
        let stalled = false;
        for (let j = 0; j < n; j++) {
          const tokenRoutes = routes.subarray(j * this.#routeWords, (j + 1) * this.#routeWords);
          const miss = streaming ? this.#firstMiss(tokenRoutes, 1) : null;
          p?.seen(preds, 1, { token: j, firstMiss: miss?.layer ?? this.config.nLayer });
          if (miss) {
            // repair this token; those queued after it computed from its wrong output
            const repaired = await this.#repair(pos + j, 1, tokenRoutes.slice(), {
              sample: o.sample,
              head: true,
              restoreFrom: { buffer: this.#savedRing, offset: 4 * j * this.config.nEmbd },
              extra: [
                { buffer: this.#tokenLog, offset: 4 * (pos + j + 1), size: 4 },
                this.#flag,
              ],
              beforeSample: () => o.onResample?.([...generated, ...accepted]),
            });
            p?.settle(repaired.routes, 1, true);
            this.#checkFinite(repaired.extra[1]);
            accepted.push(new Uint32Array(repaired.extra[0]!)[0]!);
            stalled = true;
            break;
          }
          if (streaming) this.#account(tokenRoutes, 1, new Set());
          p?.settle(tokenRoutes, 1, true);
          accepted.push(ids[j]!);
        }
        if (!streaming) this.#account(routes, n, new Set());
        // per-token syncs and misses, shared out over the window's accepted tokens
        const share = 1 / accepted.length;
        const syncs = (this.gpu.stats.syncs - syncsBefore) * share;
        const misses = (this.pool.stats.snapshot().misses - missesBefore) * share;
        for (let j = 0; j < accepted.length; j++) this.pool.stats.recordToken({ syncs, misses });
        window = stalled ? 1 : Math.min(maxWindow, window * 2);
        const stopAt = accepted.findIndex((t) => stop.has(t));
        const take = stopAt >= 0 ? accepted.slice(0, stopAt + 1) : accepted;
        this.nPast = pos + take.length;
        emitted += take.length;
        generated.push(...take);
        o.onAccepted?.(pos + 1, take);
        yield take;
        if (stopAt >= 0) break;
        pos += take.length;
        if (this.stalls !== stallsSeen) {
          stallsSeen = this.stalls;
          o.onStall?.();
        }
      }
      return { promptLogits };
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      // every generated token but the last has been fed into the context; a failure leaves it as it was
      this.nPast = failed ? startPos : startPos + prompt.length + Math.max(0, emitted - 1);
    }
  }

  /** Generation to the end, with statistics; see {@linkcode Model.generateSteps}. */
  async generate(prompt: readonly number[], o: GenerateOptions): Promise<GenerateResult> {
    const t0 = performance.now();
    const it = this.generateSteps(prompt, o);
    const tokens: number[] = [];
    let prefillMs = 0;
    let before = this.gpu.stats.snapshot();
    const stallsBefore = this.stalls;
    let promptLogits: Float32Array | undefined;
    for (;;) {
      const r = await it.next();
      if (r.done) {
        promptLogits = r.value.promptLogits;
        break;
      }
      if (tokens.length === 0) {
        prefillMs = performance.now() - t0;
        before = this.gpu.stats.snapshot();
      }
      tokens.push(...r.value);
    }
    const after = this.gpu.stats.since(before);
    const decoded = Math.max(1, tokens.length - 1);
    return {
      tokens,
      promptLogits,
      stats: {
        promptTokens: prompt.length,
        generatedTokens: tokens.length,
        prefillMs,
        decodeMs: performance.now() - t0 - prefillMs,
        syncsPerToken: after.syncs / decoded,
        submitsPerToken: after.submits / decoded,
        stalls: this.stalls - stallsBefore,
      },
    };
  }

  /** Frees GPU memory (and the device if the model made it). */
  close(): void {
    this.transformer.destroy();
    this.weights.destroy();
    this.#prefetch?.destroy();
    this.pool.destroy();
    this.pool.source.close();
    for (const b of [this.#routeLog, this.#tokenLog, this.#savedRing]) b.destroy();
    if (this.ownsGpu) this.gpu.destroy();
  }
}

/** The base weights' tensor table and bytes: the GGUF (`model`) or the converter's base directory. */
function openBase(
  o: LoadModelOptions,
): { file: GgufModelFile; bytes: TensorBytes; close: () => void } {
  if (o.baseWeights !== undefined) {
    if (o.model !== undefined) throw new TypeError("give either model or baseWeights, not both");
    if (o.expertDir === undefined && o.ggufExperts === undefined && o.expertSource === undefined) {
      throw new TypeError(
        "baseWeights holds no routed experts: add expertDir (the converter's DIR/experts) or ggufExperts (the GGUF)",
      );
    }
    const base = openBaseModel(o.baseWeights);
    // the mapped shards stay open: the tokenizer and metadata come from them too
    return { file: base, bytes: base, close: () => {} };
  }
  if (o.model === undefined) {
    throw new TypeError("a model is required: model (a GGUF) or baseWeights");
  }
  const file = readGgufModel(o.model);
  const mapped = file.files.map((f) => MappedFile.open(f.path));
  return {
    file,
    bytes: new MappedTensors(mapped),
    close: () => mapped.forEach((m) => m.close()),
  };
}

/** The routed experts' source for the options: an expert directory, a GGUF, or the model's own GGUF. */
function openExperts(o: LoadModelOptions, file: GgufModelFile): ExpertSource {
  if (o.expertDir !== undefined) return new ExpertDirSource(o.expertDir);
  if (o.ggufExperts !== undefined) return new GgufExpertSource(readGgufModel(o.ggufExperts));
  return new GgufExpertSource(file);
}

/**
 * The source with the layers the trunk runs: experts of multi-token-prediction
 * blocks after it (deepseek2's `nextn_predict_layers`) are never routed to, so
 * the pool neither sizes for them nor loads them.
 */
function trunkLayers(source: ExpertSource, nLayer: number): ExpertSource {
  if (source.layers.every((l) => l.layer < nLayer)) return source;
  return {
    layers: source.layers.filter((l) => l.layer < nLayer),
    expertParts: (layer, expert) => source.expertParts(layer, expert),
    residentBytes: source.residentBytes &&
      ((layer, expert) => source.residentBytes!(layer, expert)),
    willNeed: source.willNeed && ((layer, expert) => source.willNeed!(layer, expert)),
    close: () => source.close(),
    [Symbol.dispose]: () => source.close(),
  };
}

/** Checks that the expert source holds the experts the architecture plans, with the same shapes. */
function checkExpertSource(source: ExpertSource, plan: readonly TensorPlanEntry[]): void {
  const byName = new Map<string, { shape: readonly number[]; n: number }>();
  for (const l of source.layers) {
    for (const t of l.tensors) {
      // Here, not in the pool, so that the error names the file's tensor.
      if (t.sliceShape.length >= 2 && !isGpuWeightType(t.type.id)) {
        throw new UnsupportedWeightTypeError(t.name, t.type.id);
      }
      byName.set(t.name, { shape: t.sliceShape, n: l.nExpert });
    }
  }
  for (const e of plan) {
    const got = byName.get(e.name);
    const want = e.shape.slice(0, -1);
    const n = e.shape[e.shape.length - 1];
    if (!got) {
      if (e.optional) continue;
      throw new TensorPlanError(
        `the expert source has no ${e.name} (expected ${n} experts of ${JSON.stringify(want)})`,
      );
    }
    if (
      got.n !== n || got.shape.length !== want.length || got.shape.some((d, i) => d !== want[i])
    ) {
      throw new TensorPlanError(
        `expert tensor ${e.name}: the expert source has ${got.n} experts of ${
          JSON.stringify(got.shape)
        }, ` +
          `the model expects ${n} of ${JSON.stringify(want)} (experts from another model?)`,
      );
    }
  }
}

/**
 * Loads a GGUF model onto the GPU.
 *
 * ```ts ignore
 * const model = await loadModel({ model: "qwen3moe.gguf", cacheSizeGB: 1 });
 * const logits = await model.forward([1, 2, 3]);
 * const { tokens } = await model.generate([4, 5], { maxTokens: 8 });
 * model.close();
 * ```
 */
export function loadModel(o: LoadModelOptions): Promise<Model> {
  return Model.load(o);
}
