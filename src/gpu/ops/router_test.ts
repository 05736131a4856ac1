import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import { compareArrays, makeRng, randomArray, route, type RouterParams } from "./cpu_ref.ts";
import { type Op, recordOps } from "./op.ts";
import { MISSES, missesBytes, prepareRouter } from "./router.ts";
import { gpuTest } from "../../../dev/gpu.ts";

interface Case extends RouterParams {
  name: string;
  nTokens: number;
  /** Logits drawn from a few values, so that probabilities tie. */
  ties?: boolean;
}

const CASES: Case[] = [
  {
    name: "softmax, norm (Mixtral/Qwen3)",
    nTokens: 4,
    nExpert: 8,
    k: 2,
    gating: "softmax",
    normalize: true,
  },
  {
    name: "softmax, 60 experts, k 4, no norm (Qwen2-MoE)",
    nTokens: 3,
    nExpert: 60,
    k: 4,
    gating: "softmax",
    scale: 1,
  },
  {
    name: "sigmoid + exp_probs_b + groups 8/3, k 6, norm, scale 2.5 (DeepSeek-V3)",
    nTokens: 5,
    nExpert: 64,
    k: 6,
    gating: "sigmoid",
    normalize: true,
    scale: 2.5,
    nGroup: 8,
    nGroupUsed: 3,
  },
  {
    name: "top-k then softmax, logit bias (GPT-OSS)",
    nTokens: 2,
    nExpert: 32,
    k: 4,
    gating: "topk_softmax",
  },
  {
    name: "7 experts, k 3, ties → lower id",
    nTokens: 3,
    nExpert: 7,
    k: 3,
    gating: "softmax",
    normalize: true,
    ties: true,
  },
  { name: "k 1, sigmoid", nTokens: 3, nExpert: 5, k: 1, gating: "sigmoid" },
  {
    name: "256 experts, groups 8/4, k 8",
    nTokens: 2,
    nExpert: 256,
    k: 8,
    gating: "sigmoid",
    normalize: true,
    nGroup: 8,
    nGroupUsed: 4,
    scale: 2.5,
  },
];

gpuTest({
  name: "router: ids, weights and slots match llama.cpp's routing (all gating modes, bias, groups)",
  async fn(g) {
    const rng = makeRng(9);
    const ops: Op[] = [];
    const bufs: GPUBuffer[] = [];
    const cases: { c: Case; logits: Float32Array; p: RouterParams }[] = [];
    for (const c of CASES) {
      const { nTokens: T, nExpert: n, k } = c;
      const logits = c.ties
        ? Float32Array.from({ length: T * n }, () => [0.5, -1, 2][Math.floor(rng() * 3)]!)
        : randomArray(T * n, rng, 3);
      const p: RouterParams = { ...c };
      if (c.gating === "sigmoid") p.selectionBias = randomArray(n, rng, 0.5);
      if (c.gating === "topk_softmax") p.logitBias = randomArray(n, rng, 2);
      cases.push({ c, logits, p });
      const ids = createBuffer(g, { label: "ids", size: T * k * 4 });
      const weights = createBuffer(g, { label: "w", size: T * k * 4 });
      const slots = createBuffer(g, { label: "slots", size: T * k * 4 });
      bufs.push(ids, weights, slots);
      const vec = (a: ArrayLike<number> | undefined) =>
        a ? createBuffer(g, { label: "bias", data: Float32Array.from(a) }) : undefined;
      ops.push(
        await prepareRouter(g, {
          nExpert: n,
          k,
          gating: c.gating,
          normalize: c.normalize,
          scale: c.scale,
          nGroup: c.nGroup,
          nGroupUsed: c.nGroupUsed,
          logits: {
            buffer: createBuffer(g, { label: "logits", data: logits }),
            offset: 0,
            stride: n,
          },
          ids: { buffer: ids, offset: 0, stride: k },
          weights: { buffer: weights, offset: 0, stride: k },
          slots: { buffer: slots, offset: 0, stride: k },
          selectionBias: vec(p.selectionBias),
          logitBias: vec(p.logitBias),
          label: c.name,
        }),
      );
    }
    const enc = g.device.createCommandEncoder();
    CASES.forEach((c, i) => recordOps(enc, [ops[i]!], c.nTokens));
    g.submit(enc);
    const out = await readback(g, bufs);
    cases.forEach(({ c, logits, p }, i) => {
      const ids = new Uint32Array(out[3 * i]!);
      const weights = new Float32Array(out[3 * i + 1]!);
      const slots = new Uint32Array(out[3 * i + 2]!);
      const want = route(logits, p);
      assert.deepEqual(ids, want.ids, `${c.name}: ids`);
      assert.deepEqual(slots, want.ids, `${c.name}: slots without a table are the ids`);
      const r = compareArrays(weights, want.weights, 1e-7, 2e-6);
      assert.ok(r.ok, `${c.name}: weights: ${r.message}`);
      // A router that ignored part of the recipe would route differently.
      const differs = (change: Partial<RouterParams>) => {
        const w = route(logits, { ...p, ...change });
        return !compareArrays(ids, w.ids, 0).ok ||
          !compareArrays(weights, w.weights, 1e-7, 2e-6).ok;
      };
      if (p.selectionBias) assert.ok(differs({ selectionBias: undefined }), `${c.name}: bias`);
      if (p.nGroup) assert.ok(differs({ nGroup: 1 }), `${c.name}: groups`);
      if (p.normalize) assert.ok(differs({ normalize: false }), `${c.name}: normalize`);
      if (p.logitBias) assert.ok(differs({ logitBias: undefined }), `${c.name}: logit bias`);
      if (c.gating === "topk_softmax") {
        assert.ok(differs({ gating: "softmax" }), `${c.name}: gating`);
      }
    });
  },
});

