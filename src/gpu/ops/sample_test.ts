import assert from "node:assert/strict";
import type { Gpu } from "../device.ts";
import { createBuffer, readback } from "../buffers.ts";
import { argmax, makeRng, randomArray } from "./cpu_ref.ts";
import { recordOps, STEP } from "./op.ts";
import { type GpuSampler, prepareArgmax, prepareSampler, type SamplerParams } from "./sample.ts";
import { CpuSampler } from "../../generate/sampler_cpu.ts";
import { gpuTest } from "../../../dev/gpu.ts";

gpuTest({
  name: "sample: argmax of the first, the last or every row; ties → first index; NaN never wins",
  async fn(g) {
    const rng = makeRng(13);
    const T = 4, n = 1001, stride = 1003;
    const logits = randomArray(T * stride, rng, 5);
    // Row 0: a tie between two maxima and a NaN. Row 1: the maximum in the last element.
    logits[17] = 9;
    logits[700] = 9;
    logits[3] = NaN;
    logits[stride + n - 1] = 50;
    logits[2 * stride + 5] = 7;
    const rows = Array.from({ length: T }, (_, t) => logits.subarray(t * stride, t * stride + n));
    const lb = createBuffer(g, { label: "logits", data: logits });
    const tokens = createBuffer(g, { label: "tokens", size: 8 * 4 });
    const maxes = createBuffer(g, { label: "max", size: 8 * 4 });
    const step = new Uint32Array(STEP.length);
    step[STEP.nTokens] = 3;
    const stepBuf = createBuffer(g, { label: "step", data: step });
    const view = { buffer: lb, offset: 0, stride };
    const ops = [
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 0 },
        maxLogit: { buffer: maxes, index: 0 },
        label: "first",
      }),
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 1 },
        rows: "last",
        step: stepBuf,
        label: "last",
      }),
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 3 },
        maxLogit: { buffer: maxes, index: 3 },
        rows: "all",
        label: "all",
      }),
    ];
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const [tk, mx] = await readback(g, [tokens, maxes]);
    const ids = new Uint32Array(tk!), vals = new Float32Array(mx!);
    const want = rows.map((r) => argmax(r));
    assert.equal(want[0]!.index, 17);
    assert.equal(ids[0], 17);
    assert.equal(vals[0], 9);
    assert.equal(ids[1], want[2]!.index, "last row of a batch of 3");
    for (let t = 0; t < T; t++) {
      assert.equal(ids[3 + t], want[t]!.index, `row ${t}`);
      assert.equal(vals[3 + t], Math.fround(want[t]!.value), `row ${t} max`);
    }
    assert.equal(ids[4], n - 1);
  },
});

// ------------------------------------------------------------ full sampler

const OFF: SamplerParams = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repeatPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  penaltyLastN: 0,
  seed: 1,
};

/** One sampler run: its parameters, history and the draws (logits, position). */
interface Case {
  params: SamplerParams;
  cap: number;
  prompt: number[];
  draws: { logits: Float32Array; pos: number }[];
}

interface Ran {
  tokens: number[][];
  probs: number[][];
  histories: Uint32Array[];
}

/**
 * Runs every case's draws on the GPU in one submit: per draw, the logits and
 * the step are copied into the buffers the sampler reads, the op is
 * recorded, and the token and probability are copied out; one readback.
 */
