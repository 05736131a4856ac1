/**
 * End-to-end speed on one model, against llama.cpp on the same file and
 * machine in the same run: prefill and decode tokens/s of od-moe and of
 * llama.cpp (CPU, one thread), their ratios, syncs and submits per token,
 * and the achieved weight GB/s (weight bytes one decoded token reads — base
 * weights plus the chosen experts — × tokens/s), with a raw memcpy of this
 * machine as the ceiling. Optionally a profile of one decode token and one
 * prefill batch by op family from GPU timestamps.
 *
 * The default model is generated (and cached in `.cache/models/`, about a
 * minute the first time): qwen3moe, 1024 wide, 8 layers, 16 heads (4 KV) of
 * 64, 32 experts of 512, top-4, Q4_K_M — large enough that compute, not
 * per-token overhead, dominates, small enough for a software adapter.
 * `--quick` takes a 512-wide, 4-layer, 16-expert top-2 model.
 *
 * ```sh
 * deno run -A bench/decode.ts [--model FILE.gguf] [--tokens 64] [--prompt-tokens 64]
 *   [--cache-size-gb 4] [--repeats 2] [--type Q4_K_M] [--no-profile] [--quick]
 *   [--preset NAME [--layers N]] [--llama-threads 1,2] [--budgets 0.25|none] [--out-dir bench/out]
 *   [--llama-build cpu|vulkan|cuda [--llama-gpu-layers N]]
 * deno task bench decode --preset qwen3-30b-a3b --layers 4 --type Q4_K_M --prompt-tokens 64
 * ```
 *
 * `--preset` benches a real model's shape (`dev/presets.ts`, generated and
 * cached like the default model) cut to `--layers N`, all experts resident
 * by default. llama.cpp runs on the CPU once per `--llama-threads` count
 * (the first is the reference of `ratios`); after the all-resident runs
 * od-moe decodes again at each `--budgets` fraction of the file's expert
 * bytes. The report also gives load time, process RSS (before llama.cpp
 * maps the file) and GPU expert bytes; a table and a bar chart go to
 * `<out-dir>/<name>.md` and `.svg`.
 *
 * Prints one JSON object on stdout, and a one-line summary on stderr.
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import { fixtureModel, type FixtureOptions, type FixtureType } from "../dev/fixtures.ts";
import { presetOptions, SHAPE_PRESET_NAMES } from "../dev/presets.ts";
import { isExpertTensor } from "../src/gguf/names.ts";
import { type LlamaBuild, loadReference } from "../dev/ref/llama_cpp.ts";
import { loadModel, type Model } from "../src/model/model.ts";
import { generateSteps } from "../src/generate/session.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { readback, upload } from "../src/gpu/buffers.ts";
import { dispatch } from "../src/gpu/dispatch.ts";
import { type Op, stepWords } from "../src/gpu/ops/op.ts";
import { GpuTimer } from "../src/gpu/timer.ts";
import {
  benchPrompt,
  firstDivergence,
  intFlag,
  median,
  memcpyGBps,
  note,
  numFlag,
  roundNumbers,
  tokenWeightBytes,
} from "./_util.ts";

/** The generated model of a full run. */
export const DECODE_MODEL: FixtureOptions = {
  arch: "qwen3moe",
  shape: "b",
  type: "Q4_K_M",
  nEmbd: 1024,
  nLayer: 8,
  nHead: 16,
  nHeadKv: 4,
  headDim: 64,
  nFfExp: 512,
  nExpert: 32,
  nExpertUsed: 4,
};

/** The generated model of a `--quick` run. */
export const DECODE_MODEL_QUICK: FixtureOptions = {
  arch: "qwen3moe",
  shape: "b",
  type: "Q4_K_M",
  nEmbd: 512,
  nLayer: 4,
  nHead: 8,
  nHeadKv: 2,
  headDim: 64,
  nFfExp: 512,
  nExpert: 16,
  nExpertUsed: 2,
};

