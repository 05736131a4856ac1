import assert from "node:assert/strict";

import { createBuffer, readback, upload } from "../buffers.ts";
import { compareArrays, makeRng, randomArray } from "./cpu_ref.ts";
import {
  prepareGdn,
  prepareGdnGates,
  prepareSigmoidMul,
  prepareSplitHeads,
  prepareSsmConv,
} from "./delta_net.ts";
import { type Op, recordOps, stepLength, stepWords } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";
import type { Gpu } from "../device.ts";

/** CPU reference of a gated DeltaNet's recurrent half, llama.cpp's formulas, one token at a time. */
class DeltaNetRef {
  conv: Float32Array;
  state: Float32Array;
  constructor(
    readonly C: number,
    readonly K: number,
    readonly H: number,
    readonly Hk: number,
    readonly S: number,
    readonly interleaved: boolean,
  ) {
    this.conv = new Float32Array(C * (K - 1));
    this.state = new Float32Array(H * S * S);
  }
  /** One token: conv over [state | x], then gates and the delta rule; returns [H·S]. */
  token(
    x: Float32Array,
    w: Float32Array,
    beta: Float32Array,
    alpha: Float32Array,
    dt: Float32Array,
    a: Float32Array,
    eps: number,
  ): Float32Array {
    const { C, K, H, Hk, S } = this;
    const y = new Float32Array(C);
    for (let c = 0; c < C; c++) {
      let acc = 0;
      for (let k = 0; k < K - 1; k++) acc += this.conv[c * (K - 1) + k]! * w[c * K + k]!;
      acc += x[c]! * w[c * K + K - 1]!;
      y[c] = acc / (1 + Math.exp(-acc));
      for (let k = 0; k < K - 2; k++) this.conv[c * (K - 1) + k] = this.conv[c * (K - 1) + k + 1]!;
      if (K > 1) this.conv[c * (K - 1) + K - 2] = x[c]!;
    }
    const out = new Float32Array(H * S);
    const l2 = (v: Float32Array) => {
      const n = Math.max(Math.sqrt(v.reduce((s, e) => s + e * e, 0)), eps);
      return v.map((e) => e / n);
    };
    for (let h = 0; h < H; h++) {
      const kh = this.interleaved ? Math.floor(h / (H / Hk)) : h % Hk;
      const q = l2(y.slice(kh * S, kh * S + S)).map((e) => e / Math.sqrt(S));
      const k = l2(y.slice(Hk * S + kh * S, Hk * S + kh * S + S));
      const v = y.slice(2 * Hk * S + h * S, 2 * Hk * S + h * S + S);
      const b = 1 / (1 + Math.exp(-beta[h]!));
      const z = alpha[h]! + dt[h]!;
      const sp = z > 20 ? z : Math.log(1 + Math.exp(z));
      const decay = Math.exp(sp * a[h]!);
      for (let j = 0; j < S; j++) {
        const r = h * S * S + j * S;
        let dot = 0;
        for (let i = 0; i < S; i++) {
          this.state[r + i] = this.state[r + i]! * decay;
          dot += this.state[r + i]! * k[i]!;
        }
        const d = (v[j]! - dot) * b;
        let o = 0;
        for (let i = 0; i < S; i++) {
          this.state[r + i] = this.state[r + i]! + k[i]! * d;
          o += this.state[r + i]! * q[i]!;
        }
        out[h * S + j] = o;
      }
    }
    return out;
  }
}

interface Rig {
  run(pos0: number, tokens: number, misses?: [number, number]): Promise<Float32Array>;
  upload(xs: Float32Array, bas: Float32Array): void;
}