async function runGpu(g: Gpu, n: number, cases: Case[], samplers?: GpuSampler[]): Promise<Ran> {
  const nDraws = cases.reduce((s, c) => s + c.draws.length, 0);
  const all = new Float32Array(nDraws * n);
  const steps = new Uint32Array(nDraws * STEP.length);
  let d = 0;
  for (const c of cases) {
    for (const dr of c.draws) {
      all.set(dr.logits, d * n);
      steps[d * STEP.length + STEP.pos0] = dr.pos;
      steps[d * STEP.length + STEP.nTokens] = 1;
      steps[d * STEP.length + STEP.nKv] = dr.pos + 1;
      d++;
    }
  }
  const allBuf = createBuffer(g, { label: "all logits", data: all });
  const stepsBuf = createBuffer(g, { label: "all steps", data: steps });
  const cur = createBuffer(g, { label: "logits", size: 4 * n });
  const step = createBuffer(g, { label: "step", size: 4 * STEP.length });
  const tok = createBuffer(g, { label: "tokens", size: 16 });
  const prob = createBuffer(g, { label: "prob", size: 16 });
  const tokOut = createBuffer(g, { label: "tokens out", size: 4 * nDraws });
  const probOut = createBuffer(g, { label: "probs out", size: 4 * nDraws });
  const made: GpuSampler[] = [];
  for (const [i, c] of cases.entries()) {
    const s = samplers?.[i] ?? await prepareSampler(g, {
      logits: { buffer: cur, offset: 0, stride: n },
      n,
      params: c.params,
      step,
      out: { buffer: tok, index: 0 },
      outProb: { buffer: prob, index: 0 },
      historyCapacity: c.cap,
      label: `sampler ${i}`,
    });
    if (samplers?.[i]) s.setParams(c.params);
    s.resetHistory(c.prompt);
    made.push(s);
  }
  const enc = g.device.createCommandEncoder();
  d = 0;
  for (const [i, c] of cases.entries()) {
    for (let k = 0; k < c.draws.length; k++, d++) {
      enc.copyBufferToBuffer(allBuf, 4 * n * d, cur, 0, 4 * n);
      enc.copyBufferToBuffer(stepsBuf, 4 * STEP.length * d, step, 0, 4 * STEP.length);
      recordOps(enc, made[i]!.ops, 1);
      enc.copyBufferToBuffer(tok, 0, tokOut, 4 * d, 4);
      enc.copyBufferToBuffer(prob, 0, probOut, 4 * d, 4);
    }
  }
  g.submit(enc);
  const got = await readback(g, [tokOut, probOut, ...made.map((s) => s.history)]);
  const toks = new Uint32Array(got[0]!), probs = new Float32Array(got[1]!);
  const out: Ran = {
    tokens: [],
    probs: [],
    histories: got.slice(2).map((b) => new Uint32Array(b)),
  };
  d = 0;
  for (const c of cases) {
    out.tokens.push(Array.from(toks.subarray(d, d + c.draws.length)));
    out.probs.push(Array.from(probs.subarray(d, d + c.draws.length)));
    d += c.draws.length;
  }
  for (const b of [allBuf, stepsBuf, cur, step, tok, prob, tokOut, probOut]) b.destroy();
  if (!samplers) { for (const s of made) s.destroy(); }
  return out;
}

function runCpu(cases: Case[]): { tokens: number[][]; probs: number[][]; rings: CpuSampler[] } {
  const out = { tokens: [] as number[][], probs: [] as number[][], rings: [] as CpuSampler[] };
  for (const c of cases) {
    const s = new CpuSampler(c.params, c.cap);
    s.resetHistory(c.prompt);
    const r = c.draws.map((d) => s.sample(d.logits, d.pos));
    out.tokens.push(r.map((x) => x.token));
    out.probs.push(r.map((x) => x.prob));
    out.rings.push(s);
  }
  return out;
}

/** Logits ~ N(0, scale²) with the first 64 ids raised (so the history's tokens matter). */
function makeLogits(n: number, rng: () => number, kind: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
    x[i] = g * 2 + (i < 64 ? 3 : 0);
  }
  if (kind === 1) {
    // Many exact ties: a coarse grid.
    for (let i = 0; i < n; i++) x[i] = Math.round(x[i]! * 2) / 2;
  } else if (kind === 2) {
    x[5] = NaN;
    x[6] = -Infinity;
    x[7] = -0;
  }
  return x;
}

function expectSame(gpuRun: Ran, cpuRun: ReturnType<typeof runCpu>, cases: Case[]): void {
  let mismatches = 0;
  const msgs: string[] = [];
  for (let i = 0; i < cases.length; i++) {
    const a = gpuRun.tokens[i]!, b = cpuRun.tokens[i]!;
    for (let k = 0; k < a.length; k++) {
      if (a[k] !== b[k]) {
        mismatches++;
        if (msgs.length < 5) {
          msgs.push(
            `case ${i} draw ${k}: gpu ${a[k]} cpu ${b[k]} ${JSON.stringify(cases[i]!.params)}`,
          );
        }
      } else {
        const pa = gpuRun.probs[i]![k]!, pb = cpuRun.probs[i]![k]!;
        assert.ok(
          Math.abs(pa - pb) <= 1e-5 + 1e-4 * pb,
          `case ${i} draw ${k}: prob ${pa} vs ${pb}`,
        );
      }
    }
  }
  assert.equal(mismatches, 0, msgs.join("\n"));
}