/** Options of {@linkcode runDecodeBench}. */
export interface DecodeBenchOptions {
  /** A GGUF to bench; default a generated model ({@linkcode DECODE_MODEL}). */
  model?: string;
  /** The generated model's definition when `model` is absent. */
  fixture?: FixtureOptions;
  /** Prompt tokens (prefill). */
  promptTokens: number;
  /** Decoded tokens timed (after the first generated one). */
  tokens: number;
  /** Expert cache budget, GiB. */
  cacheSizeGB: number;
  /** Timed runs of each engine (interleaved); medians are reported. */
  repeats: number;
  /** Prompt tokens per prefill batch (od-moe). */
  maxBatch: number;
  /** Profile one decode token and one prefill batch by op family. */
  profile: boolean;
  /** Skip llama.cpp (no reference: ratios are null). */
  noReference?: boolean;
  /** llama.cpp CPU thread counts, each reported (default `[1, 2]`); the first is the ratios' reference. */
  llamaThreads?: number[];
  /**
   * llama.cpp's build (default `cpu`); a GPU build (`vulkan`, `cuda`) runs
   * with `llamaGpuLayers` layers offloaded (default all) on its GPU.
   */
  llamaBuild?: LlamaBuild;
  /** Layers llama.cpp's GPU build offloads (default 999: all, and the output head). */
  llamaGpuLayers?: number;
  /**
   * Expert budgets below 100% to decode at after the all-resident runs,
   * as fractions of the file's expert bytes (default `[0.25]`).
   */
  budgets?: number[];
  /** Where the table and chart go (default `bench/out`); the name is from the preset or file. */
  outDir?: string;
  /** A name for the outputs (default: the preset's, else `decode`). */
  name?: string;
}

/** Timings of one engine. */
interface EngineRun {
  prefillMs: number;
  decodeMs: number;
  decoded: number;
  tokens: number[];
  syncsPerToken?: number;
  submitsPerToken?: number;
  stalls?: number;
  cpuUtilisation?: number;
}

/** GPU time of one op family. */
interface FamilyTime {
  family: string;
  ms: number;
  fraction: number;
  dispatches: number;
}

/** Which op family a prepared op belongs to, from its shader and label. */
export function opFamily(op: Op): string {
  const k = op.kernel.name;
  const l = op.label;
  if (k === "matmul" || k === "matmul_route") {
    if (l.includes("_exps")) return "matmul: routed experts";
    if (l.includes("shexp")) return "matmul: shared expert";
    if (l.includes("ffn_gate_inp")) return "matmul: router";
    if (l.startsWith("output")) return "matmul: output head";
    return "matmul: attention q/k/v/o";
  }
  if (k === "attention" || k === "attention_vec") return "attention (scores, softmax, values)";
  if (k === "router") return "router top-k";
  if (k === "norm") return "rms norms";
  if (k === "rope") return "rope";
  if (k === "kv") return "kv store";
  if (k === "get_rows") return "embedding";
  if (k === "sample") return "sampling";
  return "elementwise (swiglu, combine, copies)";
}

function workgroupCount(op: Op, nTokens: number): number {
  const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
  return typeof wg === "number" ? wg : wg[0] * (wg[1] ?? 1) * (wg[2] ?? 1);
}

/** Every op of one forward pass of `nTokens` tokens, in record order. */
function forwardOps(model: Model): Op[] {
  const t = model.transformer;
  const ops: Op[] = [...t.embed];
  for (let l = 0; l < model.config.nLayer; l++) {
    // as a batch of one sequence records them (not the token-by-token attention of several)
    ops.push(...t.attention[l]!.filter((op) => op.sequences !== "many"), t.save[l]!, ...t.moe[l]!);
  }
  ops.push(...t.head, ...t.argmax);
  return ops;
}

/**
 * GPU time of each op of a forward pass of `nTokens` tokens at position
 * `pos` (each op in its own timed pass), and, with `onePass`, of the same
 * ops in one pass as the engine records them; medians over `reps`. Null
 * when the device has no timestamp queries. Overwrites the KV cache at
 * `pos…`: profile after the measured runs.
 */
