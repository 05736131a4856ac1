/**
 * The hybrid Qwen MoE models — `qwen35moe` (Qwen3.5/3.6-MoE) and `qwen3next`
 * (Qwen3-Next) — against llama.cpp (PARITY.md): gated DeltaNet layers (conv
 * state, L2-normalised q/k, softplus/exp decay, sigmoid beta, the delta-rule
 * state, gated RMSNorm) between gated full-attention layers (Q with its
 * gate, per-head q/k norms, partial rotary), softmax-routed experts plus a
 * sigmoid-gated shared expert. On generated models of two shapes each, in
 * F32, F16, Q8_0 and Q4_K_M, the 32 greedy tokens after a 16-token prompt
 * are llama.cpp's and every step's logits are within 1% of its range (the
 * exact reference: llama.cpp on its own all-F32 copy of a quantised file).
 * Also: the prompt one token per batch and a prompt longer than one prefill
 * chunk; the same tokens at expert budgets 0, 25% and 100% (experts stream,
 * tokens stall and are repaired: a repaired or dropped token must not apply
 * its recurrent state update twice); broken engines caught; and a context
 * holding a recurrent state refuses to be cut.
 */

import assert from "node:assert/strict";
import { loadModel } from "../src/model/model.ts";
import {
  type DeltaNetConfig,
  kvCacheBytesPerToken,
  type ModelConfig,
  recurrentStateBytes,
} from "../src/model/config.ts";
import { Rng } from "../src/util/rng.ts";
import { fixtureModel, type FixtureShape, type FixtureType } from "../dev/fixtures.ts";
import { checkBudgets, device, parityRun, parityUnavailableReason } from "./_parity.ts";
import { generate } from "../src/generate/session.ts";
import { Engine } from "../src/generate/engine.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { gpuTest } from "../dev/gpu.ts";

const TYPES: FixtureType[] = ["F32", "F16", "Q8_0", "Q4_K_M"];
const SHAPES: FixtureShape[] = ["a", "b"];
const ARCHS = ["qwen35moe", "qwen3next"] as const;

const skip = parityUnavailableReason();
if (skip) console.log(`skipping hybrid Qwen parity tests: ${skip}`);

for (const arch of ARCHS) {
  for (const shape of SHAPES) {
    Deno.test({
      name: `${arch} parity: shape ${shape}, F32/F16/Q8_0/Q4_K_M, 32 greedy tokens = llama.cpp`,
      ignore: skip !== null,
      sanitizeResources: false,
      async fn() {
        for (const [i, type] of TYPES.entries()) {
          await parityRun({ arch, shape, type }, `${arch}/${shape}/${type}`, i + 1);
        }
      },
    });
  }

  Deno.test({
    name:
      `${arch} parity: the prompt one token per batch, and a 40-token prompt over three prefill chunks = llama.cpp`,
    ignore: skip !== null,
    sanitizeResources: false,
    async fn() {
      await parityRun({ arch, shape: "a", type: "F32" }, `${arch}/a/F32 batch 1`, 5, {
        maxBatch: 1,
      });
      await parityRun({ arch, shape: "b", type: "Q8_0" }, `${arch}/b/Q8_0 prompt 40`, 6, {
        maxBatch: 16,
        promptLength: 40,
        generate: 16,
      });
    },
  });

  // Budget 0 stalls every token (a token repaired from a layer must not apply the state
  // updates of the layers after it twice); at 85% decode windows grow past one token and
  // a stall drops the tokens queued after it (they must leave the state alone).
  gpuTest({
    name: `${arch}: the same tokens at expert budgets 0, 25%, 85% and 100%`,
    sanitizeResources: false,
    async fn() {
      const path = await fixtureModel({ arch, shape: "a", type: "Q8_0" });
      const rng = new Rng(13);
      const prompt = Array.from({ length: 8 }, () => rng.int(3000));
      const runs = await checkBudgets(path, [0, 0.25, 0.85, 1], {
        prompt,
        maxTokens: 24,
        label: `${arch}/a/Q8_0`,
      });
      assert.ok(runs[0]!.stalls > 0, "at budget 0 tokens stall and are repaired");
    },
  });
}

