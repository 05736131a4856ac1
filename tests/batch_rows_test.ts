/**
 * Continuous batching at the model level: a batch mixing several sequences
 * (each in its own KV region, at its own positions) gives every sequence the
 * logits it gets alone — for the attention kinds the fixtures have (grouped
 * heads, sliding windows and sinks on gpt-oss, MLA on deepseek2), with every
 * expert resident and with experts streaming (a repaired batch).
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { fixtureModel } from "../dev/fixtures.ts";
import { autoSequences, loadModel } from "../src/model/model.ts";
import type { ModelConfig } from "../src/model/config.ts";
import type { SyntheticArch } from "../src/model/synthetic.ts";

/** Largest absolute difference between two logit vectors. */
function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

for (const arch of ["qwen3moe", "gpt-oss", "deepseek2"] as const) {
  for (const budget of ["resident", "streaming"] as const) {
    gpuTest({
      name: `forwardRows: ${arch}, experts ${budget}: each sequence's logits as when it runs alone`,
      sanitizeResources: false,
      async fn(gpu) {
        const path = await fixtureModel({ arch: arch as SyntheticArch, type: "F32", shape: "a" });
        const model = await loadModel({
          model: path,
          gpu,
          nCtx: 64,
          maxBatch: 32,
          maxSequences: 4,
          cacheSizeGB: budget === "streaming" ? 0 : 4,
          onWarning: () => {},
        });
        try {
          const V = model.config.nVocab;
          const prompts = [
            [1, 5, 9, 13, 17, 21, 25],
            [2, 4, 6],
            [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43],
          ].map((p) => p.map((t) => t % V));
          // alone: the single-sequence path, prompt then three greedy steps
          const alone: Float32Array[][] = [];
          const follow: number[][] = [];
          for (const p of prompts) {
            model.reset();
            const steps = [await model.forward(p)];
            const ids: number[] = [];
            for (let i = 0; i < 3; i++) {
              ids.push(argmax(steps[steps.length - 1]!));
              steps.push(await model.forward([ids[i]!]));
            }
            alone.push(steps.map((s) => new Float32Array(s)));
            follow.push(ids);
          }
          // together: sequence i in region i + 1, prompts in one batch, then each step in one batch
          const first = await model.forwardRows(
            prompts.map((tokens, i) => ({ sequence: i + 1, pos: 0, tokens })),
          );
          const mixed = [first.map((l) => new Float32Array(l))];
          for (let s = 0; s < 3; s++) {
            const out = await model.forwardRows(
              prompts.map((p, i) => ({
                sequence: i + 1,
                pos: p.length + s,
                tokens: [follow[i]![s]!],
              })),
            );
            mixed.push(out.map((l) => new Float32Array(l)));
          }
          for (let i = 0; i < prompts.length; i++) {
            for (let s = 0; s <= 3; s++) {
              const a = alone[i]![s]!, b = mixed[s]![i]!;
              assert.equal(argmax(b), argmax(a), `sequence ${i}, step ${s}: the same top token`);
              assert.ok(
                maxDiff(a, b) < 1e-4,
                `sequence ${i}, step ${s}: logits differ by ${maxDiff(a, b)}`,
              );
            }
          }
          if (budget === "streaming") {
            assert.ok(model.stalls > 0, "the streaming run repaired batches");
          }
        } finally {
          model.close();
        }
      },
    });
  }
}

Deno.test("autoSequences: 4 where their KV fits 1 GiB and a binding; fewer at long contexts; 1 with a recurrent state", () => {
  const c = {
    nLayer: 48,
    nHead: 32,
    nHeadKv: 4,
    headDimK: 128,
    headDimV: 128,
  } as unknown as ModelConfig; // Qwen3-30B-A3B's attention: 48 × 4 KiB of f32 K and V per token
  const limit = 128 * 2 ** 20;
  assert.equal(autoSequences(c, 256, limit, 64), 4);
  assert.equal(autoSequences(c, 4096, limit, 64), 1, "4096 × 192 KiB is 768 MiB a sequence");
  assert.equal(autoSequences(c, 1024, limit, 64), 4, "192 MiB a sequence");
  assert.equal(autoSequences(c, 2048, limit, 64), 2);
  assert.equal(autoSequences(c, 256, limit, 2), 2, "at most the batch size");
  assert.equal(autoSequences({ ...c, deltaNet: {} } as unknown as ModelConfig, 256, limit, 64), 1);
});
