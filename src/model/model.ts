/**
 * `loadModel`: a GGUF file → a model on the GPU that computes logits and
 * generates greedily, with one submit per batch and few syncs per token.
 *
 * @module
 */

import { type GgufModelFile, type GgufTensorInfo, readGgufModel } from "../gguf/reader.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import { acquireGpu, type Gpu } from "../gpu/device.ts";
import { createBuffer, readback, recordReadback, upload } from "../gpu/buffers.ts";
import { STEP } from "../gpu/ops/op.ts";
import { tensorName as tn, Tensors } from "../gguf/names.ts";
import { checkMoeConfig, type ModelConfig } from "./config.ts";
import { archSpec } from "./registry.ts";
import {
  checkTensorPlan,
  type GpuWeights,
  type TensorBytes,
  uploadPlannedTensors,
} from "./weights.ts";
import { type ExpertSource, MoeTransformer } from "./transformer.ts";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /** Path of the GGUF file (any shard of a split model). */
  model: string;
  /** Context length (KV cache positions); default min(4096, the model's). */
  nCtx?: number;
  /** Most prompt tokens per batch; default 64. */
  maxBatch?: number;
  /** A device to use; default a new one. */
  gpu?: Gpu;
  /**
   * Hyperparameters to use instead of the file's (like llama.cpp's
   * `--override-kv` or `--rope-freq-base`); shapes cannot change.
   */
  configOverride?: Partial<
    Pick<
      ModelConfig,
      "ropeFreqBase" | "ropeFreqScale" | "rmsEps" | "nExpertUsed" | "expertWeightsScale"
    >
  >;
}

/** Statistics of one generation. */
export interface GenerateStats {
  /** Prompt tokens processed. */
  promptTokens: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Prefill time, ms. */
  prefillMs: number;
  /** Decode time, ms. */
  decodeMs: number;
  /** GPU→CPU readbacks during decode, per generated token. */
  syncsPerToken: number;
  /** Submits during decode, per generated token. */
  submitsPerToken: number;
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

/** Options of {@linkcode Model.generate}. */
export interface GenerateOptions {
  /** Tokens to generate at most. */
  maxTokens: number;
  /** Token ids that end generation (included in the output). */
  stopTokens?: readonly number[];
  /** Tokens queued on the GPU before each readback; default 16 (no stop tokens: all). */
  window?: number;
  /** Also return the logits after the last prompt token (read in the same sync as the first token). */
  promptLogits?: boolean;
}

class MappedTensors implements TensorBytes {
  constructor(readonly files: MappedFile[]) {}
  bytes(t: GgufTensorInfo): Uint8Array {
    return this.files[t.fileIndex]!.view(t.fileOffset, t.nBytes);
  }
}

/** A loaded model. */
export class Model {
  /** Tokens in the KV cache. */
  nPast = 0;
  readonly #ring: GPUBuffer;
  readonly #ringSize: number;

  private constructor(
    readonly gpu: Gpu,
    readonly file: GgufModelFile,
    readonly config: ModelConfig,
    readonly transformer: MoeTransformer,
    readonly nCtx: number,
    readonly maxBatch: number,
    readonly ownsGpu: boolean,
    readonly weights: GpuWeights,
  ) {
    this.#ringSize = nCtx;
    this.#ring = createBuffer(gpu, { label: "sampled_ring", size: 4 * this.#ringSize });
  }

  /** Loads a model; see {@linkcode loadModel}. */
  static async load(o: LoadModelOptions): Promise<Model> {
    const file = readGgufModel(o.model);
    const spec = archSpec(file.architecture);
    const config: ModelConfig = { ...spec.readConfig(file.metadata), ...o.configOverride };
    if (o.configOverride) checkMoeConfig(config);
    const plan = checkTensorPlan(file, spec.tensorPlan(config));
    const nCtx = o.nCtx ?? Math.min(4096, config.nCtxTrain || 4096);
    const maxBatch = o.maxBatch ?? 64;
    const gpu = o.gpu ?? await acquireGpu();
    const mapped = file.files.map((f) => MappedFile.open(f.path));
    try {
      const source = new MappedTensors(mapped);
      const weights = uploadPlannedTensors(gpu, file, source, plan, ["base", "expert"]);
      const experts = residentExperts(gpu, config, weights);
      const transformer = await MoeTransformer.build(gpu, config, weights, experts, {
        nCtx,
        maxBatch,
      });
      return new Model(gpu, file, config, transformer, nCtx, maxBatch, !o.gpu, weights);
    } finally {
      for (const m of mapped) m.close();
    }
  }

  /** Forgets the context (the KV cache is overwritten from position 0). */
  reset(): void {
    this.nPast = 0;
  }

  #writeStep(pos0: number, nTokens: number): void {
    const s = new Uint32Array(STEP.length);
    s[STEP.pos0] = pos0;
    s[STEP.nTokens] = nTokens;
    s[STEP.nKv] = pos0 + nTokens;
    upload(this.gpu, this.transformer.state.step, s);
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

  /** Queues the batches of `tokens` (no sync). The last batch's argmax lands in the tokens buffer. */
  #queuePrompt(tokens: readonly number[]): void {
    for (let i = 0; i < tokens.length; i += this.maxBatch) {
      const chunk = tokens.slice(i, i + this.maxBatch);
      upload(this.gpu, this.transformer.state.tokens, new Uint32Array(chunk));
      this.#writeStep(this.nPast, chunk.length);
      const enc = this.gpu.device.createCommandEncoder();
      this.transformer.record(enc, chunk.length);
      this.gpu.submit(enc);
      this.nPast += chunk.length;
    }
  }

