/**
 * Routing datasets: what `deno task collect` records and `deno task
 * train-shadow` reads. One sample per token: the hidden state entering every
 * layer's MoE step (RMS-normalised, no weight: the predictors' input), the
 * experts every layer chose, and which sequence and position the token had.
 *
 * File: safetensors with `hidden` F16 or F32 [nSamples, nLayer, nEmbd],
 * `routes` U32 [nSamples, nLayer, nExpertUsed], `sequence` and `position`
 * I32 [nSamples], and optionally `routers` F32 [nLayer, nExpert, nEmbd] (the
 * routers with the FFN norms folded in); metadata `format: od-moe-routing`,
 * the model's sizes and name. Samples of a sequence are consecutive, in
 * position order.
 *
 * @module
 */

import { f16ToF32, f32ToF16Array } from "../gguf/f16.ts";
import { openSafetensors, writeSafetensors } from "../safetensors/mod.ts";
import { Rng } from "../util/rng.ts";
import { NONE } from "../predictor/kernels.ts";

/** A routing dataset in memory. */
export interface RoutingDataset {
  /** Layers of the model. */
  readonly nLayer: number;
  /** Hidden size. */
  readonly nEmbd: number;
  /** Experts per layer. */
  readonly nExpert: number;
  /** Experts chosen per token. */
  readonly nExpertUsed: number;
  /** Samples (tokens). */
  readonly nSamples: number;
  /** f32 [nSamples, nLayer, nEmbd]: normalised hidden states. */
  readonly hidden: Float32Array;
  /** u32 [nSamples, nLayer, nExpertUsed]: the chosen experts. */
  readonly routes: Uint32Array;
  /** i32 [nSamples]: the sequence (prompt) of each sample. */
  readonly sequence: Int32Array;
  /** i32 [nSamples]: its position in the sequence. */
  readonly position: Int32Array;
  /**
   * f32 [nLayer, nExpert, nEmbd]: each layer's router with its `ffn_norm`
   * weight folded in, so `routers[l] · x̂` are layer l's router logits (up to
   * the norm's epsilon); for the shadow model's residual mode.
   */
  readonly routers?: Float32Array;
  /** Facts about the source (model name, prompts). */
  readonly info: Readonly<Record<string, string>>;
}

const FORMAT = "od-moe-routing";

/** `x / sqrt(mean(x²) + eps)` of each `n`-long row of `x`, in place. */
export function rmsNormalizeRows(x: Float32Array, n: number, eps = 1e-6): Float32Array {
  for (let r = 0; r < x.length; r += n) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[r + i]! * x[r + i]!;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) x[r + i]! *= inv;
  }
  return x;
}

/** Writes a dataset; `dtype` of the hidden states F16 (default, half the bytes) or F32. */
export async function writeDataset(
  path: string,
  d: RoutingDataset,
  dtype: "F16" | "F32" = "F16",
): Promise<void> {
  const u8 = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const hidden = dtype === "F16" ? u8(f32ToF16Array(d.hidden)) : u8(d.hidden);
  await writeSafetensors(path, [
    { name: "hidden", dtype, shape: [d.nSamples, d.nLayer, d.nEmbd], data: hidden },
    {
      name: "routes",
      dtype: "U32",
      shape: [d.nSamples, d.nLayer, d.nExpertUsed],
      data: u8(d.routes),
    },
    { name: "sequence", dtype: "I32", shape: [d.nSamples], data: u8(d.sequence) },
    { name: "position", dtype: "I32", shape: [d.nSamples], data: u8(d.position) },
    ...(d.routers
      ? [{
        name: "routers",
        dtype: "F32" as const,
        shape: [d.nLayer, d.nExpert, d.nEmbd],
        data: u8(d.routers),
      }]
      : []),
  ], {
    metadata: {
      ...d.info,
      format: FORMAT,
      n_layer: String(d.nLayer),
      n_embd: String(d.nEmbd),
      n_expert: String(d.nExpert),
      n_expert_used: String(d.nExpertUsed),
    },
  });
}