gpuTest({
  name:
    "router: residency lookup gives slots; absent experts become slot 0xffffffff (skipped by every arena) and miss records",
  async fn(g) {
    const rng = makeRng(10);
    const nLayer = 3, nExpert = 9, k = 3, T = 4, layer = 2;
    const table = new Int32Array(nLayer * nExpert).fill(-1);
    // Layer 2: even experts resident in slots 10 + e, odd ones absent. Other layers all absent,
    // so reading the wrong row would miss everywhere.
    for (let e = 0; e < nExpert; e += 2) table[layer * nExpert + e] = 10 + e;
    const logits = randomArray(T * nExpert, rng, 3);
    const misses = createBuffer(g, { label: "misses", size: missesBytes(64) });
    const ids = createBuffer(g, { label: "ids", size: T * k * 4 });
    const slots = createBuffer(g, { label: "slots", size: T * k * 4 });
    const p: RouterParams = {
      nExpert,
      k,
      gating: "softmax",
      normalize: true,
      residency: table,
      layer,
    };
    const op = await prepareRouter(g, {
      nExpert,
      k,
      gating: "softmax",
      normalize: true,
      layer,
      logits: {
        buffer: createBuffer(g, { label: "logits", data: logits }),
        offset: 0,
        stride: nExpert,
      },
      ids: { buffer: ids, offset: 0, stride: k },
      weights: { buffer: createBuffer(g, { label: "w", size: T * k * 4 }), offset: 0, stride: k },
      slots: { buffer: slots, offset: 0, stride: k },
      residency: createBuffer(g, { label: "table", data: table }),
      misses,
      label: "router",
    });
    const enc = g.device.createCommandEncoder();
    enc.clearBuffer(misses);
    recordOps(enc, [op], T);
    g.submit(enc);
    const [m, s] = await readback(g, [misses, slots]);
    const want = route(logits, p);
    assert.deepEqual(new Uint32Array(s!), want.slots);
    const words = new Uint32Array(m!);
    const count = words[MISSES.count]!;
    assert.equal(count, want.misses.length);
    assert.ok(count > 0 && count < T * k, "the case should mix hits and misses");
    const got = [];
    for (let i = 0; i < count; i++) {
      const at = MISSES.header + MISSES.recordWords * i;
      got.push({ layer: words[at]!, token: words[at + 1]!, expert: words[at + 2]! });
    }
    // Workgroups append concurrently: compare as sets.
    const key = (r: { layer: number; token: number; expert: number }) =>
      `${r.layer}/${r.token}/${r.expert}`;
    assert.deepEqual(got.map(key).sort(), want.misses.map(key).sort());
  },
});

gpuTest({
  name: "router: a full misses buffer still counts every miss, and keeps the records that fit",
  async fn(g) {
    const nExpert = 4, k = 2, T = 3;
    const table = new Int32Array(nExpert).fill(-1);
    const misses = createBuffer(g, { label: "misses", size: missesBytes(2) });
    const op = await prepareRouter(g, {
      logits: {
        buffer: createBuffer(g, { label: "l", data: randomArray(T * nExpert, makeRng(11)) }),
        offset: 0,
        stride: nExpert,
      },
      ids: { buffer: createBuffer(g, { label: "ids", size: T * k * 4 }), offset: 0, stride: k },
      weights: { buffer: createBuffer(g, { label: "w", size: T * k * 4 }), offset: 0, stride: k },
      nExpert,
      k,
      gating: "softmax",
      residency: createBuffer(g, { label: "table", data: table }),
      misses: misses,
      label: "overflow",
    });
    const enc = g.device.createCommandEncoder();
    enc.clearBuffer(misses);
    recordOps(enc, [op], T);
    g.submit(enc);
    const words = new Uint32Array((await readback(g, [misses]))[0]!);
    assert.equal(words[MISSES.count], T * k);
    const records = new Set<string>();
    for (let i = 0; i < 2; i++) {
      const [l, t, e] = words.subarray(MISSES.header + 3 * i, MISSES.header + 3 * i + 3);
      assert.ok(l === 0 && t! < T && e! < nExpert, `record ${i}: ${l}/${t}/${e}`);
      records.add(`${t}/${e}`);
    }
    assert.equal(records.size, 2);
  },
});
