/**
 * MiniMax-M2 (`minimax-m2`) against llama.cpp (PARITY.md): the 32 greedy
 * tokens after a 16-token prompt are llama.cpp's and every step's logits are
 * within 1% of its range, on generated models of both shapes — `a` with a
 * sigmoid router in F32 and Q8_0, `b` with a softmax router in F32 and
 * Q4_K_M (real K-quant blocks) — RoPE on part of each head, q/k norms over
 * the whole projection, the selection bias `exp_probs_b`. Quantised files
 * are compared with llama.cpp on its own all-F32 copy. And a deliberately
 * broken engine is caught.
 */

import assert from "node:assert/strict";
import type { ModelConfig } from "../src/model/config.ts";
import type { FixtureOptions } from "../dev/fixtures.ts";
import {
  type ParityResult,
  parityRun,
  type ParityRunOptions,
  parityUnavailableReason,
} from "./_parity.ts";

const skip = parityUnavailableReason();
if (skip) console.log(`skipping minimax-m2 parity tests: ${skip}`);

const results: (ParityResult & { label: string })[] = [];

async function parity(opts: FixtureOptions, seed: number, o: ParityRunOptions = {}) {
  const label = `${opts.arch}/${opts.shape}/${opts.type}`;
  const check = (c: ModelConfig) => {
    // what this architecture adds over the others: partial RoPE and the selection bias
    assert.ok(c.nRot < c.headDimK, `${label}: RoPE on ${c.nRot} of ${c.headDimK} dims`);
  };
  results.push({
    ...(await parityRun(
      opts,
      label,
      seed,
      o.override ? o : { ...o, check: (m) => check(m.config) },
    )),
    label,
  });
}

Deno.test({
  name: "minimax-m2 parity: shapes a (F32, Q8_0) and b (F32, Q4_K_M), 32 greedy tokens = llama.cpp",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    await parity({ arch: "minimax-m2", shape: "a", type: "F32" }, 1);
    await parity({ arch: "minimax-m2", shape: "a", type: "Q8_0" }, 2);
    await parity({ arch: "minimax-m2", shape: "b", type: "F32" }, 3);
    await parity({ arch: "minimax-m2", shape: "b", type: "Q4_K_M" }, 4);
  },
});

Deno.test({
  name: "minimax-m2 parity: a deliberately broken engine is caught",
  ignore: skip !== null,
  sanitizeResources: false,
  async fn() {
    const broken: [string, Partial<ModelConfig>][] = [
      ["RoPE on the whole head", { nRot: 32 }],
      ["no q/k norm", { qkNorm: "none" }],
      ["softmax router", { gating: "softmax" }],
      ["top-k weights not renormalised", { normTopK: false }],
    ];
    for (const [what, override] of broken) {
      await assert.rejects(
        () => parity({ arch: "minimax-m2", shape: "a", type: "F32" }, 1, { override }),
        /logit diff|tokens differ/,
        what,
      );
    }
  },
});

Deno.test({
  name: "minimax-m2 parity: summary",
  ignore: skip !== null,
  fn() {
    console.log(
      "\n" +
        results.map((r) =>
          `${r.label.padEnd(28)} ${r.tokens} tokens match, max |Δlogit| ${
            (r.maxRel * 100).toFixed(5)
          }% of range, smallest top-2 gap ${(r.worst * 100).toFixed(2)}%`
        ).join("\n"),
    );
  },
});
