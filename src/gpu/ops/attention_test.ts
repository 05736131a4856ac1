import assert from "node:assert/strict";
import type { Gpu } from "../device.ts";
import { createBuffer, readback } from "../buffers.ts";
import { attention, type AttentionParams, compareArrays, makeRng, randomArray } from "./cpu_ref.ts";
import { prepareAttention, prepareAttentionOps } from "./attention.ts";
import { type Op, recordOps, stepWords } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";

function stepBuffer(g: Gpu, pos0: number, nTokens: number): GPUBuffer {
  return createBuffer(g, { label: "step", data: stepWords(pos0, nTokens) });
}

gpuTest({
  name: "attention: heads per workgroup that do not divide the heads per kv head are refused",
  async fn(g) {
    const buf = createBuffer(g, { label: "b", size: 4096 });
    await assert.rejects(
      () =>
        prepareAttention(g, {
          q: { buffer: buf, offset: 0, stride: 32 },
          kCache: buf,
          vCache: buf,
          out: { buffer: createBuffer(g, { label: "o", size: 4096 }), offset: 0, stride: 32 },
          nHead: 4,
          nHeadKv: 2,
          headDimK: 8,
          headDimV: 8,
          scale: 1,
          nCtx: 4,
          step: stepBuffer(g, 0, 1),
          label: "bad",
          headsPerWorkgroup: 4,
        }),
      /bad: 4 heads per workgroup must divide the 2 query heads per kv head/,
    );
  },
});

interface Case extends AttentionParams {
  name: string;
  nCtx: number;
  /** Query magnitude: large values make the softmax peaky and stress the running max. */
  qScale?: number;
  /** V is the first dV elements of each K row (MLA's absorbed form). */
  mla?: boolean;
  /** Padding after each query token row. */
  qPad?: number;
}

const CASES: Case[] = [
  {
    name: "decode, MHA",
    nTokens: 1,
    pos0: 37,
    nHead: 4,
    nHeadKv: 4,
    dK: 32,
    dV: 32,
    nCtx: 64,
    scale: 1 / Math.sqrt(32),
  },
  {
    name: "prefill from 0, GQA 2, dV ≠ dK",
    nTokens: 5,
    pos0: 0,
    nHead: 6,
    nHeadKv: 3,
    dK: 40,
    dV: 24,
    nCtx: 16,
    scale: 0.15,
    qPad: 3,
  },
  {
    name: "GQA 4, pos0 130 (nKv not a tile multiple)",
    nTokens: 3,
    pos0: 130,
    nHead: 8,
    nHeadKv: 2,
    dK: 16,
    dV: 16,
    nCtx: 140,
    scale: 0.25,
  },
  {
    name: "sliding window + sinks",
    nTokens: 4,
    pos0: 100,
    nHead: 4,
    nHeadKv: 2,
    dK: 24,
    dV: 24,
    nCtx: 110,
    scale: 0.2,
    window: 50,
    sinks: [0.5, -1, 3, 8],
  },
  {
    name: "MLA: one kv head, V = prefix of K rows",
    nTokens: 2,
    pos0: 9,
    nHead: 3,
    nHeadKv: 1,
    dK: 36,
    dV: 28,
    nCtx: 12,
    scale: 0.1,
    mla: true,
  },
  {
    name: "soft cap",
    nTokens: 2,
    pos0: 6,
    nHead: 2,
    nHeadKv: 1,
    dK: 8,
    dV: 8,
    nCtx: 8,
    scale: 0.3,
    softcap: 5,
    qScale: 4,
  },
  {
    name: "MLA, 16 heads on one latent row, 3 tiles of keys",
    nTokens: 2,
    pos0: 300,
    nHead: 16,
    nHeadKv: 1,
    dK: 72,
    dV: 64,
    nCtx: 310,
    scale: 0.12,
    mla: true,
    qScale: 2,
  },
  {
    name: "long context, peaky scores",
    nTokens: 1,
    pos0: 1000,
    nHead: 2,
    nHeadKv: 1,
    dK: 64,
    dV: 64,
    nCtx: 1024,
    scale: 1,
    qScale: 3,
  },
  {
    name: "prefill of 37 tokens after 90 (blocks of tokens, a window starting inside a block)",
    nTokens: 37,
    pos0: 90,
    nHead: 4,
    nHeadKv: 2,
    dK: 24,
    dV: 20,
    nCtx: 130,
    scale: 0.2,
    window: 40,
    sinks: [1, -2, 0.5, 6],
    qScale: 2,
  },
  {
    name: "prefill of 20 tokens after 700, wide heads (2 output elements per invocation)",
    nTokens: 20,
    pos0: 700,
    nHead: 2,
    nHeadKv: 2,
    dK: 96,
    dV: 80,
    nCtx: 720,
    scale: 0.1,
    softcap: 30,
    qScale: 3,
  },
  {
    name: "Qwen3-30B-A3B's heads (32 over 4 kv heads of 128), 2 tokens after 519",
    nTokens: 2,
    pos0: 519,
    nHead: 32,
    nHeadKv: 4,
    dK: 128,
    dV: 128,
    nCtx: 528,
    scale: 1 / Math.sqrt(128),
  },
];