gpuTest({
  name: "sampler: GPU = CPU token for token over temperature × top-k × top-p × min-p × penalties",
  async fn(g) {
    const n = 1000;
    const rng = makeRng(2024);
    const cases: Case[] = [];
    let seed = 1;
    for (const temperature of [0, 0.7, 1.5]) {
      for (const topK of [0, 1, 5, 40]) {
        for (const topP of [1, 0.9, 0.5]) {
          for (const minP of [0, 0.05, 0.2]) {
            for (const pen of [false, true]) {
              const params: SamplerParams = {
                temperature,
                topK,
                topP,
                minP,
                repeatPenalty: pen ? 1.3 : 1,
                presencePenalty: pen ? 0.5 : 0,
                frequencyPenalty: pen ? 0.2 : 0,
                penaltyLastN: pen ? 24 : 0,
                seed: (seed++ * 2654435761) >>> 0,
              };
              const prompt = Array.from({ length: 40 }, () => Math.floor(rng() * 64));
              const draws = Array.from({ length: 5 }, (_, k) => ({
                logits: makeLogits(n, rng, k % 3),
                pos: 40 + k,
              }));
              cases.push({ params, cap: 32, prompt, draws });
            }
          }
        }
      }
    }
    const t0 = performance.now();
    const got = await runGpu(g, n, cases);
    const ms = performance.now() - t0;
    const want = runCpu(cases);
    console.log(`  ${cases.length * 5} GPU draws (n = ${n}) in ${ms.toFixed(0)} ms`);
    expectSame(got, want, cases);
    // The kernel appended every draw to its ring, as the CPU sampler did.
    for (let i = 0; i < cases.length; i++) {
      const h = got.histories[i]!, s = want.rings[i]!;
      assert.equal(h[0], s.count);
      const ring = Array.from({ length: s.history.length }, (_, k) => {
        const j = s.count - s.history.length + k;
        return h[1 + (j % cases[i]!.cap)];
      });
      assert.deepEqual(ring, s.history, `case ${i} history`);
    }
    // Not degenerate: sampling cases drew more than one distinct token.
    const distinct = new Set(got.tokens.slice(100).flat()).size;
    assert.ok(distinct > 50, `only ${distinct} distinct tokens`);
  },
});

gpuTest({
  name: "sampler: GPU = CPU on a 152k vocabulary",
  async fn(g) {
    const n = 151_936;
    const rng = makeRng(7);
    const sets: Partial<SamplerParams>[] = [
      { temperature: 1 },
      { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 },
      { temperature: 0.8, topP: 0.9 },
      { temperature: 1.2, topK: 2000, topP: 0.5, minP: 0.01 },
      { temperature: 0.7, minP: 0.1 },
    ];
    const cases: Case[] = sets.map((p, i) => ({
      params: { ...OFF, ...p, seed: 1000 + i },
      cap: 8,
      prompt: [],
      draws: Array.from({ length: 2 }, (_, k) => ({
        logits: makeLogits(n, rng, k),
        pos: 7 + k,
      })),
    }));
    const t0 = performance.now();
    const got = await runGpu(g, n, cases);
    console.log(`  10 GPU draws (n = ${n}) in ${(performance.now() - t0).toFixed(0)} ms`);
    expectSame(got, runCpu(cases), cases);
  },
});

gpuTest({
  name: "sampler: temperature 0 and top-k 1 give prepareArgmax's token (ties → lower id)",
  async fn(g) {
    const n = 777;
    const rng = makeRng(99);
    const rows = Array.from({ length: 12 }, (_, r) => {
      const x = randomArray(n, rng, 4);
      if (r % 2 === 0) {
        x[100 + r] = 9;
        x[600 - r] = 9; // a tie between two maxima
      }
      if (r % 3 === 0) x[3] = NaN;
      return x;
    });
    const lb = createBuffer(g, {
      label: "rows",
      data: Float32Array.from(rows.flatMap((r) => Array.from(r))),
    });
    const ids = createBuffer(g, { label: "argmax ids", size: 4 * rows.length });
    const ops = [];
    for (let r = 0; r < rows.length; r++) {
      ops.push(
        await prepareArgmax(g, {
          logits: { buffer: lb, offset: r * n, stride: n },
          n,
          out: { buffer: ids, index: r },
          label: `argmax ${r}`,
        }),
      );
    }
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, 1);
    g.submit(enc);
    const want = Array.from(new Uint32Array((await readback(g, [ids]))[0]!));
    for (let r = 0; r < rows.length; r += 2) assert.ok(want[r] === 100 + r, `row ${r}`);
    for (const p of [{ temperature: 0 }, { temperature: 1.5, topK: 1 }, { temperature: -1 }]) {
      const cases: Case[] = [{
        params: { ...OFF, ...p, seed: 5 },
        cap: 4,
        prompt: [],
        draws: rows.map((logits, k) => ({ logits, pos: k })),
      }];
      const got = await runGpu(g, n, cases);
      assert.deepEqual(got.tokens[0], want, JSON.stringify(p));
      assert.deepEqual(runCpu(cases).tokens[0], want, `cpu ${JSON.stringify(p)}`);
    }
  },
});