Deno.test({
  name:
    "qwen3next parity: a file of an older converter (one fused ssm_in, split by rows at load) = llama.cpp",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    for (const [shape, type] of [["a", "F32"], ["b", "Q4_K_M"]] as const) {
      const opts = { arch: "qwen3next", shape, type, legacyInProj: true } as const;
      const file = readGgufModel(await fixtureModel(opts));
      assert.ok(
        file.tensorMap.has("blk.0.ssm_in.weight") && !file.tensorMap.has("blk.0.attn_qkv.weight"),
      );
      await parityRun(opts, `qwen3next/${shape}/${type} ssm_in`, 7);
    }
  },
});

// The lookahead predictor (the next layer's router on the residual stream entering this
// layer's MoE step) across DeltaNet layers: it must predict, and prediction must never
// change the tokens.
gpuTest({
  name: "hybrid Qwens: the lookahead predictor across DeltaNet layers prefetches; same tokens",
  sanitizeResources: false,
  async fn() {
    for (const arch of ARCHS) {
      const path = await fixtureModel({ arch, shape: "b", type: "Q8_0" });
      const prompt = [5, 17, 99, 230, 41, 7, 300, 12];
      const run = async (cacheSizeGB: number, enablePrefetch: boolean) => {
        const model = await loadModel({
          model: path,
          gpu: await device(),
          nCtx: 64,
          maxBatch: 4,
          cacheSizeGB,
          enablePrefetch,
        });
        try {
          const r = await generate(model, prompt, { maxTokens: 16 });
          return { tokens: r.tokens, p: model.prefetchStats };
        } finally {
          model.close();
        }
      };
      const resident = await run(4, false);
      const total = expertLayout(readGgufModel(path)).reduce(
        (n, l) => n + l.nExpert * l.bytesPerExpert,
        0,
      );
      const off = await run((0.4 * total) / 2 ** 30, false);
      const on = await run((0.4 * total) / 2 ** 30, true);
      assert.deepEqual(off.tokens, resident.tokens, `${arch}: tokens at 40% without prefetch`);
      assert.deepEqual(on.tokens, resident.tokens, `${arch}: tokens at 40% with lookahead`);
      const p = on.p!;
      assert.equal(p.predictor, "lookahead");
      assert.ok(p.prefetchUploads > 0, `${arch}: nothing prefetched`);
      assert.ok(
        p.recallByDistance[0]! > 0.3,
        `${arch}: next-layer recall ${p.recallByDistance[0]}`,
      );
      console.log(
        `${arch}/b/Q8_0 at 40%: stalls ${off.p!.stalls} without prefetch, ${p.stalls} with ` +
          `lookahead (next-layer recall ${p.recallByDistance[0]!.toFixed(2)}, accuracy ` +
          `${p.prefetchAccuracy.toFixed(2)})`,
      );
    }
  },
});

Deno.test({
  name: "hybrid Qwen parity: a deliberately broken engine is caught",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "qwen35moe", shape: "b", type: "F32" });
    const m = await loadModel({ model: path, gpu: await device(), nCtx: 64 });
    const c = m.config;
    m.close();
    const d = c.deltaNet!;
    const dn = (o: Partial<DeltaNetConfig>) => ({ deltaNet: { ...d, ...o } });
    // (a doubled state update, a missing conv or decay are caught by src/gpu/ops/delta_net_test.ts
    // against the CPU reference, and a doubled update on a repaired token by the budget tests)
    const broken: [string, Partial<ModelConfig>][] = [
      ["q/k heads shared the Qwen3-Next way", dn({ interleaved: !d.interleaved })],
      ["full rotary instead of partial", { nRot: c.headDimK }],
      ["no shared-expert gate", { sharedExpertGated: false }],
      ["no renormalised top-k", { normTopK: false }],
    ];
    for (const [what, override] of broken) {
      await assert.rejects(
        () => parityRun({ arch: "qwen35moe", shape: "b", type: "F32" }, what, 1, { override }),
        /logit diff|tokens differ/,
        what,
      );
    }
  },
});