/** Kernels under test: heads per workgroup, query tokens per workgroup, vec4 kernel. */
const VARIANTS = [
  [1, 1, false], // attend: one workgroup per (head, token)
  [1, "auto", false], // attend_tiled, blocks of 16 tokens
  [1, 4, false], // attend_tiled, blocks of 4 tokens
  ["auto", "auto", false], // attend_heads where heads share a kv head
  [2, "auto", false],
  [1, 1, true], // attend_vec (the software profile's), 1-8 heads per workgroup
] as const;

for (const [heads, queries, vec4] of VARIANTS) {
  gpuTest({
    name: `attention: causal GQA attention matches the CPU (decode, prefill, window, sinks, MLA, ` +
      `softcap), ${
        vec4 ? "vec4 kernel" : `${heads} heads and ${queries} query tokens per workgroup`
      }`,
    async fn(g) {
      // 2 heads per workgroup: the cases whose heads per kv head are even
      const cases = heads === 2 ? CASES.filter((c) => (c.nHead / c.nHeadKv) % 2 === 0) : CASES;
      const rng = makeRng(7);
      const ops: Op[][] = [];
      const outs: GPUBuffer[] = [];
      const wants: Float32Array[] = [];
      const data: { q: Float32Array; k: Float32Array; v: Float32Array }[] = [];
      for (const c of cases) {
        const nKv = c.pos0 + c.nTokens;
        const kRow = c.mla ? c.dK : c.nHeadKv * c.dK;
        const vRow = c.mla ? c.dK : c.nHeadKv * c.dV;
        // Positions past nKv hold NaN: reading any of them would poison the output.
        const k = new Float32Array(c.nCtx * kRow).fill(NaN);
        k.set(randomArray(nKv * kRow, rng));
        const v = c.mla ? k : new Float32Array(c.nCtx * vRow).fill(NaN);
        if (!c.mla) v.set(randomArray(nKv * vRow, rng));
        const qRow = c.nHead * c.dK;
        // the vec4 kernel needs offsets and strides in whole vec4s
        const qPad = vec4 && c.qPad ? Math.ceil(c.qPad / 4) * 4 : c.qPad ?? 0;
        const qOff = vec4 ? 4 : 1;
        const qStride = qRow + qPad;
        const qDense = randomArray(c.nTokens * qRow, rng, c.qScale ?? 1);
        const qData = new Float32Array(qOff + c.nTokens * qStride);
        for (let t = 0; t < c.nTokens; t++) {
          qData.set(qDense.subarray(t * qRow, (t + 1) * qRow), qOff + t * qStride);
        }
        data.push({ q: qDense, k, v });
        const kBuf = createBuffer(g, { label: "k", data: k });
        const vBuf = c.mla ? kBuf : createBuffer(g, { label: "v", data: v });
        const out = createBuffer(g, { label: "out", size: c.nTokens * c.nHead * c.dV * 4 });
        outs.push(out);
        ops.push(
          await prepareAttentionOps(g, {
            q: {
              buffer: createBuffer(g, { label: "q", data: qData }),
              offset: qOff,
              stride: qStride,
            },
            kCache: kBuf,
            vCache: vBuf,
            vRowStride: c.mla ? c.dK : undefined,
            out: { buffer: out, offset: 0, stride: c.nHead * c.dV },
            nHead: c.nHead,
            nHeadKv: c.nHeadKv,
            headDimK: c.dK,
            headDimV: c.dV,
            scale: c.scale,
            // Every other case leaves nCtx to be derived from the cache buffers.
            nCtx: ops.length % 2 === 0 ? c.nCtx : undefined,
            window: c.window,
            sinks: c.sinks
              ? createBuffer(g, { label: "sinks", data: Float32Array.from(c.sinks) })
              : undefined,
            softcap: c.softcap,
            step: stepBuffer(g, c.pos0, c.nTokens),
            label: c.name,
            headsPerWorkgroup: heads,
            queriesPerWorkgroup: queries,
            vec4,
          }),
        );
        wants.push(attention(qDense, k, v, { ...c, vRowStride: c.mla ? c.dK : undefined }));
      }
      const enc = g.device.createCommandEncoder();
      cases.forEach((c, i) => recordOps(enc, ops[i]!, c.nTokens));
      g.submit(enc);
      const got = (await readback(g, outs)).map((b) => new Float32Array(b));
      cases.forEach((c, i) => {
        const r = compareArrays(got[i]!, wants[i]!, 2e-6, 1e-5);
        assert.ok(r.ok, `${c.name}: ${r.message}`);
      });

      // What a wrong kernel would produce must not pass the same comparison.
      const wrong = (i: number, change: Partial<AttentionParams>, what: string) => {
        const c = cases[i]!, d = data[i]!;
        const w = attention(d.q, d.k, d.v, { ...c, ...change });
        assert.ok(!compareArrays(got[i]!, w, 2e-6, 1e-5).ok, `${c.name}: ${what} gives the same`);
      };
      if (heads === 2) return;
      wrong(1, { pos0: 1 }, "seeing one key past the causal limit");
      wrong(0, { pos0: 36 }, "missing the token's own key");
      wrong(3, { window: 0 }, "no window");
      wrong(3, { sinks: undefined }, "no sinks");
      wrong(5, { softcap: 0 }, "no soft cap");
      wrong(6, { pos0: 299 }, "the 16-head MLA case one key short");
      wrong(8, { window: 41 }, "a window one key wider");
      wrong(8, { sinks: undefined }, "no sinks");
      wrong(9, { pos0: 701 }, "seeing one key past the causal limit");
      wrong(10, { pos0: 518 }, "the real-width case one key short");
    },
  });
}