export async function profileForward(
  model: Model,
  pos: number,
  nTokens: number,
  reps: number,
  onePass = true,
): Promise<Record<string, unknown> | null> {
  const gpu = model.gpu;
  const s = model.transformer.state;
  const ops = forwardOps(model).filter((op) => workgroupCount(op, nTokens) > 0);
  const timer = new GpuTimer(gpu, ops.length + 1);
  if (!timer.enabled) return null;
  try {
    upload(gpu, s.step, stepWords(pos, nTokens));
    const perOp: number[][] = ops.map(() => []);
    const whole: number[] = [];
    for (let r = 0; r < reps; r++) {
      const enc = gpu.device.createCommandEncoder();
      enc.clearBuffer(s.misses, 0, 16);
      for (const op of ops) {
        const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
        dispatch(enc, op.kernel, op.bindings, wg, {
          label: op.label,
          indirect: op.indirect,
          timestampWrites: timer.pass(op.label),
        });
      }
      timer.resolve(enc);
      gpu.submit(enc);
      (await timer.read()).forEach((t, i) => perOp[i]!.push(t.ms));
      if (!onePass) continue;
      // the same ops in one pass, as the engine records them
      const enc2 = gpu.device.createCommandEncoder();
      enc2.clearBuffer(s.misses, 0, 16);
      const pass = enc2.beginComputePass({ label: "whole", timestampWrites: timer.pass("whole") });
      for (const op of ops) {
        const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
        dispatch(pass, op.kernel, op.bindings, wg, { label: op.label, indirect: op.indirect });
      }
      pass.end();
      timer.resolve(enc2);
      gpu.submit(enc2);
      whole.push((await timer.read())[0]!.ms);
    }
    const opMs = perOp.map(median);
    const sum = opMs.reduce((a, b) => a + b, 0);
    const fams = new Map<string, { ms: number; n: number }>();
    ops.forEach((op, i) => {
      const f = opFamily(op);
      const e = fams.get(f) ?? { ms: 0, n: 0 };
      e.ms += opMs[i]!;
      e.n++;
      fams.set(f, e);
    });
    const families: FamilyTime[] = [...fams].map(([family, e]) => ({
      family,
      ms: e.ms,
      fraction: e.ms / sum,
      dispatches: e.n,
    })).sort((a, b) => b.ms - a.ms);
    const matmulMs = families.filter((f) => f.family.startsWith("matmul")).reduce(
      (a, f) => a + f.ms,
      0,
    );
    const top = ops.map((op, i) => ({ label: op.label, ms: opMs[i]! }))
      .sort((a, b) => b.ms - a.ms).slice(0, 8);
    return {
      tokens: nTokens,
      position: pos,
      dispatches: ops.length,
      gpu_ms_one_pass: onePass ? median(whole) : null,
      gpu_ms_sum_of_ops: sum,
      matmul_fraction: matmulMs / sum,
      families,
      slowest_ops: top,
    };
  } finally {
    timer.destroy();
  }
}

/** Median ms of an empty 4-byte readback: the cost of one sync. */
async function syncMs(gpu: Gpu): Promise<number> {
  const b = gpu.device.createBuffer({
    size: 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
  });
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    await readback(gpu, [b]);
    times.push(performance.now() - t0);
  }
  b.destroy();
  return median(times);
}

/** Median CPU ms to record (not submit) one decode token's command buffer. */
function encodeMs(model: Model): number {
  const times: number[] = [];
  for (let i = 0; i < 21; i++) {
    const t0 = performance.now();
    const enc = model.gpu.device.createCommandEncoder();
    model.transformer.record(enc, 1, { head: true });
    enc.finish();
    times.push(performance.now() - t0);
  }
  return median(times);
}

/**
 * One od-moe generation through `generateSteps`, timed like
 * `Model.generate` (prefill = to the first token) and with the process's
 * CPU time during decode: on a software adapter the "GPU" is these cores.
 */
async function runOurs(
  model: Model,
  prompt: number[],
  tokens: number,
  window?: number,
): Promise<EngineRun> {
  model.reset();
  const gpu = model.gpu;
  const stalls0 = model.stalls;
  const t0 = performance.now();
  let t1 = t0;
  let cpu1 = process.cpuUsage();
  let before = gpu.stats.snapshot();
  const out: number[] = [];
  for await (const step of generateSteps(model, prompt, { maxTokens: tokens + 1, window })) {
    if (out.length === 0) {
      t1 = performance.now();
      cpu1 = process.cpuUsage();
      before = gpu.stats.snapshot();
    }
    out.push(...step);
  }
  const t2 = performance.now();
  const cpu = process.cpuUsage(cpu1);
  const d = gpu.stats.since(before);
  const decoded = Math.max(1, out.length - 1);
  return {
    prefillMs: t1 - t0,
    decodeMs: t2 - t1,
    decoded,
    tokens: out,
    syncsPerToken: d.syncs / decoded,
    submitsPerToken: d.submits / decoded,
    stalls: model.stalls - stalls0,
    cpuUtilisation: (cpu.user + cpu.system) / 1e3 / (t2 - t1),
  };
}

/**
 * Runs the benchmark and returns its JSON-ready report. The two engines'
 * runs are interleaved (ours, llama.cpp, ours, …) so that the machine's
 * background load hits both alike; each engine is warmed up first.
 */
