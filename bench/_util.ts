/**
 * Helpers shared by the benchmarks: medians, timing, number rounding for
 * JSON, a raw-memcpy reference, the weight bytes one decoded token reads,
 * deterministic prompts, and a small SVG line-chart writer.
 *
 * @module
 */

import type { GgufTensorInfo } from "../src/gguf/reader.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { EXPERT_TENSOR_PATTERN } from "../src/gguf/names.ts";

/** The median of `xs` (the mean of the middle two for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** `fn`'s result and its wall time in milliseconds. */
export async function timed<T>(fn: () => T | Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

/** `x` rounded to `digits` significant digits (JSON reads better; NaN/∞ → null). */
export function sig(x: number, digits = 4): number | null {
  if (!Number.isFinite(x)) return null;
  if (x === 0) return 0;
  return Number(x.toPrecision(digits));
}

/** A deep copy of `v` with every number rounded by {@linkcode sig}. */
export function roundNumbers<T>(v: T, digits = 4): T {
  if (typeof v === "number") return (Number.isInteger(v) ? v : sig(v, digits)) as T;
  if (Array.isArray(v)) return v.map((x) => roundNumbers(x, digits)) as T;
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => [k, roundNumbers(x, digits)]),
    ) as T;
  }
  return v;
}

/** Prints a line to stderr (progress and summaries; stdout carries only JSON). */
export function note(msg: string): void {
  console.error(msg);
}

/**
 * Raw memcpy bandwidth of this machine, the ceiling a CPU-side weight read
 * is compared with: the median GB/s (bytes copied / s / 1e9; each byte is read
 * once and written once) of `TypedArray.set` over `bytes`, after one
 * untimed copy that faults the pages in.
 */
export function memcpyGBps(bytes = 256 * 2 ** 20, iters = 5): number {
  const src = new Uint8Array(bytes).fill(1);
  const dst = new Uint8Array(bytes);
  dst.set(src);
  const rates: number[] = [];
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    dst.set(src);
    rates.push(bytes / (performance.now() - t0) / 1e6);
  }
  return median(rates);
}

/** Bytes of weights one decoded token reads. */
export interface TokenWeightBytes {
  /** Base weights: every tensor but the routed experts; one row of the embeddings (all of them when tied to the output). */
  base: number;
  /** The chosen experts: `nExpertUsed` experts of every MoE layer. */
  experts: number;
  /** `base + experts`. */
  total: number;
  /** Every routed expert of the file. */
  allExperts: number;
  /** Bytes of one expert (of the first MoE layer). */
  bytesPerExpert: number;
}

/**
 * The weight bytes read per decoded token of a model whose tensor table is
 * `tensors`, choosing `nExpertUsed` experts per MoE layer. The embedding
 * table contributes one row unless it is also the output head (no
 * `output.weight`), in which case all of it is read.
 */
export function tokenWeightBytes(
  tensors: readonly GgufTensorInfo[],
  nExpertUsed: number,
): TokenWeightBytes {
  const tied = !tensors.some((t) => t.name === "output.weight");
  let base = 0;
  for (const t of tensors) {
    if (EXPERT_TENSOR_PATTERN.test(t.name)) continue;
    if (t.name === "token_embd.weight" && !tied) {
      base += t.nBytes / t.shape[t.shape.length - 1]!;
    } else base += t.nBytes;
  }
  const layers = expertLayout({ tensors });
  const experts = layers.reduce(
    (s, l) => s + Math.min(nExpertUsed, l.nExpert) * l.bytesPerExpert,
    0,
  );
  const allExperts = layers.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0);
  return {
    base,
    experts,
    total: base + experts,
    allExperts,
    bytesPerExpert: layers[0]?.bytesPerExpert ?? 0,
  };
}

/**
 * A deterministic prompt of `n` ordinary token ids: spread over
 * `[16, min(nVocab, 2000))`, clear of the control tokens that generated
 * vocabularies put first or last.
 */
