/**
 * Every generated test model loads in llama.cpp and gives informative logits:
 * each architecture × shape × {F32, F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K},
 * and GPT-OSS also with MXFP4 experts (`MXFP4_MOE`, `MXFP4_F16`).
 * Prints, per file, the tensor types llama.cpp's quantiser chose and how far
 * the file's logits are from the F32 file's.
 */

import assert from "node:assert/strict";
import {
  FIXTURE_SHAPES,
  fixtureModel,
  type FixtureShape,
  type FixtureType,
} from "../dev/fixtures.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";
import { SYNTHETIC_ARCHS, type SyntheticArch } from "../src/model/synthetic.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { isExpertTensor } from "../src/gguf/names.ts";

const unavailable = referenceUnavailableReason();
if (unavailable !== null) console.warn(`skipping llama.cpp model loading tests: ${unavailable}`);

const TYPES: FixtureType[] = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"];
/** Extra file types per architecture: GPT-OSS ships with MXFP4 experts. */
const EXTRA_TYPES: Partial<Record<SyntheticArch, FixtureType[]>> = {
  "gpt-oss": ["MXFP4_MOE", "MXFP4_F16"],
};
/**
 * The hybrid Qwens (gated DeltaNet state, conv) amplify weight rounding: on
 * shape a, llama.cpp's own all-F32 copy of the Q4_0 file is as far from the
 * F32 file (median 0.51 of the range) as the Q4_0 file itself (0.52), while
 * the two differ by 0.05 — the rounding of 4-bit weights, not a broken file
 * (an unrelated model is ≥ 1 away).
 */