gpuTest({
  name: "sampler: same seed → same tokens; other seeds → other tokens; setParams checks its input",
  async fn(g) {
    const n = 300;
    const rng = makeRng(3);
    const draws = Array.from({ length: 24 }, (_, k) => ({
      logits: randomArray(n, rng, 1.5),
      pos: 100 + k,
    }));
    const params: SamplerParams = { ...OFF, temperature: 1, topK: 100, topP: 0.95, seed: 77 };
    const mk = (seed: number): Case => ({ params: { ...params, seed }, cap: 8, prompt: [], draws });
    const a = await runGpu(g, n, [mk(77), mk(77), mk(78), mk(12345)]);
    assert.deepEqual(a.tokens[0], a.tokens[1]);
    assert.notDeepEqual(a.tokens[0], a.tokens[2]);
    assert.notDeepEqual(a.tokens[0], a.tokens[3]);
    assert.notDeepEqual(a.tokens[2], a.tokens[3]);
    // setParams checks what it is given.
    const s = await prepareSampler(g, {
      logits: { buffer: createBuffer(g, { label: "x", size: 4 * n }), offset: 0, stride: n },
      n,
      params,
      step: createBuffer(g, { label: "s", size: 16 }),
      out: { buffer: createBuffer(g, { label: "t", size: 16 }), index: 0 },
      historyCapacity: 8,
      label: "checked",
    });
    s.setParams({ ...params, seed: 5 });
    assert.equal(s.params.seed, 5);
    assert.throws(() => s.setParams({ ...params, penaltyLastN: 9 }), /penaltyLastN/);
    assert.throws(() => s.setParams({ ...params, repeatPenalty: 0 }), /repeatPenalty/);
    assert.throws(() => s.setParams({ ...params, topK: 1.5 }), /topK/);
    assert.throws(() => s.setParams({ ...params, topP: NaN }), /topP/);
    assert.equal(s.params.seed, 5, "a rejected setParams keeps the parameters in force");
    s.destroy();
  },
});

gpuTest({
  name: "sampler: setParams switches a built sampler to new parameters",
  async fn(g) {
    const n = 500;
    const rng = makeRng(31);
    const cur = createBuffer(g, { label: "logits", size: 4 * n });
    const step = createBuffer(g, { label: "step", size: 16 });
    const tok = createBuffer(g, { label: "tok", size: 16 });
    const logits = randomArray(n, rng, 3);
    const s = await prepareSampler(g, {
      logits: { buffer: cur, offset: 0, stride: n },
      n,
      params: { ...OFF, temperature: 0 },
      step,
      out: { buffer: tok, index: 0 },
      label: "switch",
    });
    const sets: SamplerParams[] = [
      { ...OFF, temperature: 0 },
      { ...OFF, temperature: 1.5, seed: 9 },
      { ...OFF, temperature: 0.5, topK: 3, seed: 10 },
      { ...OFF, temperature: 0, repeatPenalty: 5, penaltyLastN: 4 },
    ];
    const got: number[] = [];
    for (const p of sets) {
      s.setParams(p);
      s.resetHistory([argmax(logits).index]);
      g.device.queue.writeBuffer(cur, 0, logits);
      g.device.queue.writeBuffer(step, 0, new Uint32Array([11, 1, 12, 0]));
      const enc = g.device.createCommandEncoder();
      recordOps(enc, s.ops, 1);
      g.submit(enc);
      got.push(new Uint32Array((await readback(g, [tok]))[0]!)[0]!);
    }
    const want = sets.map((p) => {
      const c = new CpuSampler(p, s.historyCapacity);
      c.resetHistory([argmax(logits).index]);
      return c.sample(logits, 11).token;
    });
    assert.deepEqual(got, want);
    assert.notEqual(got[3], got[0], "the repeat penalty moved greedy off the top token");
    s.destroy();
  },
});