  /**
   * Appends `tokens` to the context and returns the logits after the last
   * one (f32 [nVocab]). One sync, however many batches.
   */
  async forward(tokens: readonly number[]): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("forward needs at least one token");
    this.#checkIds(tokens);
    this.#checkRoom(tokens.length);
    this.#queuePrompt(tokens);
    const [logits] = await readback(this.gpu, [this.transformer.state.logits]);
    return new Float32Array(logits!);
  }

  /**
   * Greedy generation after `prompt` (appended to the context). Tokens are
   * sampled on the GPU and fed back without a round trip; the CPU reads them
   * back once per `window` tokens to check stop tokens.
   */
  async generate(prompt: readonly number[], o: GenerateOptions): Promise<GenerateResult> {
    if (prompt.length === 0) throw new RangeError("generate needs a prompt of at least one token");
    if (!(o.maxTokens >= 1)) throw new RangeError(`maxTokens must be ≥ 1, got ${o.maxTokens}`);
    this.#checkIds(prompt);
    this.#checkRoom(prompt.length + o.maxTokens - 1);
    const s = this.transformer.state;
    const stop = new Set(o.stopTokens ?? []);
    const window = stop.size ? Math.max(1, o.window ?? 16) : o.maxTokens;
    const out: number[] = [];
    const readRing = async (from: number, to: number) => {
      const enc = this.gpu.device.createCommandEncoder();
      const pending = recordReadback(this.gpu, enc, [{
        buffer: this.#ring,
        offset: 4 * from,
        size: 4 * (to - from),
      }]);
      this.gpu.submit(enc);
      const [ids] = await pending.read();
      for (const id of new Uint32Array(ids!)) {
        out.push(id);
        if (stop.has(id)) return true;
      }
      return false;
    };

    // prefill: the last batch's argmax is the first generated token
    const t0 = performance.now();
    const startPos = this.nPast;
    this.#queuePrompt(prompt);
    const enc0 = this.gpu.device.createCommandEncoder();
    const first = recordReadback(
      this.gpu,
      enc0,
      o.promptLogits ? [s.tokens, s.logits] : [s.tokens],
    );
    this.gpu.submit(enc0);
    const [firstId, logitsBytes] = await first.read();
    const id0 = new Uint32Array(firstId!)[0]!;
    out.push(id0);
    let stopped = stop.has(id0);
    const promptLogits = logitsBytes ? new Float32Array(logitsBytes) : undefined;
    const prefillMs = performance.now() - t0;

    // decode: each step feeds the token sampled by the step before, on the GPU
    const before = this.gpu.stats.snapshot();
    let produced = 1;
    const enc1 = this.gpu.device.createCommandEncoder();
    enc1.copyBufferToBuffer(s.tokens, 0, this.#ring, 0, 4);
    this.gpu.submit(enc1);
    while (!stopped && produced < o.maxTokens) {
      const from = produced;
      while (produced < o.maxTokens && produced - from < window) {
        this.#writeStep(startPos + prompt.length + produced - 1, 1);
        const enc = this.gpu.device.createCommandEncoder();
        this.transformer.record(enc, 1);
        enc.copyBufferToBuffer(s.tokens, 0, this.#ring, 4 * produced, 4);
        this.gpu.submit(enc);
        produced++;
      }
      stopped = await readRing(from, produced);
    }
    // every generated token but the last has been fed into the context
    this.nPast = startPos + prompt.length + out.length - 1;
    const after = this.gpu.stats.since(before);
    const decoded = Math.max(1, out.length - 1);
    return {
      tokens: out,
      promptLogits,
      stats: {
        promptTokens: prompt.length,
        generatedTokens: out.length,
        prefillMs,
        decodeMs: performance.now() - t0 - prefillMs,
        syncsPerToken: after.syncs / decoded,
        submitsPerToken: after.submits / decoded,
      },
    };
  }

  /** Frees GPU memory (and the device if the model made it). */
  close(): void {
    this.transformer.destroy();
    this.weights.destroy();
    this.#ring.destroy();
    if (this.ownsGpu) this.gpu.destroy();
  }
}

/** Every expert resident: slot = expert id, the stacks are the GGUF tensors themselves. */
function residentExperts(gpu: Gpu, c: ModelConfig, w: GpuWeights): ExpertSource {
  const table = new Int32Array(c.nLayer * c.nExpert);
  for (let l = 0; l < c.nLayer; l++) {
    for (let e = 0; e < c.nExpert; e++) table[l * c.nExpert + e] = e;
  }
  const residency = createBuffer(gpu, { label: "residency", data: table });
  return {
    residency,
    stacks: (l) => ({
      gate: w.matrix(tn(Tensors.ffnGateExps, l)),
      up: w.matrix(tn(Tensors.ffnUpExps, l)),
      down: w.matrix(tn(Tensors.ffnDownExps, l)),
    }),
  };
}

/**
 * Loads a GGUF model onto the GPU.
 *
 * ```ts ignore
 * const model = await loadModel({ model: "qwen3moe.gguf" });
 * const logits = await model.forward([1, 2, 3]);
 * const { tokens } = await model.generate([4, 5], { maxTokens: 8 });
 * model.close();
 * ```
 */
export function loadModel(o: LoadModelOptions): Promise<Model> {
  return Model.load(o);
}
