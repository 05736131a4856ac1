/**
 * CPU references of the shadow model's forward pass, loss and gradients, in
 * float64, to check the GPU kernels against (tests) — not for speed.
 *
 * @module
 */

import { NONE } from "./kernels.ts";
import { shadowLayout, type ShadowShape } from "./shadow.ts";

/**
 * Forward pass of rows `x` ([R, nEmbd], normalised) read at `layers[r]`:
 * hidden units and logits ([R, depth·nExpert]), plus `extra` (the residual
 * mode's lookahead logits, laid out like the logits) when given.
 */
export function shadowForwardCpu(
  s: ShadowShape,
  p: Float32Array,
  x: Float32Array,
  layers: readonly number[],
  extra?: Float64Array,
): { h: Float64Array; logits: Float64Array } {
  const lay = shadowLayout(s);
  const { nEmbd: E, hidden: H } = s;
  const DN = s.depth * s.nExpert;
  const R = layers.length;
  const h = new Float64Array(R * H);
  const logits = new Float64Array(R * DN);
  for (let r = 0; r < R; r++) {
    const l = layers[r]!;
    for (let j = 0; j < H; j++) {
      let v = p[lay.b1 + l * H + j]!;
      for (let i = 0; i < E; i++) v += p[lay.w1 + j * E + i]! * x[r * E + i]!;
      h[r * H + j] = Math.max(0, v);
    }
    for (let o = 0; o < DN; o++) {
      let v = p[lay.b2 + l * DN + o]!;
      for (let j = 0; j < H; j++) v += p[lay.w2 + (l * DN + o) * H + j]! * h[r * H + j]!;
      logits[r * DN + o] = v + (extra?.[r * DN + o] ?? 0);
    }
  }
  return { h, logits };
}

/**
 * Mean softmax cross-entropy over the (row, distance) groups with targets
 * (`targets` u32 [R, depth, nExpertUsed], NONE pads) and its gradient with
 * respect to every parameter (flat, {@linkcode shadowLayout} order); `extra`
 * as in {@linkcode shadowForwardCpu}.
 */
export function shadowLossGradCpu(
  s: ShadowShape,
  p: Float32Array,
  x: Float32Array,
  layers: readonly number[],
  targets: Uint32Array,
  extra?: Float64Array,
): { loss: number; grad: Float64Array; groups: number } {
  const lay = shadowLayout(s);
  const { nEmbd: E, hidden: H, nExpert: N, depth: D, nExpertUsed: K } = s;
  const DN = D * N;
  const R = layers.length;
  const { h, logits } = shadowForwardCpu(s, p, x, layers, extra);
  const dLogits = new Float64Array(R * DN);
  let loss = 0;
  let groups = 0;
  for (let g = 0; g < R * D; g++) {
    const ts = [...targets.subarray(g * K, (g + 1) * K)].filter((t) => t !== NONE);
    if (ts.length > 0) groups++;
  }
  for (let g = 0; g < R * D; g++) {
    const ts = [...targets.subarray(g * K, (g + 1) * K)].filter((t) => t !== NONE);
    if (ts.length === 0) continue;
    const base = g * N;
    let mx = -Infinity;
    for (let e = 0; e < N; e++) mx = Math.max(mx, logits[base + e]!);
    let sum = 0;
    for (let e = 0; e < N; e++) sum += Math.exp(logits[base + e]! - mx);
    const logSum = Math.log(sum) + mx;
    for (const t of ts) loss -= (logits[base + t]! - logSum) / ts.length;
    for (let e = 0; e < N; e++) {
      const target = ts.includes(e) ? 1 / ts.length : 0;
      dLogits[base + e] = (Math.exp(logits[base + e]! - logSum) - target) / groups;
    }
  }
  const grad = new Float64Array(lay.total);
  for (let r = 0; r < R; r++) {
    const l = layers[r]!;
    const dh = new Float64Array(H);
    for (let o = 0; o < DN; o++) {
      const go = dLogits[r * DN + o]!;
      grad[lay.b2 + l * DN + o]! += go;
      for (let j = 0; j < H; j++) {
        grad[lay.w2 + (l * DN + o) * H + j]! += go * h[r * H + j]!;
        dh[j]! += go * p[lay.w2 + (l * DN + o) * H + j]!;
      }
    }
    for (let j = 0; j < H; j++) {
      if (h[r * H + j]! <= 0) continue;
      grad[lay.b1 + l * H + j]! += dh[j]!;
      for (let i = 0; i < E; i++) grad[lay.w1 + j * E + i]! += dh[j]! * x[r * E + i]!;
    }
  }
  return { loss: groups > 0 ? loss / groups : 0, grad, groups };
}