export async function runDecodeBench(o: DecodeBenchOptions): Promise<Record<string, unknown>> {
  const fixture = o.fixture ?? DECODE_MODEL;
  if (!o.model) note(`decode: generating or reusing the model ${JSON.stringify(fixture)}`);
  const path = o.model ?? await fixtureModel(fixture);
  const load0 = Deno.loadavg()[0];
  const memcpy = memcpyGBps();
  const gpu = await acquireGpu();
  const nCtx = o.promptTokens + o.tokens + 16;
  const rss0 = process.memoryUsage().rss;
  const loadT0 = performance.now();
  const model = await loadModel({
    model: path,
    nCtx,
    maxBatch: o.maxBatch,
    cacheSizeGB: o.cacheSizeGB,
    gpu,
  });
  const loadMs = performance.now() - loadT0;
  const threads = o.llamaThreads ?? [1, 2];
  const build = o.llamaBuild ?? "cpu";
  const nGpuLayers = build === "cpu" ? 0 : o.llamaGpuLayers ?? 999;
  const refs = o.noReference
    ? []
    : threads.map((n) => loadReference(build).loadModel(path, { nCtx, nThreads: n, nGpuLayers }));
  const ref = refs[0];
  let rssAfterOurs = 0;
  const budgetRuns: Record<string, unknown>[] = [];
  try {
    const c = model.config;
    const prompt = benchPrompt(o.promptTokens, c.nVocab);
    const bytes = tokenWeightBytes(model.file.tensors, c.nExpertUsed);

    note(`decode: warming up`);
    // a whole prompt batch: a CPU adapter compiles a kernel at its first dispatch, and the
    // kernels of a full batch (route tiles) differ from a short one's
    await runOurs(model, prompt.slice(0, Math.max(8, Math.min(o.maxBatch, prompt.length))), 4);
    // od-moe's resident memory before llama.cpp touches its mapping of the same file
    rssAfterOurs = process.memoryUsage().rss;
    for (const r of refs) r.greedy(prompt.slice(0, 8), 4);

    const ours: EngineRun[] = [];
    const theirsAll: EngineRun[][] = refs.map(() => []);
    for (let r = 0; r < o.repeats; r++) {
      note(`decode: run ${r + 1}/${o.repeats}: od-moe`);
      ours.push(await runOurs(model, prompt, o.tokens));
      for (const [i, rf] of refs.entries()) {
        note(`decode: run ${r + 1}/${o.repeats}: llama.cpp, ${threads[i]} thread(s)`);
        // prefill = the prompt's evaluation to its logits; decode = the steps after it
        const g = rf.greedy(prompt, o.tokens + 1);
        theirsAll[i]!.push({
          prefillMs: g.prefillMs,
          decodeMs: g.decodeMs,
          decoded: o.tokens,
          tokens: g.tokens,
        });
      }
    }
    const theirs = theirsAll[0] ?? [];

    const rate = (runs: EngineRun[], k: "prefill" | "decode") =>
      runs.map((x) =>
        k === "prefill" ? prompt.length / x.prefillMs * 1e3 : x.decoded / x.decodeMs * 1e3
      );
    const ourPrefill = median(rate(ours, "prefill"));
    const ourDecode = median(rate(ours, "decode"));
    const refPrefill = ref ? median(rate(theirs, "prefill")) : NaN;
    const refDecode = ref ? median(rate(theirs, "decode")) : NaN;
    const ourGBps = bytes.total * ourDecode / 1e9;
    const refGBps = bytes.total * refDecode / 1e9;
    const expert = model.expertStats.snapshot();

    let profile: Record<string, unknown> | undefined;
    if (o.profile) {
      note(`decode: profiling one decode token and one prefill batch`);
      const decodePos = prompt.length + (o.tokens >> 1);
      const wallMs = median(ours.map((x) => x.decodeMs / x.decoded));
      const decodeProfile = await profileForward(model, decodePos, 1, 5);
      // one repetition, ops apart only: a prefill batch takes seconds on a software adapter
      const prefillProfile = await profileForward(
        model,
        0,
        Math.min(o.maxBatch, prompt.length),
        1,
        false,
      );
      const sync = await syncMs(gpu);
      const syncsPerToken = median(ours.map((x) => x.syncsPerToken ?? 0));
      const encode = encodeMs(model);
      // tokens queued per readback: more in flight should mean fewer syncs and more tokens/s
      const windows: Record<string, unknown>[] = [];
      for (const w of [1, 4, 16]) {
        const run = await runOurs(model, prompt.slice(0, 8), Math.min(o.tokens, 32), w);
        windows.push({
          window: w,
          decode_tokens_per_s: run.decoded / run.decodeMs * 1e3,
          syncs_per_token: run.syncsPerToken,
          cpu_utilisation: run.cpuUtilisation,
        });
      }
      const gpuMs = (decodeProfile?.gpu_ms_one_pass as number | undefined) ?? NaN;
      profile = {
        note: "GPU ms from timestamp queries; each op timed in its own pass (sum_of_ops) and " +
          "all in one pass (one_pass, as the engine records a token); the wall-clock split " +
          "divides the measured decode time per token",
        decode_token: decodeProfile,
        prefill_batch: prefillProfile,
        window_sweep: windows,
        decode_wall_split_ms: {
          wall_per_token: wallMs,
          gpu_one_pass: gpuMs,
          encode_cpu: encode,
          sync_each: sync,
          sync_amortised: sync * syncsPerToken,
          other: wallMs - gpuMs - sync * syncsPerToken,
        },
      };
    }

    const expertFileBytes = model.file.tensors.filter((t) => isExpertTensor(t.name))
      .reduce((a, t) => a + t.nBytes, 0);
    const baseFileBytes = model.file.tensors.filter((t) => !isExpertTensor(t.name))
      .reduce((a, t) => a + t.nBytes, 0);
    const residentRun = {
      budget_fraction: 1,
      experts_all_resident: model.pool.allResident,
      expert_gpu_bytes: model.pool.allocatedBytes,
      decode_tokens_per_s: ourDecode,
      rss_bytes: rssAfterOurs,
    };
    for (const fraction of o.budgets ?? [0.25]) {
      note(`decode: od-moe at a ${fraction * 100}% expert budget`);
      const m = await loadModel({
        model: path,
        nCtx,
        maxBatch: o.maxBatch,
        cacheSizeGB: fraction * expertFileBytes / 2 ** 30,
        gpu,
      });
      try {
        await runOurs(m, prompt.slice(0, 8), 4);
        const run = await runOurs(m, prompt, o.tokens);
        const x = m.expertStats.snapshot();
        budgetRuns.push({
          budget_fraction: fraction,
          budget_bytes: m.pool.budgetBytes,
          experts_all_resident: m.pool.allResident,
          expert_gpu_peak_bytes: x.peakBytes,
          expert_gpu_bytes: m.pool.allocatedBytes,
          decode_tokens_per_s: run.decoded / run.decodeMs * 1e3,
          prefill_tokens_per_s: prompt.length / run.prefillMs * 1e3,
          expert_hit_rate: x.hitRate,
          stalls: run.stalls,
          tokens_same_as_resident: firstDivergence(run.tokens, ours[0]!.tokens) === null,
          rss_bytes: process.memoryUsage().rss,
        });
      } finally {
        m.close();
      }
    }

    const firstDiff = ref ? firstDivergence(ours[0]!.tokens, theirs[0]!.tokens) : null;
    const tokensStable = ours.every((x) => firstDivergence(x.tokens, ours[0]!.tokens) === null);
    const report = {
      bench: "decode",
      device: gpu.describe(),
      machine: {
        cores: navigator.hardwareConcurrency,
        load_average_1min: { start: load0, end: Deno.loadavg()[0] },
      },
      model: {
        path,
        generated: o.model ? null : fixture,
        architecture: c.arch,
        n_embd: c.nEmbd,
        n_layer: c.nLayer,
        n_expert: c.nExpert,
        n_expert_used: c.nExpertUsed,
        n_ff_exp: c.nFfExp,
        n_vocab: c.nVocab,
        file_bytes: (await Deno.stat(path)).size,
      },
      prompt_tokens: prompt.length,
      decode_tokens: o.tokens,
      repeats: o.repeats,
      cache_size_gb: o.cacheSizeGB,
      experts_all_resident: model.pool.allResident,
      load_ms: loadMs,
      memory: {
        rss_before_load_bytes: rss0,
        rss_after_load_and_warmup_bytes: rssAfterOurs,
        file_base_bytes: baseFileBytes,
        file_expert_bytes: expertFileBytes,
        expert_gpu_bytes: model.pool.allocatedBytes,
        note: "RSS of this process with od-moe loaded and warmed up, before llama.cpp touched " +
          "the file; GPU bytes are the expert pool's allocation (base weights are on the GPU " +
          "besides, about file_base_bytes)",
      },
      budgets: [residentRun, ...budgetRuns],
      weight_bytes_per_token: {
        base: bytes.base,
        experts: bytes.experts,
        total: bytes.total,
      },
      od_moe: {
        prefill_tokens_per_s: ourPrefill,
        decode_tokens_per_s: ourDecode,
        decode_weight_GBps: ourGBps,
        syncs_per_token: median(ours.map((x) => x.syncsPerToken ?? 0)),
        submits_per_token: median(ours.map((x) => x.submitsPerToken ?? 0)),
        stalls: ours.map((x) => x.stalls ?? 0),
        decode_cpu_utilisation: median(ours.map((x) => x.cpuUtilisation ?? NaN)),
        expert_hit_rate: expert.hitRate,
        runs: ours.map((x) => ({
          prefill_tokens_per_s: prompt.length / x.prefillMs * 1e3,
          decode_tokens_per_s: x.decoded / x.decodeMs * 1e3,
        })),
      },
      llama_cpp_build: ref
        ? { build, gpu_layers: nGpuLayers, devices: loadReference(build).devices }
        : null,
      llama_cpp: ref
        ? {
          build,
          threads: threads[0],
          prefill_tokens_per_s: refPrefill,
          decode_tokens_per_s: refDecode,
          decode_weight_GBps: refGBps,
          runs: theirs.map((x) => ({
            prefill_tokens_per_s: prompt.length / x.prefillMs * 1e3,
            decode_tokens_per_s: x.decoded / x.decodeMs * 1e3,
          })),
        }
        : null,
      llama_cpp_by_threads: theirsAll.map((runs, i) => {
        const p = median(rate(runs, "prefill"));
        const d = median(rate(runs, "decode"));
        return {
          build,
          threads: threads[i],
          prefill_tokens_per_s: p,
          decode_tokens_per_s: d,
          decode_weight_GBps: bytes.total * d / 1e9,
          od_moe_prefill_ratio: ourPrefill / p,
          od_moe_decode_ratio: ourDecode / d,
        };
      }),
      ratios: {
        prefill_vs_llama_cpp: ourPrefill / refPrefill,
        decode_vs_llama_cpp: ourDecode / refDecode,
        od_moe_weight_GBps_vs_memcpy: ourGBps / memcpy,
        llama_cpp_weight_GBps_vs_memcpy: refGBps / memcpy,
      },
      memcpy_GBps: memcpy,
      tokens: {
        od_moe_runs_identical: tokensStable,
        first_divergence_from_llama_cpp: firstDiff,
        note: "llama.cpp on the quantised file rounds activations (PARITY.md, native " +
          "reference), so greedy tokens may part after a few steps; speed is unaffected",
      },
      gpu_errors: gpu.uncapturedErrors.length,
      profile,
    };
    const rounded = roundNumbers(report);
    await writeDecodeOutputs(rounded, o.outDir ?? "bench/out", o.name ?? "decode");
    return rounded;
  } finally {
    for (const r of refs) r.close();
    model.close();
    gpu.destroy();
  }
}