const MAX_MEDIAN_DIFF: Partial<Record<SyntheticArch, number>> = { qwen35moe: 0.6, qwen3next: 0.6 };
const typesOf = (arch: SyntheticArch) => [...TYPES, ...EXTRA_TYPES[arch] ?? []];
/** The K-quant type each K-quant file type is named after. */
const K_BASE: Partial<Record<FixtureType, string>> = {
  Q4_K_M: "Q4_K",
  Q5_K_M: "Q5_K",
  Q6_K: "Q6_K",
};
const K_TYPES = new Set(["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]);
const PROMPT = "The quick brown fox jumps over the lazy dog, and 42 experts agree.";

interface Row {
  file: string;
  types: string;
  expertTypes: string;
  range: number;
  minGapPct: number;
  medianGapPct: number;
  vsF32Pct: [number, number];
  ms: number;
}
const rows: Row[] = [];

function typeCounts(names: string[]): string {
  const m = new Map<string, number>();
  for (const n of names) m.set(n, (m.get(n) ?? 0) + 1);
  return [...m].sort(([a], [b]) => a.localeCompare(b)).map(([t, n]) => `${t}×${n}`).join(" ");
}

function topTwo(v: Float32Array): [number, number, number] {
  let a = -Infinity;
  let b = -Infinity;
  let lo = Infinity;
  for (const x of v) {
    if (x > a) [a, b] = [x, a];
    else if (x > b) b = x;
    if (x < lo) lo = x;
  }
  return [a, b, lo];
}

for (const arch of SYNTHETIC_ARCHS) {
  for (const shape of Object.keys(FIXTURE_SHAPES[arch]) as FixtureShape[]) {
    Deno.test({
      name: `${arch}/${shape}: every file type loads in llama.cpp with informative logits`,
      ignore: unavailable !== null,
      async fn() {
        const ref = loadReference();
        let f32Logits: Float32Array[] | undefined;
        let prompt: number[] | undefined;
        for (const type of typesOf(arch)) {
          const t0 = performance.now();
          const path = await fixtureModel({ arch, shape, type });
          const file = `${arch}/${shape} ${type}`;
          using model = ref.loadModel(path);
          const gguf = readGgufModel(path);
          const nVocab = gguf.metadata.strings("tokenizer.ggml.tokens")!.length;
          assert.equal(model.nVocab, nVocab, file);
          assert.equal(model.nLayer, FIXTURE_SHAPES[arch][shape].nLayer, file);
          prompt ??= model.tokenize(PROMPT);
          assert.ok(prompt.length >= 8, `${file}: prompt tokenised to ${prompt.length} tokens`);
          const logits = model.logits(prompt);
          const ms = performance.now() - t0;

          let minRange = Infinity;
          const gaps: number[] = [];
          for (const [pos, l] of logits.entries()) {
            assert.ok(l.every(Number.isFinite), `${file}: non-finite logit at position ${pos}`);
            const [top1, top2, lo] = topTwo(l);
            minRange = Math.min(minRange, top1 - lo);
            gaps.push((top1 - top2) / (top1 - lo));
          }
          gaps.sort((a, b) => a - b);
          const median = gaps[gaps.length >> 1]!;
          // Informative: logits spread over many units, and typical top-1/top-2
          // gaps far above numeric noise (PARITY.md asks ≥ 0.3% of the range).
          assert.ok(minRange > 5, `${file}: logit range ${minRange} is too flat`);
          assert.ok(median > 0.003, `${file}: median top-1/top-2 gap ${median} of the range`);

          f32Logits ??= logits;
          const diffs = logits.map((l, pos) => {
            const base = f32Logits![pos]!;
            const [hi, , lo] = topTwo(base);
            let d = 0;
            for (let i = 0; i < l.length; i++) d = Math.max(d, Math.abs(l[i]! - base[i]!));
            return d / (hi - lo);
          }).sort((a, b) => a - b);
          const medianDiff = diffs[diffs.length >> 1]!;
          // A file that loads but holds garbage would be as far from F32 as an
          // unrelated model; a quantised one stays within a fraction of the
          // range except where rounding flips an expert choice (the max).
          assert.ok(
            medianDiff < (MAX_MEDIAN_DIFF[arch] ?? 0.25),
            `${file}: logits differ from F32 by ${medianDiff} of the range`,
          );

          const types = gguf.tensors.map((t) => t.type.name);
          // the expert matrices (GPT-OSS's expert biases stay F32)
          const expertTypes = gguf.tensors
            .filter((t) => isExpertTensor(t.name) && t.name.endsWith(".weight"))
            .map((t) => t.type.name);
          if (type.startsWith("MXFP4")) {
            assert.ok(expertTypes.every((t) => t === "MXFP4"), `${file}: experts ${expertTypes}`);
            const others = gguf.tensors.filter((t) => !isExpertTensor(t.name) && t.shape.length > 1)
              .map((t) => t.type.name);
            const want = type === "MXFP4_MOE" ? "Q8_0" : "F16";
            assert.ok(
              others.every((t) => t === want || t === "F32"),
              `${file}: other matrices ${others}`,
            );
          }
          const kBase = K_BASE[type];
          if (kBase !== undefined) {
            const kCount = types.filter((t) => K_TYPES.has(t)).length;
            if (shape === "b") {
              // Every row is a multiple of 256: the file really is a K-quant file.
              assert.ok(types.includes(kBase), `${file} holds no ${kBase} tensor: ${types}`);
              assert.ok(
                expertTypes.every((t) => K_TYPES.has(t)),
                `${file}: experts ${expertTypes}`,
              );
            } else {
              // No row is a multiple of 256: llama.cpp had to fall back everywhere.
              assert.equal(kCount, 0, `${file}: K-quant tensors with rows < 256?`);
            }
          }
          rows.push({
            file,
            types: typeCounts(types),
            expertTypes: typeCounts(expertTypes),
            range: minRange,
            minGapPct: gaps[0]! * 100,
            medianGapPct: median * 100,
            vsF32Pct: [medianDiff * 100, diffs.at(-1)! * 100],
            ms,
          });
        }
      },
    });
  }
}

Deno.test({
  name: "tensor types per generated file",
  ignore: unavailable !== null,
  fn() {
    const lines = [
      "file | tensor types | expert tensors | min logit range | top-1/top-2 gap min/median % | max |Δ| vs F32, % of range: median/worst position | ms",
      ...rows.map((r) =>
        `${r.file} | ${r.types} | ${r.expertTypes} | ${r.range.toFixed(1)} | ${
          r.minGapPct.toFixed(2)
        }/${r.medianGapPct.toFixed(1)} | ${r.vsF32Pct[0].toFixed(1)}/${
          r.vsF32Pct[1].toFixed(1)
        } | ${r.ms.toFixed(0)}`
      ),
    ];
    console.log(`\n${lines.join("\n")}`);
    assert.equal(rows.length, SYNTHETIC_ARCHS.reduce((n, a) => n + 2 * typesOf(a).length, 0));
  },
});