// Prefix reuse through the engine: a prompt that extends the whole context (the next turn
// of a chat) keeps the recurrent state and the KV cache; one that leaves it part way
// starts over (the state cannot be cut), and so does the prompt cache of earlier
// sequences (off for these models). Tokens always equal computing the prompt afresh.
gpuTest({
  name:
    "hybrid Qwens: prefix reuse keeps a context the prompt extends, else starts over; same tokens",
  sanitizeResources: false,
  async fn() {
    for (const arch of ARCHS) {
      const model = await fixtureModel({ arch, shape: "a", type: "F32" });
      const e = await Engine.load({ model, gpu: await device(), nCtx: 128, maxBatch: 8 });
      try {
        const gen = async (prompt: number[], cachePrompt = true) => {
          const r = await e.generate({
            prompt,
            maxTokens: 8,
            sampling: { temperature: 0 },
            cachePrompt,
          });
          return [r.stats.cachedTokens, r.tokens] as const;
        };
        const a = e.tokenizer.encode("The quick brown fox jumps over the lazy dog.");
        const [, reply] = await gen(a, false);
        const more = e.tokenizer.encode(" Then it ran into the forest.", { addSpecial: false });
        const b = [...a, ...reply, ...more];
        const [cached, reused] = await gen(b);
        // the last reply token was never fed back: the context is a and the reply but that one
        assert.equal(
          cached,
          a.length + reply.length - 1,
          `${arch}: the next turn reused the context`,
        );
        assert.deepEqual(reused, (await gen(b, false))[1], `${arch}: reused = afresh`);
        // leaving the context part way: nothing reused (it cannot be cut), same tokens
        const c = [...a.slice(0, 5), ...more];
        const [cutCached, cut] = await gen(c);
        assert.equal(cutCached, 0, `${arch}: a context left part way is not reused`);
        assert.deepEqual(cut, (await gen(c, false))[1], `${arch}: cut prompt = afresh`);
        // back to b after another conversation: the prompt cache would have it; not for these
        const [again, back] = await gen(b);
        assert.equal(again, 0, `${arch}: no saved sequence restored`);
        assert.deepEqual(back, reused, `${arch}: the same tokens again`);
      } finally {
        e.close();
      }
    }
  },
});

gpuTest({
  name:
    "hybrid Qwens: a KV cache for the attention layers only, a fixed recurrent state for the DeltaNet ones",
  sanitizeResources: false,
  async fn() {
    const nCtx = 64;
    for (const arch of ARCHS) {
      const path = await fixtureModel({ arch, shape: "b", type: "F32" });
      const model = await loadModel({ model: path, gpu: await device(), nCtx, maxBatch: 4 });
      try {
        const c = model.config;
        const s = model.transformer.state;
        const attention = c.deltaNet!.recurrent.map((r) => !r);
        assert.ok(attention.some((a) => a) && attention.some((a) => !a), `${arch}: both kinds`);
        const kv = [...s.kCache, ...s.vCache].reduce((a, b) => a + (b.size > 4 ? b.size : 0), 0);
        assert.equal(kv / nCtx, kvCacheBytesPerToken(c), `${arch}: KV bytes per position`);
        const state = [...s.convState, ...s.ssmState].reduce(
          (a, b) => a + (b.size > 4 ? b.size : 0),
          0,
        );
        assert.equal(state, recurrentStateBytes(c), `${arch}: recurrent state bytes`);
        for (let l = 0; l < c.nLayer; l++) {
          assert.equal(s.kCache[l]!.size > 4, attention[l], `${arch} layer ${l}: KV cache`);
          assert.equal(s.ssmState[l]!.size > 4, !attention[l], `${arch} layer ${l}: state`);
        }
      } finally {
        model.close();
      }
    }
  },
});

gpuTest({
  name: "hybrid Qwen: a recurrent context can be kept whole or reset, not cut",
  sanitizeResources: false,
  async fn() {
    const path = await fixtureModel({ arch: "qwen35moe", shape: "a", type: "F32" });
    const model = await loadModel({ model: path, gpu: await device(), nCtx: 64 });
    try {
      assert.equal(model.canRewind, false);
      const first = await model.forward([5, 6, 7, 8]);
      assert.throws(() => model.truncate(2), /recurrent state/);
      model.truncate(4);
      const more = await model.forward([9]);
      model.truncate(0);
      assert.deepEqual(await model.forward([5, 6, 7, 8]), first, "reset: the state starts afresh");
      assert.deepEqual(await model.forward([9]), more, "the kept context continues the same");
    } finally {
      model.close();
    }
  },
});