interface Bar {
  label: string;
  prefill: number | null;
  decode: number | null;
}

/**
 * Writes `<dir>/<name>.md` (a table of the report's main figures) and
 * `<dir>/<name>.svg` (prefill and decode tokens/s of each engine as bars).
 */
export async function writeDecodeOutputs(
  r: Record<string, unknown>,
  dir: string,
  name: string,
): Promise<void> {
  type Row = Record<string, number | boolean | null | undefined>;
  const g = r as {
    device: string;
    model: Row & { path: string; architecture: string };
    prompt_tokens: number;
    decode_tokens: number;
    load_ms: number;
    memcpy_GBps: number;
    memory: Row;
    weight_bytes_per_token: Row;
    od_moe: Row;
    llama_cpp_by_threads: Row[];
    budgets: Row[];
    profile?: {
      decode_token?: {
        families?: { family: string; ms: number; fraction: number; dispatches: number }[];
      } | null;
    };
  };
  const f = (x: unknown, d = 3) =>
    typeof x === "number"
      ? String(Number(x.toPrecision(d)))
      : x === null || x === undefined
      ? "–"
      : String(x);
  const mb = (x: unknown) => typeof x === "number" ? `${(x / 2 ** 20).toFixed(0)} MiB` : "–";
  const bars: Bar[] = [
    {
      label: "od-moe, all experts resident",
      prefill: g.od_moe.prefill_tokens_per_s as number,
      decode: g.od_moe.decode_tokens_per_s as number,
    },
    ...g.budgets.filter((b) => b.budget_fraction !== 1).map((b) => ({
      label: `od-moe, ${f((b.budget_fraction as number) * 100)}% expert budget`,
      prefill: b.prefill_tokens_per_s as number,
      decode: b.decode_tokens_per_s as number,
    })),
    ...g.llama_cpp_by_threads.map((l) => ({
      label: `llama.cpp ${
        (l.build as unknown) === "cpu" || l.build === undefined ? "CPU" : String(l.build)
      }, ${l.threads} thread${l.threads === 1 ? "" : "s"}`,
      prefill: l.prefill_tokens_per_s as number,
      decode: l.decode_tokens_per_s as number,
    })),
  ];
  const lines = [
    `# decode bench: ${name}`,
    "",
    `${g.model.architecture}, ${g.model.n_embd} wide, ${g.model.n_layer} layers, ` +
    `${g.model.n_expert_used}/${g.model.n_expert} experts of ${g.model.n_ff_exp}, vocab ${g.model.n_vocab}, ` +
    `file ${
      mb(g.model.file_bytes)
    }; ${g.prompt_tokens}-token prompt, ${g.decode_tokens} decoded tokens; ${g.device}`,
    "",
    "| engine | prefill tok/s | decode tok/s | decode weight GB/s | vs memcpy |",
    "|---|---|---|---|---|",
    ...bars.map((b) => {
      const gbps = b.decode === null
        ? null
        : (g.weight_bytes_per_token.total as number) * b.decode / 1e9;
      return `| ${b.label} | ${f(b.prefill)} | ${f(b.decode)} | ${f(gbps)} | ${
        f(gbps === null ? null : gbps / g.memcpy_GBps)
      } |`;
    }),
    "",
    "| od-moe vs llama.cpp | prefill | decode |",
    "|---|---|---|",
    ...g.llama_cpp_by_threads.map((l) =>
      `| ${l.threads} thread(s) | ${f(l.od_moe_prefill_ratio)}× | ${f(l.od_moe_decode_ratio)}× |`
    ),
    "",
    `Weight bytes per decoded token ${mb(g.weight_bytes_per_token.total)} ` +
    `(base ${mb(g.weight_bytes_per_token.base)}, experts ${
      mb(g.weight_bytes_per_token.experts)
    }); ` +
    `memcpy ${f(g.memcpy_GBps)} GB/s. Load ${f(g.load_ms / 1e3)} s. ` +
    `RSS ${mb(g.memory.rss_after_load_and_warmup_bytes)} (before load ${
      mb(g.memory.rss_before_load_bytes)
    }; ` +
    `file base weights ${mb(g.memory.file_base_bytes)}, experts ${
      mb(g.memory.file_expert_bytes)
    }); ` +
    `GPU expert pool ${mb(g.memory.expert_gpu_bytes)}.`,
    "",
    "| expert budget | all resident | GPU expert bytes (peak) | hit rate | decode tok/s | RSS |",
    "|---|---|---|---|---|---|",
    ...g.budgets.map((b) =>
      `| ${f((b.budget_fraction as number) * 100)}% | ${b.experts_all_resident} | ${
        mb(b.expert_gpu_peak_bytes ?? b.expert_gpu_bytes)
      } | ${f(b.expert_hit_rate ?? 1)} | ${f(b.decode_tokens_per_s)} | ${mb(b.rss_bytes)} |`
    ),
  ];
  const fams = g.profile?.decode_token?.families;
  if (fams) {
    lines.push(
      "",
      "| decode token, op family | GPU ms | share | dispatches |",
      "|---|---|---|---|",
      ...fams.map((x) =>
        `| ${x.family} | ${f(x.ms)} | ${(x.fraction * 100).toFixed(1)}% | ${x.dispatches} |`
      ),
    );
  }
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/${name}.md`, lines.join("\n") + "\n");
  await Deno.writeTextFile(`${dir}/${name}.svg`, barChartSvg(name, bars));
}

/** Two groups of horizontal bars (prefill, decode tokens/s), one bar per engine, log scale. */
function barChartSvg(title: string, bars: Bar[]): string {
  const W = 760, rowH = 22, left = 250, right = 90;
  const groups = [["prefill tok/s", "prefill"], ["decode tok/s", "decode"]] as const;
  const H = 60 + groups.length * (bars.length * rowH + 36);
  const vals = bars.flatMap((b) => [b.prefill, b.decode]).filter((v): v is number =>
    v !== null && v > 0
  );
  const lo = 10 ** Math.floor(Math.log10(Math.min(...vals)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...vals)));
  const x = (v: number) =>
    Math.round(10 * (left + (Math.log10(v / lo) / Math.log10(hi / lo)) * (W - left - right))) / 10;
  const colors = ["#1f77b4", "#6baed6", "#d62728", "#ff9896", "#2ca02c", "#98df8a"];
  const esc = (t: string) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${
      esc(title)
    }: tokens/s (log scale)</text>`,
  ];
  let y = 46;
  for (const [head, key] of groups) {
    out.push(`<text x="10" y="${y}" font-weight="bold">${head}</text>`);
    y += 8;
    bars.forEach((b, i) => {
      const v = b[key];
      out.push(`<text x="${left - 6}" y="${y + 15}" text-anchor="end">${esc(b.label)}</text>`);
      if (v !== null && v > 0) {
        out.push(
          `<rect x="${left}" y="${y + 3}" width="${Math.max(1, x(v) - left)}" height="${
            rowH - 6
          }" fill="${colors[i % colors.length]}"/>`,
          `<text x="${x(v) + 4}" y="${y + 15}">${Number(v.toPrecision(3))}</text>`,
        );
      }
      y += rowH;
    });
    y += 28;
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** One line for a human: the figures that matter. */
export function decodeSummary(r: Record<string, unknown>): string {
  const g = r as {
    od_moe: { prefill_tokens_per_s: number; decode_tokens_per_s: number; syncs_per_token: number };
    llama_cpp: { prefill_tokens_per_s: number; decode_tokens_per_s: number } | null;
    ratios: { prefill_vs_llama_cpp: number | null; decode_vs_llama_cpp: number | null };
    od_moe_weight?: number;
  };
  const w = (r as { od_moe: { decode_weight_GBps: number } }).od_moe.decode_weight_GBps;
  const ref = g.llama_cpp
    ? ` | llama.cpp prefill ${g.llama_cpp.prefill_tokens_per_s} t/s, decode ${g.llama_cpp.decode_tokens_per_s} t/s` +
      ` | ratio prefill ${g.ratios.prefill_vs_llama_cpp}, decode ${g.ratios.decode_vs_llama_cpp}`
    : "";
  return `decode: od-moe prefill ${g.od_moe.prefill_tokens_per_s} t/s, decode ` +
    `${g.od_moe.decode_tokens_per_s} t/s (${w} GB/s of weights, ` +
    `${g.od_moe.syncs_per_token} syncs/token)${ref}`;
}

/** Options from command-line flags (shared with `bench/main.ts`). */
export function decodeOptions(args: string[], quick = false): DecodeBenchOptions {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      tokens: { type: "string" },
      "prompt-tokens": { type: "string" },
      "cache-size-gb": { type: "string" },
      repeats: { type: "string" },
      "batch-size": { type: "string" },
      type: { type: "string" },
      "no-profile": { type: "boolean" },
      "no-reference": { type: "boolean" },
      quick: { type: "boolean" },
      preset: { type: "string" },
      layers: { type: "string" },
      "llama-threads": { type: "string" },
      "llama-build": { type: "string" },
      "llama-gpu-layers": { type: "string" },
      budgets: { type: "string" },
      "out-dir": { type: "string" },
    },
    strict: true,
  });
  const q = quick || Boolean(values.quick);
  if (values.layers !== undefined && values.preset === undefined) {
    throw new Error(`decode: --layers goes with --preset (${SHAPE_PRESET_NAMES.join(", ")})`);
  }
  const fixture = values.preset !== undefined
    ? {
      ...presetOptions(
        values.preset,
        values.layers === undefined ? undefined : intFlag("layers", values.layers, 1),
      ),
      type: "Q4_K_M" as FixtureType,
    }
    : { ...(q ? DECODE_MODEL_QUICK : DECODE_MODEL) };
  if (values.type) fixture.type = values.type.toUpperCase() as FixtureType;
  const list = (name: string, v: string | undefined, def: number[]) =>
    v === undefined ? def : v.split(",").map((x) => {
      const n = Number(x);
      if (!(n > 0)) throw new Error(`decode: --${name} takes positive numbers, got ${v}`);
      return n;
    });
  const name = values.preset !== undefined
    ? `decode-${values.preset}-${fixture.nLayer}L-${fixture.type}`
    : values.model !== undefined
    ? `decode-${values.model.replace(/^.*\//, "").replace(/\.gguf$/, "")}`
    : "decode";
  const build = values["llama-build"] ?? "cpu";
  if (build !== "cpu" && build !== "vulkan" && build !== "cuda") {
    throw new Error(`decode: --llama-build takes cpu, vulkan or cuda, got ${build}`);
  }
  return {
    llamaThreads: list("llama-threads", values["llama-threads"], [1, 2]),
    llamaBuild: build,
    llamaGpuLayers: values["llama-gpu-layers"] === undefined
      ? undefined
      : intFlag("llama-gpu-layers", values["llama-gpu-layers"], 0, 0),
    budgets: values.budgets === "none" ? [] : list("budgets", values.budgets, [0.25]),
    outDir: values["out-dir"],
    name,
    model: values.model,
    fixture,
    tokens: intFlag("tokens", values.tokens, q ? 32 : 64),
    promptTokens: intFlag("prompt-tokens", values["prompt-tokens"], 64),
    // a preset's experts may pass 4 GiB: by default its first runs hold every expert
    cacheSizeGB: numFlag("cache-size-gb", values["cache-size-gb"], values.preset ? 256 : 4),
    repeats: intFlag("repeats", values.repeats, 2),
    maxBatch: intFlag("batch-size", values["batch-size"], 64),
    profile: !values["no-profile"],
    noReference: Boolean(values["no-reference"]),
  };
}

if (import.meta.main) {
  const report = await runDecodeBench(decodeOptions(Deno.args));
  console.log(JSON.stringify(report, null, 2));
  note(decodeSummary(report));
}