/** The three recurrent ops on one set of buffers, for batches of up to maxT tokens. */
async function rig(
  g: Gpu,
  d: { C: number; K: number; H: number; Hk: number; S: number; interleaved: boolean },
  w: Float32Array,
  dt: Float32Array,
  a: Float32Array,
  maxT: number,
): Promise<Rig> {
  const { C, K, H, Hk, S } = d;
  const step = createBuffer(g, {
    label: "step",
    size: 4 * stepLength(maxT),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  const misses = createBuffer(g, { label: "misses", size: 16 });
  const x = createBuffer(g, { label: "x", size: maxT * C * 4 });
  const y = createBuffer(g, { label: "y", size: maxT * C * 4 });
  const ba = createBuffer(g, { label: "ba", size: maxT * 2 * H * 4 });
  const out = createBuffer(g, { label: "out", size: maxT * H * S * 4 });
  const convState = createBuffer(g, { label: "conv", size: C * (K - 1) * 4 + 4 });
  const state = createBuffer(g, { label: "state", size: H * S * S * 4 });
  const ops: Op[] = [
    await prepareSsmConv(g, {
      x: { buffer: x, offset: 0, stride: C },
      weight: createBuffer(g, { label: "w", data: w }),
      state: convState,
      y: { buffer: y, offset: 0, stride: C },
      nChannels: C,
      kernel: K,
      step,
      misses,
      label: "conv",
    }),
    await prepareGdnGates(g, {
      ba: { buffer: ba, offset: 0, stride: 2 * H },
      grouped: false,
      dtBias: createBuffer(g, { label: "dt", data: dt }),
      ssmA: createBuffer(g, { label: "a", data: a }),
      nHeads: H,
      nKHeads: Hk,
      step,
      label: "gates",
    }),
    await prepareGdn(g, {
      qkv: { buffer: y, offset: 0, stride: C },
      ba: { buffer: ba, offset: 0, stride: 2 * H },
      grouped: false,
      state,
      out: { buffer: out, offset: 0, stride: H * S },
      nHeads: H,
      nKHeads: Hk,
      headDim: S,
      interleaved: d.interleaved,
      eps: 1e-6,
      step,
      misses,
      label: "gdn",
    }),
  ];
  return {
    upload(xs, bas) {
      upload(g, x, xs);
      upload(g, ba, bas);
    },
    async run(pos0, tokens, m = [0, 0]) {
      upload(g, step, stepWords(pos0, tokens));
      upload(g, misses, new Uint32Array([m[0], m[1], 0, 0]));
      const enc = g.device.createCommandEncoder();
      recordOps(enc, ops, tokens);
      g.submit(enc);
      return new Float32Array((await readback(g, [out]))[0]!).slice(0, tokens * H * S);
    },
  };
}

gpuTest({
  name:
    "delta_net: conv + gates + delta rule match the CPU reference token by token and as one batch; state carried, reset at 0, untouched when flagged",
  async fn(g) {
    for (
      const d of [
        { C: 0, K: 4, H: 4, Hk: 2, S: 16, interleaved: false },
        { C: 0, K: 3, H: 6, Hk: 3, S: 8, interleaved: true },
        { C: 0, K: 4, H: 2, Hk: 2, S: 96, interleaved: false },
      ]
    ) {
      d.C = 2 * d.Hk * d.S + d.H * d.S;
      const { C, K, H } = d;
      const rng = makeRng(d.S + d.H);
      const T = 7;
      const w = randomArray(C * K, rng, 0.6);
      const dt = randomArray(H, rng, 0.5);
      const a = randomArray(H, rng, 0.6, -0.8);
      const xs = randomArray(T * C, rng, 1.5);
      const beta = randomArray(T * H, rng, 2);
      const alpha = randomArray(T * H, rng, 2);
      const bas = new Float32Array(T * 2 * H);
      for (let t = 0; t < T; t++) {
        bas.set(beta.subarray(t * H, t * H + H), t * 2 * H);
        bas.set(alpha.subarray(t * H, t * H + H), t * 2 * H + H);
      }
      const ref = new DeltaNetRef(C, K, H, d.Hk, d.S, d.interleaved);
      const want: Float32Array[] = [];
      for (let t = 0; t < T; t++) {
        want.push(ref.token(
          xs.subarray(t * C, t * C + C),
          w,
          beta.subarray(t * H, t * H + H),
          alpha.subarray(t * H, t * H + H),
          dt,
          a,
          1e-6,
        ));
      }
      const label = `C ${C} K ${K} H ${H}/${d.Hk} S ${d.S}${d.interleaved ? " interleaved" : ""}`;
      const r = await rig(g, d, w, dt, a, T);
      const check = (got: Float32Array, t0: number, what: string) => {
        const exp = new Float32Array(got.length);
        for (let i = 0; i < got.length / (H * d.S); i++) exp.set(want[t0 + i]!, i * H * d.S);
        const c = compareArrays(got, exp, 2e-5, 2e-4);
        assert.ok(c.ok, `${label} ${what}: ${c.message}`);
      };
      // the whole batch at position 0 (the state starts from zeros, whatever it held)
      r.upload(xs, bas);
      check(await r.run(0, T), 0, "one batch");
      // again, one token at a time: position 0 resets, later tokens carry conv and state
      for (let t = 0; t < T; t++) {
        r.upload(xs.slice(t * C, t * C + C), bas.slice(t * 2 * H, t * 2 * H + 2 * H));
        if (t === 3) {
          // a flagged pass (a miss earlier in this pass, or in this window) leaves the state alone
          await r.run(t, 1, [1, 0]);
          await r.run(t, 1, [0, 1]);
          // the gates work in place: the projections are written afresh before each pass
          r.upload(xs.slice(t * C, t * C + C), bas.slice(t * 2 * H, t * 2 * H + 2 * H));
        }
        check(await r.run(t, 1), t, `token ${t}`);
      }
      // a split batch: 3 tokens, then 4
      r.upload(xs.slice(0, 3 * C), bas.slice(0, 3 * 2 * H));
      check(await r.run(0, 3), 0, "first 3");
      r.upload(xs.slice(3 * C), bas.slice(3 * 2 * H));
      check(await r.run(3, 4), 3, "last 4");
      // a state applied twice is caught: token 3 run again after the last 4 differs
      r.upload(xs.slice(0, 3 * C), bas.slice(0, 3 * 2 * H));
      await r.run(0, 3);
      r.upload(xs.slice(3 * C, 4 * C), bas.slice(3 * 2 * H, 4 * 2 * H));
      await r.run(3, 1);
      r.upload(xs.slice(3 * C, 4 * C), bas.slice(3 * 2 * H, 4 * 2 * H));
      const twice = await r.run(3, 1);
      const c = compareArrays(twice, want[3]!, 2e-5, 2e-4);
      assert.ok(!c.ok, `${label}: applying token 3's update twice went unnoticed`);
    }
  },
});

gpuTest({
  name: "attn_gate: q halves split out of [q | gate] heads, output × sigmoid(gate)",
  async fn(g) {
    const rng = makeRng(7);
    const T = 3, nHead = 3, D = 10;
    const src = randomArray(T * nHead * 2 * D + 5, rng, 2);
    const step = createBuffer(g, { label: "step", data: stepWords(0, T) });
    const srcBuf = createBuffer(g, { label: "src", data: src });
    const q = createBuffer(g, { label: "q", size: T * nHead * D * 4 });
    const yData = randomArray(T * nHead * D, rng, 1);
    const y = createBuffer(g, { label: "y", data: yData });
    const common = {
      src: { buffer: srcBuf, offset: 5, stride: nHead * 2 * D },
      nHead,
      headDim: D,
      srcHeadStride: 2 * D,
      step,
    };
    const ops = [
      await prepareSplitHeads(g, {
        ...common,
        y: { buffer: q, offset: 0, stride: nHead * D },
        label: "split",
      }),
      await prepareSigmoidMul(g, {
        ...common,
        y: { buffer: y, offset: 0, stride: nHead * D },
        gateOffset: D,
        label: "gate",
      }),
    ];
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const [gotQ, gotY] = (await readback(g, [q, y])).map((b) => new Float32Array(b));
    const wantQ = new Float32Array(T * nHead * D);
    const wantY = new Float32Array(T * nHead * D);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nHead; h++) {
        for (let i = 0; i < D; i++) {
          const s = 5 + t * nHead * 2 * D + h * 2 * D;
          const e = t * nHead * D + h * D + i;
          wantQ[e] = src[s + i]!;
          wantY[e] = yData[e]! / (1 + Math.exp(-src[s + D + i]!));
        }
      }
    }
    assert.ok(compareArrays(gotQ!, wantQ, 0).ok, "split heads");
    const c = compareArrays(gotY!, wantY, 1e-6, 1e-5);
    assert.ok(c.ok, `sigmoid gate: ${c.message}`);
  },
});
