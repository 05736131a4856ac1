/**
 * The second half of the demo model's build, after train.py: quantise the
 * F32 GGUF to Q8_0 with llama.cpp's quantiser, copy the held-out text, then
 * measure held-out perplexity with llama.cpp and od-moe on the committed
 * file, generate sample text, and write the model card (Markdown + JSON)
 * and its loss-curve chart.
 *
 *     deno run -A tools/train_demo/finish.ts [--build build/demo] [--out data] [--subset 4]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadReference } from "../../dev/ref/llama_cpp.ts";
import { loadModel } from "../../src/model/model.ts";
import { generate } from "../../src/generate/session.ts";
import { loadTokenizer } from "../../src/tokenizer/mod.ts";
import { readGgufModel } from "../../src/gguf/reader.ts";
import { expertLayout } from "../../src/experts/layout.ts";
import {
  chunks,
  enginePerplexity,
  heldoutStream,
  type Perplexity,
  referencePerplexity,
} from "../../bench/perplexity.ts";
import { lineChartSvg, niceMax } from "../../bench/_util.ts";

const CHUNK = 128;
const PROMPTS = ["And God said", "The LORD is my shepherd", "Hello"];
const SAMPLE_TOKENS = 40;

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    build: { type: "string", default: "build/demo" },
    out: { type: "string", default: "data" },
    subset: { type: "string", default: "4" },
  },
});
const build = v.build!, out = v.out!;
const subset = Number(v.subset);
const summary = JSON.parse(await Deno.readTextFile(`${build}/summary.json`));
const f32 = `${build}/kjv-moe-F32.gguf`;
const path = `${out}/kjv-moe-Q8_0.gguf`;
await Deno.mkdir(out, { recursive: true });

const llama = loadReference();
llama.quantize(f32, `${path}.tmp`, "MOSTLY_Q8_0");
await Deno.rename(`${path}.tmp`, path);
await Deno.copyFile(`${build}/heldout.txt`, `${out}/kjv-heldout.txt`);
const fileBytes = (await Deno.stat(path)).size;
console.error(`wrote ${path} (${fileBytes} bytes)`);

const tok = loadTokenizer(path);
const heldText = await Deno.readTextFile(`${out}/kjv-heldout.txt`);
const stream = heldoutStream(tok, heldText);
const all = chunks(stream, CHUNK);
const first = all.slice(0, subset);

// llama.cpp's tokens for the same text must be ours, or the comparison means nothing
const ref = llama.loadModel(path, { nCtx: 256 });
let refFull: Perplexity, refSubset: Perplexity;
const samples: { prompt: string; text: string; tokens: number[] }[] = [];
try {
  for (const line of heldText.split("\n").slice(0, 3)) {
    const a = ref.tokenize(line, { addSpecial: true }), b = tok.encode(line);
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      throw new Error("tokenizers differ on held-out text");
    }
  }
  refFull = referencePerplexity((t) => ref.logits(t), all);
  refSubset = referencePerplexity((t) => ref.logits(t), first);
  for (const prompt of PROMPTS) {
    const ids = tok.encode(prompt);
    const { tokens } = ref.greedy(ids, SAMPLE_TOKENS);
    // detokenised after the prompt, so the first generated token keeps its leading space
    const whole = ref.detokenize([...ids, ...tokens]);
    samples.push({ prompt, tokens, text: whole.slice(ref.detokenize(ids).length) });
  }
} finally {
  ref.close();
}
console.error(`llama.cpp: full ${refFull.ppl} (${refFull.scored}), subset ${refSubset.ppl}`);

const model = await loadModel({ model: path, nCtx: 256 });
let engSubset: Perplexity;
try {
  engSubset = await enginePerplexity(model, first);
  for (const s of samples) {
    model.reset();
    const r = await generate(model, tok.encode(s.prompt), { maxTokens: SAMPLE_TOKENS });
    if (JSON.stringify(r.tokens) !== JSON.stringify(s.tokens)) {
      console.error(`note: greedy tokens for "${s.prompt}" differ from llama.cpp's native run`);
    }
  }
} finally {
  model.close();
}
console.error(`od-moe: subset ${engSubset.ppl}`);

const layout = expertLayout(readGgufModel(path));
const expertBytes = layout.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0);
const c = summary.config, t = summary.train;
const r4 = (x: number) => Number(x.toFixed(4));
const card = {
  model: "kjv-moe-Q8_0.gguf",
  architecture: "llama (Mixtral-style MoE)",
  parameters: summary.n_params,
  config: c,
  file_bytes: fileBytes,
  expert_bytes: expertBytes,
  corpus: {
    text: "King James Version of the Bible (public domain)",
    source:
      "Debian bookworm packages bible-kjv 4.38 + bible-kjv-text 4.38: `bible -l100000 Gen1:1-Rev22:21`",
    sha256_of_print: summary.corpus_sha256,
    train_tokens: summary.train_tokens,
    heldout_tokens: summary.heldout_tokens,
    heldout: "every 40th chapter (1-based 40, 80, ..., 1160): 29 chapters, data/kjv-heldout.txt",
  },
  training: { ...t, seconds: summary.train_seconds, curve: summary.curve },
  perplexity: {
    protocol: "chapters as BOS + tokens + EOS, concatenated, cut into chunks of `chunk` tokens; " +
      "each chunk from an empty context; every position after the first scored",
    chunk: CHUNK,
    full: { chunks: all.length, scored: refFull.scored, llamaCpp: r4(refFull.ppl) },
    subset: {
      chunks: first.length,
      scored: engSubset.scored,
      engine: r4(engSubset.ppl),
      llamaCpp: r4(refSubset.ppl),
    },
    pytorch_f32: {
      full_chunk256: summary.heldout_ppl_full,
      first8_chunk128: summary.heldout_ppl_first8x128,
    },
  },
  samples,
};
await Deno.writeTextFile(`${out}/kjv-moe-Q8_0.json`, JSON.stringify(card, null, 1) + "\n");

const curve = summary.curve as { step: number; train_loss: number; heldout_loss: number }[];
const maxLoss = niceMax(Math.max(...curve.map((p) => Math.max(p.train_loss, p.heldout_loss))));
const steps = t.steps as number;
await Deno.writeTextFile(
  `${out}/kjv-moe-loss.svg`,
  lineChartSvg({
    title: "kjv-moe: training loss",
    subtitle: `${(summary.n_params / 1e6).toFixed(2)}M parameters, ${steps} steps of ${
      t.batch * c.ctx
    } tokens, ${(summary.train_seconds / 60).toFixed(0)} min on 2 shared CPU cores`,
    xLabel: "step",
    leftLabel: "cross-entropy (nats/token)",
    xRange: [0, steps],
    leftRange: [0, maxLoss],
    xTicks: [0, 0.25, 0.5, 0.75, 1].map((
      f,
    ) => [Math.round(f * steps), String(Math.round(f * steps))]),
    series: [
      {
        name: "train (one batch)",
        axis: "left",
        color: "#1f77b4",
        points: curve.map((p) => [p.step, p.train_loss] as const),
      },
      {
        name: "held-out",
        axis: "left",
        color: "#d62728",
        points: curve.map((p) => [p.step, p.heldout_loss] as const),
      },
    ],
  }),
);
const mb = (b: number) => (b / 1e6).toFixed(2);
const curveRows = curve.map((p) => `| ${p.step} | ${p.train_loss} | ${p.heldout_loss} |`).join(
  "\n",
);
const md = `# kjv-moe-Q8_0.gguf — od-moe's demo model

A small Mixtral-style mixture-of-experts language model trained from scratch on the King James
Bible, so that \`deno task serve\` and \`deno task run\` answer in English out of the box and the
expert cache and prefetcher can be measured on routing that was learned from text. It writes
KJV-flavoured English; it knows nothing else and follows no instructions (a chat is rendered as
the messages' text joined by spaces, and the model continues it).

Built by \`tools/train_demo/train.py\` + \`tools/train_demo/finish.ts\` (see
[tools/train_demo/README.md](../tools/train_demo/README.md)); this card is written by the latter.

## Shape

| | |
|---|---|
| architecture | \`llama\` with routed experts (as Mixtral): RMSNorm, RoPE on adjacent pairs (base ${c.rope_base}), softmax router, top-${c.n_expert_used} weights renormalised, SwiGLU experts, output tied to the embedding |
| layers | ${c.n_layer}, each an MoE layer of ${c.n_expert} experts, ${c.n_expert_used} used per token |
| width | ${c.n_embd} (${c.n_head} query heads, ${c.n_head_kv} key/value heads of ${
  c.n_embd / c.n_head
}); expert hidden width ${c.n_ff} |
| context | ${c.ctx} tokens (trained length) |
| vocabulary | ${c.vocab} SentencePiece BPE tokens with byte fallback, trained on the same text; BOS 1, EOS 2, UNK 0 |
| parameters | ${(summary.n_params / 1e6).toFixed(2)}M (${
  ((c.n_layer * c.n_expert * 3 * c.n_embd * c.n_ff) / 1e6).toFixed(2)
}M in experts; about ${
  ((summary.n_params - c.n_layer * (c.n_expert - c.n_expert_used) * 3 * c.n_embd * c.n_ff) / 1e6)
    .toFixed(2)
}M used per token) |
| file | ${mb(fileBytes)} MB, Q8_0 (norms F32), quantised by llama.cpp's \`llama_model_quantize\` |
| routed experts | ${
  mb(expertBytes)
} MB; \`deno task serve\` gives them a budget of a third of that |

## Corpus and license

- Text: the King James Version of the Bible (public domain), as printed by Debian bookworm's
  \`bible-kjv\` 4.38 from \`bible-kjv-text\` 4.38: \`bible -l100000 Gen1:1-Rev22:21\`
  (SHA-256 of the print: \`${summary.corpus_sha256}\`). Verse numbers and chapter headings are
  dropped; each chapter becomes one line of text.
- Held out: every 40th chapter (29 chapters, ${summary.heldout_tokens} tokens),
  [kjv-heldout.txt](kjv-heldout.txt); trained on the other 1160 (${summary.train_tokens} tokens).
- The weights are released with od-moe under its MIT license.

## Training

PyTorch ${"1.13"} on the CPU (Debian \`python3-torch\`), one thread, seed ${t.seed}:
${t.steps} steps of ${t.batch} × ${c.ctx} tokens (${
  ((t.steps * t.batch * c.ctx) / 1e6).toFixed(2)
}M tokens, about ${((t.steps * t.batch * c.ctx) / summary.train_tokens).toFixed(1)} epochs), AdamW
(β 0.9/0.95, weight decay ${t.weight_decay}), learning rate ${t.lr} after ${t.warmup} warm-up steps,
cosine to ${
  t.min_lr_frac * 100
}%, gradient clipping 1.0; plus ${t.aux_coef} × the Switch-Transformer
load-balancing loss (experts × Σ share of routed tokens × mean router probability) so every expert
is used. Wall time ${(summary.train_seconds / 60).toFixed(1)} min on this project's build machine
(2 CPU cores shared with five other engineers' test runs).

![training loss](kjv-moe-loss.svg)

| step | train loss (one batch) | held-out loss (4 batches) |
|---:|---:|---:|
${curveRows}

## Held-out perplexity

Protocol: each held-out chapter becomes BOS + its tokens + EOS; they are concatenated and cut into
chunks of ${CHUNK} tokens; each chunk is evaluated from an empty context and every position after its
first is scored.

| engine | file | chunks | tokens scored | perplexity |
|---|---|---:|---:|---:|
| llama.cpp (CPU) | this file | all ${all.length} | ${refFull.scored} | ${r4(refFull.ppl)} |
| llama.cpp (CPU) | this file | first ${first.length} | ${refSubset.scored} | ${r4(refSubset.ppl)} |
| od-moe (WebGPU, software adapter) | this file | first ${first.length} | ${engSubset.scored} | ${
  r4(engSubset.ppl)
} |
| PyTorch, F32 weights before quantisation | — | first 8 | 1016 | ${summary.heldout_ppl_first8x128} |
| PyTorch, F32, chunks of ${c.ctx} (the trained context) | — | all | ${summary.heldout_scored} | ${summary.heldout_ppl_full} |

\`tests/demo_model_test.ts\` and \`deno run -A bench/perplexity.ts\` reproduce the od-moe and
llama.cpp figures on the first ${first.length} chunks (kjv-moe-Q8_0.json holds them).

## Greedy samples (llama.cpp on this file; od-moe gives the same tokens)

${samples.map((s) => `- **${s.prompt}**${s.text.replace(/\n/g, " ")}`).join("\n")}
`;
await Deno.writeTextFile(`${out}/kjv-moe-Q8_0.md`, md);
console.log(JSON.stringify(card.perplexity));