export function benchPrompt(n: number, nVocab: number): number[] {
  const span = Math.max(1, Math.min(nVocab, 2000) - 16);
  return Array.from({ length: n }, (_, i) => 16 + (i * 7919 + 13) % span);
}

/** The first index where `a` and `b` differ, or null when one is a prefix of the other. */
export function firstDivergence(a: readonly number[], b: readonly number[]): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return null;
}

/** One line of a {@linkcode lineChartSvg} chart. */
export interface ChartSeries {
  /** Legend text. */
  name: string;
  /** Which y axis it is read against. */
  axis: "left" | "right";
  /** Stroke colour. */
  color: string;
  /** Points (x, y), in x order. */
  points: readonly (readonly [number, number])[];
  /** Dashed stroke. */
  dashed?: boolean;
}

/** What {@linkcode lineChartSvg} draws. */
export interface LineChart {
  /** Title, above the plot. */
  title: string;
  /** A second, smaller title line (model, device). */
  subtitle?: string;
  /** x axis label. */
  xLabel: string;
  /** Left y axis label. */
  leftLabel: string;
  /** Right y axis label (omit for a single axis). */
  rightLabel?: string;
  /** x range. */
  xRange: readonly [number, number];
  /** Left y range. */
  leftRange: readonly [number, number];
  /** Right y range. */
  rightRange?: readonly [number, number];
  /** x tick values, with their text. */
  xTicks: readonly (readonly [number, string])[];
  /** How to write left/right tick values. */
  leftFormat?: (v: number) => string;
  /** How to write right tick values. */
  rightFormat?: (v: number) => string;
  /** The lines. */
  series: readonly ChartSeries[];
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** Five "nice" tick values covering `[lo, hi]`. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  const span = hi - lo || 1;
  const raw = span / (count - 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/**
 * An upper bound for an axis whose data reach `max`, split into `divisions`
 * equal "nice" steps (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × a power of ten).
 */
export function niceMax(max: number, divisions = 4): number {
  if (!(max > 0)) return divisions;
  const raw = max / divisions;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find((m) => m * mag >= raw * (1 - 1e-12))!;
  return Number((step * mag * divisions).toPrecision(12));
}

/**
 * An SVG line chart with one or two y axes, markers at the points, a grid
 * and a legend — enough to read a benchmark's curve without a plotting
 * dependency. Returns the SVG text.
 */
export function lineChartSvg(c: LineChart): string {
  const W = 760, H = 460;
  const m = { left: 78, right: c.rightLabel ? 78 : 30, top: c.subtitle ? 74 : 56, bottom: 64 };
  const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
  const px = (x: number) => m.left + ((x - c.xRange[0]) / (c.xRange[1] - c.xRange[0] || 1)) * pw;
  const py = (y: number, r: readonly [number, number]) =>
    m.top + ph - ((y - r[0]) / (r[1] - r[0] || 1)) * ph;
  const fmtL = c.leftFormat ?? ((v: number) => String(v));
  const fmtR = c.rightFormat ?? ((v: number) => String(v));
  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="Helvetica, Arial, sans-serif" font-size="13">`,
  );
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(
    `<text x="${W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">${
      esc(c.title)
    }</text>`,
  );
  if (c.subtitle) {
    o.push(
      `<text x="${W / 2}" y="46" text-anchor="middle" font-size="12" fill="#555">${
        esc(c.subtitle)
      }</text>`,
    );
  }
  // grid and left ticks
  for (const v of niceTicks(c.leftRange[0], c.leftRange[1])) {
    const y = py(v, c.leftRange);
    o.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`);
    o.push(
      `<text x="${m.left - 8}" y="${y + 4}" text-anchor="end" fill="#333">${esc(fmtL(v))}</text>`,
    );
  }
  if (c.rightRange) {
    // right ticks on the left ticks' grid lines
    const [l0, l1] = c.leftRange;
    const [r0, r1] = c.rightRange;
    for (const lv of niceTicks(l0, l1)) {
      const v = Number((r0 + ((lv - l0) / (l1 - l0 || 1)) * (r1 - r0)).toPrecision(6));
      const y = py(lv, c.leftRange);
      o.push(
        `<text x="${m.left + pw + 8}" y="${y + 4}" text-anchor="start" fill="#333">${
          esc(fmtR(v))
        }</text>`,
      );
    }
  }
  for (const [v, label] of c.xTicks) {
    const x = px(v);
    o.push(`<line x1="${x}" x2="${x}" y1="${m.top}" y2="${m.top + ph}" stroke="#f0f0f0"/>`);
    o.push(
      `<text x="${x}" y="${m.top + ph + 20}" text-anchor="middle" fill="#333">${esc(label)}</text>`,
    );
  }
  o.push(
    `<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
  );
  // axis labels
  o.push(
    `<text x="${m.left + pw / 2}" y="${H - 16}" text-anchor="middle">${esc(c.xLabel)}</text>`,
  );
  const leftColor = c.series.find((s) => s.axis === "left")?.color ?? "#333";
  const rightColor = c.series.find((s) => s.axis === "right")?.color ?? "#333";
  o.push(
    `<text transform="translate(20 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" ` +
      `fill="${leftColor}">${esc(c.leftLabel)}</text>`,
  );
  if (c.rightLabel) {
    o.push(
      `<text transform="translate(${W - 18} ${m.top + ph / 2}) rotate(90)" text-anchor="middle" ` +
        `fill="${rightColor}">${esc(c.rightLabel)}</text>`,
    );
  }
  // lines and markers
  for (const s of c.series) {
    const r = s.axis === "left" ? c.leftRange : c.rightRange ?? c.leftRange;
    const pts = s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y, r).toFixed(1)}`);
    o.push(
      `<polyline points="${pts.join(" ")}" fill="none" stroke="${s.color}" stroke-width="2.5"${
        s.dashed ? ' stroke-dasharray="7 5"' : ""
      }/>`,
    );
    for (const [x, y] of s.points) {
      o.push(
        `<circle cx="${px(x).toFixed(1)}" cy="${py(y, r).toFixed(1)}" r="4.5" fill="${s.color}"/>`,
      );
    }
  }
  // legend, top left inside the plot
  c.series.forEach((s, i) => {
    const y = m.top + 18 + i * 20;
    const x = m.left + 14;
    o.push(
      `<rect x="${x - 6}" y="${y - 13}" width="${
        esc(s.name).length * 7 + 44
      }" height="19" fill="white" fill-opacity="0.85"/>`,
    );
    o.push(
      `<line x1="${x}" x2="${x + 24}" y1="${y - 4}" y2="${y - 4}" stroke="${s.color}" ` +
        `stroke-width="2.5"${s.dashed ? ' stroke-dasharray="7 5"' : ""}/>`,
    );
    o.push(`<text x="${x + 32}" y="${y}">${esc(s.name)}</text>`);
  });
  o.push(`</svg>`);
  return o.join("\n") + "\n";
}

/** Writes `text` to `path`, making its directory first. */
export async function writeTextFileMkdir(path: string, text: string): Promise<void> {
  const dir = path.replace(/\/[^/]*$/, "");
  if (dir && dir !== path) await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(path, text);
}

/** Parses a positive integer flag value, or throws naming the flag. */
export function intFlag(name: string, v: string | undefined, def: number, min = 1): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new RangeError(`--${name} must be an integer ≥ ${min}, got "${v}"`);
  }
  return n;
}

/** Parses a non-negative number flag value, or throws naming the flag. */
export function numFlag(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!(n >= 0)) throw new RangeError(`--${name} must be a number ≥ 0, got "${v}"`);
  return n;
}