gpuTest({
  name: "attention: kv head mapping is h / (nHead / nHeadKv), not h mod nHeadKv",
  async fn(g) {
    // With kv heads that differ wildly, mapping q head h to the wrong kv head is visible.
    const nHead = 4, nHeadKv = 2, d = 8, T = 1, pos0 = 3, nCtx = 4;
    const rng = makeRng(8);
    const q = randomArray(T * nHead * d, rng);
    const k = randomArray(nCtx * nHeadKv * d, rng);
    const v = Float32Array.from(
      { length: nCtx * nHeadKv * d },
      (_, i) => (Math.floor(i / d) % 2) * 10 + (i % d),
    );
    const out = createBuffer(g, { label: "out", size: nHead * d * 4 });
    const op = await prepareAttention(g, {
      q: { buffer: createBuffer(g, { label: "q", data: q }), offset: 0, stride: nHead * d },
      kCache: createBuffer(g, { label: "k", data: k }),
      vCache: createBuffer(g, { label: "v", data: v }),
      out: { buffer: out, offset: 0, stride: nHead * d },
      nHead,
      nHeadKv,
      headDimK: d,
      headDimV: d,
      scale: 0.3,
      nCtx,
      step: stepBuffer(g, pos0, T),
      label: "gqa",
    });
    const enc = g.device.createCommandEncoder();
    recordOps(enc, [op], T);
    g.submit(enc);
    const got = new Float32Array((await readback(g, [out]))[0]!);
    // Heads 0, 1 read kv head 0 (values < 10); heads 2, 3 read kv head 1 (values ≥ 10).
    for (let h = 0; h < nHead; h++) {
      const v0 = got[h * d]!;
      assert.ok(h < 2 ? v0 < 1e-3 : v0 > 9.999, `head ${h} read the wrong kv head: ${v0}`);
    }
    const want = attention(q, k, v, { nTokens: T, nHead, nHeadKv, dK: d, dV: d, pos0, scale: 0.3 });
    assert.ok(compareArrays(got, want, 2e-6, 1e-5).ok);
  },
});
