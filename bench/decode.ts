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
 * ```
 *
 * Prints one JSON object on stdout, and a one-line summary on stderr.
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import { fixtureModel, type FixtureOptions, type FixtureType } from "../dev/fixtures.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { loadModel, type Model } from "../src/model/model.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { readback, upload } from "../src/gpu/buffers.ts";
import { dispatch } from "../src/gpu/dispatch.ts";
import { type Op, STEP } from "../src/gpu/ops/op.ts";
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
  if (k === "attention") return "attention (scores, softmax, values)";
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
    ops.push(...t.attention[l]!, t.save[l]!, ...t.moe[l]!);
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
    const step = new Uint32Array(STEP.length);
    step[STEP.pos0] = pos;
    step[STEP.nTokens] = nTokens;
    step[STEP.nKv] = pos + nTokens;
    upload(gpu, s.step, step);
    const perOp: number[][] = ops.map(() => []);
    const whole: number[] = [];
    for (let r = 0; r < reps; r++) {
      const enc = gpu.device.createCommandEncoder();
      enc.clearBuffer(s.misses, 0, 16);
      for (const op of ops) {
        const wg = typeof op.workgroups === "function" ? op.workgroups(nTokens) : op.workgroups;
        dispatch(enc, op.kernel, op.bindings, wg, {
          label: op.label,
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
        dispatch(pass, op.kernel, op.bindings, wg, { label: op.label });
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
  for await (const step of model.generateSteps(prompt, { maxTokens: tokens + 1, window })) {
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
  const model = await loadModel({
    model: path,
    nCtx,
    maxBatch: o.maxBatch,
    cacheSizeGB: o.cacheSizeGB,
    gpu,
  });
  const ref = o.noReference ? undefined : loadReference().loadModel(path, { nCtx });
  try {
    const c = model.config;
    const prompt = benchPrompt(o.promptTokens, c.nVocab);
    const bytes = tokenWeightBytes(model.file.tensors, c.nExpertUsed);

    note(`decode: warming up`);
    await runOurs(model, prompt.slice(0, 8), 4);
    ref?.greedy(prompt.slice(0, 8), 4);

    const ours: EngineRun[] = [];
    const theirs: EngineRun[] = [];
    for (let r = 0; r < o.repeats; r++) {
      note(`decode: run ${r + 1}/${o.repeats}: od-moe`);
      ours.push(await runOurs(model, prompt, o.tokens));
      if (ref) {
        note(`decode: run ${r + 1}/${o.repeats}: llama.cpp`);
        // prefill = a greedy run that stops at the first token; decode = the rest of a full run
        const t0 = performance.now();
        ref.greedy(prompt, 1);
        const t1 = performance.now();
        const g = ref.greedy(prompt, o.tokens + 1);
        const t2 = performance.now();
        theirs.push({
          prefillMs: t1 - t0,
          decodeMs: Math.max(1e-3, t2 - t1 - (t1 - t0)),
          decoded: o.tokens,
          tokens: g.tokens,
        });
      }
    }

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
      llama_cpp: ref
        ? {
          threads: 1,
          prefill_tokens_per_s: refPrefill,
          decode_tokens_per_s: refDecode,
          decode_weight_GBps: refGBps,
          runs: theirs.map((x) => ({
            prefill_tokens_per_s: prompt.length / x.prefillMs * 1e3,
            decode_tokens_per_s: x.decoded / x.decodeMs * 1e3,
          })),
        }
        : null,
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
    return roundNumbers(report);
  } finally {
    ref?.close();
    model.close();
    gpu.destroy();
  }
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
    },
    strict: true,
  });
  const q = quick || Boolean(values.quick);
  const fixture = { ...(q ? DECODE_MODEL_QUICK : DECODE_MODEL) };
  if (values.type) fixture.type = values.type.toUpperCase() as FixtureType;
  return {
    model: values.model,
    fixture,
    tokens: intFlag("tokens", values.tokens, q ? 32 : 64),
    promptTokens: intFlag("prompt-tokens", values["prompt-tokens"], 64),
    cacheSizeGB: numFlag("cache-size-gb", values["cache-size-gb"], 4),
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
