/**
 * Offline evaluation of predictors on a routing dataset: recall@k per
 * lookahead distance — of the experts a layer chose, the fraction found among
 * the predictor's k best for that layer (k = the model's experts per token) —
 * and the same for the next token's layers. GPU predictors run their own
 * kernels over the dataset's hidden states in chunks; the history predictor
 * replays the tokens in order.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer, readback, upload } from "../gpu/buffers.ts";
import { STEP } from "../gpu/ops/op.ts";
import type { RoutingDataset } from "./data.ts";
import {
  type ExpertPredictor,
  type HiddenSource,
  HistoryPredictor,
} from "../predictor/predictor.ts";

/** Recall figures of one predictor. */
export interface RecallFigures {
  /** The predictor. */
  name: string;
  /** k of recall@k. */
  k: number;
  /** Recall@k per distance (index 0: one layer ahead), targets within the token. */
  recall: number[];
  /** Targets counted per distance. */
  counts: number[];
  /** Recall@k of predictions for the next token's layers (NaN when the predictor makes none). */
  nextToken: number;
}

function figures(
  name: string,
  k: number,
  hits: number[],
  counts: number[],
  nextHits: number,
  nextCount: number,
): RecallFigures {
  return {
    name,
    k,
    recall: hits.map((h, d) => (counts[d]! > 0 ? h / counts[d]! : NaN)),
    counts,
    nextToken: nextCount > 0 ? nextHits / nextCount : NaN,
  };
}

function overlap(pred: ArrayLike<number>, k: number, actual: Uint32Array, off: number, K: number) {
  let n = 0;
  for (let j = 0; j < K; j++) {
    const e = actual[off + j]!;
    for (let r = 0; r < k && r < pred.length; r++) {
      if (pred[r] === e) {
        n++;
        break;
      }
    }
  }
  return n;
}

/**
 * Recall@k of a GPU predictor built by `make` over a {@linkcode HiddenSource}
 * that feeds it the dataset's hidden states, `chunk` tokens at a time.
 */
export async function evaluateGpuPredictor(
  gpu: Gpu,
  data: RoutingDataset,
  make: (source: HiddenSource) => Promise<ExpertPredictor>,
  o: { k?: number; chunk?: number } = {},
): Promise<RecallFigures> {
  const { nLayer: L, nEmbd: E, nExpertUsed: K, nSamples: S } = data;
  const chunk = Math.max(1, Math.min(o.chunk ?? 128, S));
  const x = createBuffer(gpu, { label: "eval.hidden", size: 4 * chunk * L * E });
  const step = createBuffer(gpu, {
    label: "eval.step",
    size: 4 * STEP.length,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const source: HiddenSource = {
    hidden: (l) => ({ buffer: x, offset: l * E, stride: L * E }),
    step,
    maxTokens: chunk,
  };
  const p = await make(source);
  const k = o.k ?? K;
  const D = p.depth;
  const hits = new Array(D).fill(0);
  const counts = new Array(D).fill(0);
  let nextHits = 0;
  let nextCount = 0;
  try {
    for (let s0 = 0; s0 < S; s0 += chunk) {
      const T = Math.min(chunk, S - s0);
      upload(gpu, x, data.hidden.subarray(s0 * L * E, (s0 + T) * L * E));
      const st = new Uint32Array(STEP.length);
      st[STEP.nTokens] = T;
      st[STEP.nKv] = T;
      upload(gpu, step, st);
      const enc = gpu.device.createCommandEncoder({ label: "eval" });
      p.record!(enc, T);
      gpu.submit(enc);
      const [bytes] = await readback(gpu, [{
        buffer: p.output!,
        offset: 0,
        size: 4 * T * L * D * p.topK,
      }]);
      const out = new Uint32Array(bytes!);
      for (let t = 0; t < T; t++) {
        const s = s0 + t;
        const next = s + 1 < S && data.sequence[s + 1] === data.sequence[s] ? s + 1 : -1;
        for (let l = 0; l < L; l++) {
          for (const pr of p.predict(l, out, t)) {
            if (!pr.nextToken) {
              hits[pr.distance - 1] += overlap(
                pr.experts,
                k,
                data.routes,
                (s * L + pr.layer) * K,
                K,
              );
              counts[pr.distance - 1] += K;
            } else if (next >= 0) {
              nextHits += overlap(pr.experts, k, data.routes, (next * L + pr.layer) * K, K);
              nextCount += K;
            }
          }
        }
      }
    }
  } finally {
    p.destroy?.();
    x.destroy();
    step.destroy();
  }
  return figures(p.name, k, hits, counts, nextHits, nextCount);
}

/**
 * Recall@k of the history predictor replaying the dataset in order: each
 * token is predicted from the tokens before it, then observed.
 */
export function evaluateHistory(
  data: RoutingDataset,
  o: { depth?: number; k?: number; decay?: number } = {},
): RecallFigures {
  const { nLayer: L, nExpertUsed: K, nSamples: S } = data;
  const depth = o.depth ?? 1;
  const k = o.k ?? K;
  const h = new HistoryPredictor(L, data.nExpert, K, { depth, topK: k, decay: o.decay });
  const hits = new Array(depth).fill(0);
  const counts = new Array(depth).fill(0);
  let nextHits = 0;
  let nextCount = 0;
  for (let s = 0; s < S; s++) {
    const top = Array.from({ length: L }, (_, l) => h.top(l, k));
    // The previous token's predictions for this token's layers (next-token figures).
    if (s > 0 && data.sequence[s - 1] === data.sequence[s]) {
      for (let l = 0; l < depth && l < L; l++) {
        nextHits += overlap(top[l]!, k, data.routes, (s * L + l) * K, K);
        nextCount += K;
      }
    }
    for (let l = 0; l < L; l++) {
      for (let d = 0; d < depth; d++) {
        const t = l + 1 + d;
        if (t >= L) continue;
        hits[d] += overlap(top[t]!, k, data.routes, (s * L + t) * K, K);
        counts[d] += K;
      }
    }
    h.observe(data.routes.subarray(s * L * K, (s + 1) * L * K), 1);
  }
  return figures("history", k, hits, counts, nextHits, nextCount);
}