gpuTest({
  name: "sampler: frequencies follow the softmax at temperature 1; min-p floor never drawn",
  async fn(g) {
    const logits = new Float32Array([2, 1.5, 1, 0.5, 0, -0.5, -1, -4, -6, 1.2]);
    const n = logits.length;
    const draws = Array.from({ length: 3000 }, (_, k) => ({ logits, pos: k }));
    const free = await runGpu(g, n, [{ params: { ...OFF, seed: 4 }, cap: 4, prompt: [], draws }]);
    const minp = await runGpu(g, n, [{
      params: { ...OFF, minP: 0.04, seed: 4 },
      cap: 4,
      prompt: [],
      draws,
    }]);
    const p = softmax(logits);
    assertFrequencies(free.tokens[0]!, p, "gpu");
    // min-p 0.04: the floor is logit 2 + ln 0.04 ≈ −1.22, so ids 7 and 8 (−4, −6) never come,
    // and the rest follow the softmax renormalised over the kept tokens.
    const kept = p.map((v, i) => i === 7 || i === 8 ? 0 : v);
    const sum = kept.reduce((a, b) => a + b, 0);
    assertFrequencies(minp.tokens[0]!, kept.map((v) => v / sum), "gpu min-p");
  },
});

function softmax(x: Float32Array): number[] {
  const m = Math.max(...x);
  const e = Array.from(x, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Chi-square of the counts against `p` below its 0.999 quantile; p = 0 tokens never drawn. */
function assertFrequencies(tokens: number[], p: number[], what: string): void {
  const counts = new Array(p.length).fill(0);
  for (const t of tokens) counts[t]++;
  let chi2 = 0, dof = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) {
      assert.equal(counts[i], 0, `${what}: token ${i} has probability 0 but was drawn`);
      continue;
    }
    const e = p[i]! * tokens.length;
    chi2 += (counts[i] - e) ** 2 / e;
    dof++;
  }
  // 0.999 quantiles of chi-square for 7…9 degrees of freedom.
  const q999: Record<number, number> = { 7: 24.3, 8: 26.1, 9: 27.9 };
  assert.ok(chi2 < q999[dof]!, `${what}: chi² = ${chi2.toFixed(1)} (${dof} dof), counts ${counts}`);
}

gpuTest({
  name:
    "sampler: the history ring wraps: presence-penalised greedy cycles through window + 1 tokens",
  async fn(g) {
    const n = 50;
    const logits = Float32Array.from({ length: n }, (_, i) => 10 - i * 0.1);
    const params: SamplerParams = { ...OFF, temperature: 0, presencePenalty: 100, penaltyLastN: 4 };
    const draws = Array.from({ length: 13 }, (_, k) => ({ logits, pos: k }));
    // A prompt longer than the ring: only its last 4 tokens (20..23) count.
    const prompt = Array.from({ length: 24 }, (_, i) => i);
    const cases: Case[] = [
      { params, cap: 4, prompt: [], draws },
      { params, cap: 4, prompt, draws },
    ];
    const got = await runGpu(g, n, cases);
    assert.deepEqual(got.tokens[0], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]);
    assert.deepEqual(got.tokens[1], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]);
    assert.deepEqual(runCpu(cases).tokens, got.tokens);
    // count = 13 (+ 24); ring slot j % 4 holds the j-th token: draws 9..12 = 4, 0, 1, 2.
    assert.deepEqual(Array.from(got.histories[0]!), [13, 2, 4, 0, 1]);
    assert.deepEqual(Array.from(got.histories[1]!), [37, 2, 4, 0, 1]);
  },
});

gpuTest({
  name: 'sampler: rows "last" samples the batch\'s last row at its position',
  async fn(g) {
    const n = 400, T = 3;
    const rng = makeRng(8);
    const rows = Array.from({ length: T }, () => randomArray(n, rng, 3));
    const lb = createBuffer(g, {
      label: "rows",
      data: Float32Array.from(rows.flatMap((r) => Array.from(r))),
    });
    const step = createBuffer(g, { label: "step", data: new Uint32Array([20, T, 20 + T, 0]) });
    const tok = createBuffer(g, { label: "tok", size: 16 });
    const params: SamplerParams = { ...OFF, temperature: 1, seed: 3 };
    const s = await prepareSampler(g, {
      logits: { buffer: lb, offset: 0, stride: n },
      n,
      params,
      step,
      out: { buffer: tok, index: 1 },
      rows: "last",
      label: "last row",
    });
    const enc = g.device.createCommandEncoder();
    recordOps(enc, s.ops, T);
    g.submit(enc);
    const got = new Uint32Array((await readback(g, [tok]))[0]!)[1];
    assert.equal(got, new CpuSampler(params).sample(rows[T - 1]!, 20 + T - 1).token);
    s.destroy();
  },
});