/** Reads a dataset written by {@linkcode writeDataset}. */
export function readDataset(path: string): RoutingDataset {
  const f = openSafetensors(path);
  try {
    const m = f.metadata;
    if (m["format"] !== FORMAT) {
      throw new Error(
        `${path}: not a routing dataset (metadata format ${JSON.stringify(m["format"])}, ` +
          `expected "${FORMAT}"); make one with deno task collect`,
      );
    }
    const int = (k: string) => {
      const v = Number(m[k]);
      if (!Number.isInteger(v) || v < 1) throw new Error(`${path}: metadata ${k} = ${m[k]}`);
      return v;
    };
    const nLayer = int("n_layer");
    const nEmbd = int("n_embd");
    const nExpert = int("n_expert");
    const nExpertUsed = int("n_expert_used");
    const h = f.tensor("hidden");
    const nSamples = h.shape[0] ?? 0;
    const expect = (name: string, dims: number[], dtypes: string[]) => {
      const t = f.tensor(name);
      if (!dtypes.includes(t.dtype) || t.shape.join(",") !== dims.join(",")) {
        throw new Error(
          `${path}: tensor ${name} is ${t.dtype} ${JSON.stringify(t.shape)}, expected ` +
            `${dtypes.join("|")} ${JSON.stringify(dims)}`,
        );
      }
      return f.bytes(t).slice().buffer;
    };
    const hb = expect("hidden", [nSamples, nLayer, nEmbd], ["F16", "F32"]);
    let hidden: Float32Array;
    if (h.dtype === "F16") {
      const half = new Uint16Array(hb);
      hidden = new Float32Array(half.length);
      for (let i = 0; i < half.length; i++) hidden[i] = f16ToF32(half[i]!);
    } else {
      hidden = new Float32Array(hb);
    }
    const info: Record<string, string> = {};
    for (const [k, v] of Object.entries(m)) info[k] = v;
    return {
      nLayer,
      nEmbd,
      nExpert,
      nExpertUsed,
      nSamples,
      hidden,
      routes: new Uint32Array(expect("routes", [nSamples, nLayer, nExpertUsed], ["U32"])),
      sequence: new Int32Array(expect("sequence", [nSamples], ["I32"])),
      position: new Int32Array(expect("position", [nSamples], ["I32"])),
      routers: f.has("routers")
        ? new Float32Array(expect("routers", [nLayer, nExpert, nEmbd], ["F32"]))
        : undefined,
      info,
    };
  } finally {
    f.close();
  }
}

/**
 * Training targets u32 `[nSamples, nLayer, depth, nExpertUsed]`: for source
 * layer l and distance d, the experts layer l+1+d chose — past the last layer,
 * the next token's layer l+1+d−nLayer when the next sample continues the same
 * sequence; NONE where there is no such layer.
 */
export function targetsFor(d: RoutingDataset, depth: number): Uint32Array {
  const { nSamples: S, nLayer: L, nExpertUsed: K } = d;
  const out = new Uint32Array(S * L * depth * K).fill(NONE);
  for (let s = 0; s < S; s++) {
    const next = s + 1 < S && d.sequence[s + 1] === d.sequence[s] ? s + 1 : -1;
    for (let l = 0; l < L; l++) {
      for (let k = 0; k < depth; k++) {
        const t = l + 1 + k;
        const from = t < L ? s : next;
        if (from < 0 || t >= 2 * L) continue;
        const layer = t % L;
        const o = ((s * L + l) * depth + k) * K;
        for (let j = 0; j < K; j++) out[o + j] = d.routes[(from * L + layer) * K + j]!;
      }
    }
  }
  return out;
}

/**
 * Splits the samples by sequence: `valFraction` of the sequences (at least
 * one, when there are two or more) are held out, chosen with `seed`.
 */
export function splitBySequence(
  d: RoutingDataset,
  valFraction: number,
  seed = 1,
): { train: number[]; val: number[] } {
  const seqs = [...new Set(d.sequence)];
  const rng = new Rng(seed);
  for (let i = seqs.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [seqs[i], seqs[j]] = [seqs[j]!, seqs[i]!];
  }
  let nVal = Math.round(seqs.length * valFraction);
  if (valFraction > 0 && seqs.length >= 2) nVal = Math.min(seqs.length - 1, Math.max(1, nVal));
  const held = new Set(seqs.slice(0, nVal));
  const train: number[] = [];
  const val: number[] = [];
  for (let s = 0; s < d.nSamples; s++) (held.has(d.sequence[s]!) ? val : train).push(s);
  return { train, val };
}

/** The samples `idx` of a dataset as a dataset of their own (sequence order kept). */
export function subsetDataset(d: RoutingDataset, idx: readonly number[]): RoutingDataset {
  const { nLayer: L, nEmbd: E, nExpertUsed: K } = d;
  const hidden = new Float32Array(idx.length * L * E);
  const routes = new Uint32Array(idx.length * L * K);
  const sequence = new Int32Array(idx.length);
  const position = new Int32Array(idx.length);
  idx.forEach((s, i) => {
    hidden.set(d.hidden.subarray(s * L * E, (s + 1) * L * E), i * L * E);
    routes.set(d.routes.subarray(s * L * K, (s + 1) * L * K), i * L * K);
    sequence[i] = d.sequence[s]!;
    position[i] = d.position[s]!;
  });
  return { ...d, nSamples: idx.length, hidden, routes, sequence, position };
}
