import assert from "node:assert/strict";
import {
  demoModelSpec,
  SYNTHETIC_ARCHS,
  type SyntheticArch,
  syntheticConfig,
  syntheticModel,
  type SyntheticSpec,
} from "./synthetic.ts";
import { archSpec } from "./registry.ts";
import { builtinTokenizer, gpt2ByteChars, tokenizerFromGguf, TokenType } from "./vocab.ts";
import { type GgufHeader, parseGguf } from "../gguf/reader.ts";
import { serializeGguf } from "../gguf/writer.ts";
import { gv } from "../gguf/value.ts";
import { GgmlType } from "../gguf/types.ts";
import { f16ToF32 } from "../gguf/f16.ts";

const vocab = builtinTokenizer();

function spec(arch: SyntheticArch, extra: Partial<SyntheticSpec> = {}): SyntheticSpec {
  const perArch: Partial<Record<SyntheticArch, Partial<SyntheticSpec>>> = {
    qwen2moe: { nFfShexp: 96 },
    qwen3moe: { headDim: 24 },
    olmoe: { nHeadKv: 4 },
    "gpt-oss": { headDim: 16, slidingWindow: 4, yarnFactor: 8, yarnOrigCtx: 32 },
    deepseek2: {
      nHeadKv: 1,
      nLayer: 3,
      qLoraRank: 48,
      kvLoraRank: 32,
      qkNopeDim: 16,
      qkRopeDim: 8,
      vHeadDim: 24,
      nLayerDenseLead: 1,
      nFf: 80,
      nExpertShared: 2,
      gating: "sigmoid",
      expProbsBias: true,
      nExpertGroups: 1,
    },
    qwen35moe: {
      nLayer: 4,
      headDim: 16,
      ropeDim: 8,
      nFfShexp: 48,
      ssm: { convKernel: 4, stateSize: 8, nVHeads: 4, nKHeads: 2 },
    },
    qwen3next: {
      nLayer: 4,
      headDim: 16,
      ropeDim: 4,
      nFfShexp: 48,
      ssm: { convKernel: 4, stateSize: 8, nVHeads: 4, nKHeads: 2 },
      fullAttnInterval: 2,
    },
  };
  return {
    arch,
    nEmbd: 64,
    nLayer: 2,
    nHead: 4,
    nHeadKv: 2,
    nFfExp: 32,
    nExpert: 5,
    nExpertUsed: 2,
    nCtx: 128,
    ropeBase: 500_000,
    rmsEps: 1e-6,
    seed: 7,
    vocab,
    ...perArch[arch],
    ...extra,
  };
}

/**
 * The tensors llama.cpp's loader asks for (src/models/{llama,qwen2moe,qwen3moe,
 * olmoe,openai-moe,deepseek2,minimax-m2,qwen35moe,qwen3next}.cpp, `create_tensor`
 * calls), written out
 * independently of the generator.
 */
function expectedTensors(s: SyntheticSpec): Map<string, number[]> {
  const hd = s.headDim ?? s.nEmbd / s.nHead;
  const [e, q, kv, v] = [s.nEmbd, s.nHead * hd, s.nHeadKv * hd, s.vocab!.nTokens];
  const m = new Map<string, number[]>([
    ["token_embd.weight", [e, v]],
    ["output_norm.weight", [e]],
  ]);
  if (!s.tiedOutput) m.set("output.weight", [e, v]);
  const hybrid = s.arch === "qwen35moe" || s.arch === "qwen3next";
  for (let i = 0; i < s.nLayer; i++) {
    const b = `blk.${i}`;
    m.set(`${b}.attn_norm.weight`, [e]);
    if (hybrid && (i + 1) % (s.fullAttnInterval ?? 4) !== 0) {
      // the linear-attention (gated delta net) tensors
      const { convKernel, stateSize, nVHeads, nKHeads } = s.ssm!;
      const keyDim = stateSize * nKHeads;
      const valueDim = stateSize * nVHeads;
      m.set(`${b}.attn_qkv.weight`, [e, 2 * keyDim + valueDim]);
      m.set(`${b}.attn_gate.weight`, [e, valueDim]);
      m.set(`${b}.ssm_conv1d.weight`, [convKernel, 2 * keyDim + valueDim]);
      m.set(`${b}.ssm_dt.bias`, [nVHeads]);
      m.set(`${b}.ssm_a`, [nVHeads]);
      if (s.arch === "qwen3next") {
        m.set(`${b}.ssm_ba.weight`, [e, 2 * nVHeads]);
      } else {
        m.set(`${b}.ssm_beta.weight`, [e, nVHeads]);
        m.set(`${b}.ssm_alpha.weight`, [e, nVHeads]);
      }
      m.set(`${b}.ssm_norm.weight`, [stateSize]);
      m.set(`${b}.ssm_out.weight`, [valueDim, e]);
    } else if (hybrid) {
      m.set(`${b}.attn_q.weight`, [e, 2 * q]);
      m.set(`${b}.attn_k.weight`, [e, kv]);
      m.set(`${b}.attn_v.weight`, [e, kv]);
      m.set(`${b}.attn_output.weight`, [q, e]);
      m.set(`${b}.attn_q_norm.weight`, [hd]);
      m.set(`${b}.attn_k_norm.weight`, [hd]);
    } else if (s.arch === "deepseek2") {
      const qHead = s.qkNopeDim! + s.qkRopeDim!;
      if (s.qLoraRank) {
        m.set(`${b}.attn_q_a.weight`, [e, s.qLoraRank]);
        m.set(`${b}.attn_q_a_norm.weight`, [s.qLoraRank]);
        m.set(`${b}.attn_q_b.weight`, [s.qLoraRank, s.nHead * qHead]);
      } else {
        m.set(`${b}.attn_q.weight`, [e, s.nHead * qHead]);
      }
      m.set(`${b}.attn_kv_a_mqa.weight`, [e, s.kvLoraRank! + s.qkRopeDim!]);
      m.set(`${b}.attn_kv_a_norm.weight`, [s.kvLoraRank!]);
      m.set(`${b}.attn_k_b.weight`, [s.qkNopeDim!, s.kvLoraRank!, s.nHead]);
      m.set(`${b}.attn_v_b.weight`, [s.kvLoraRank!, s.vHeadDim!, s.nHead]);
      m.set(`${b}.attn_output.weight`, [s.nHead * s.vHeadDim!, e]);
    } else {
      m.set(`${b}.attn_q.weight`, [e, q]);
      m.set(`${b}.attn_k.weight`, [e, kv]);
      m.set(`${b}.attn_v.weight`, [e, kv]);
      m.set(`${b}.attn_output.weight`, [q, e]);
    }
    const post = s.arch === "gpt-oss" || hybrid;
    m.set(`${b}.${post ? "post_attention_norm" : "ffn_norm"}.weight`, [e]);
    if (s.arch === "deepseek2" && i < (s.nLayerDenseLead ?? 0)) {
      m.set(`${b}.ffn_gate.weight`, [e, s.nFf!]);
      m.set(`${b}.ffn_up.weight`, [e, s.nFf!]);
      m.set(`${b}.ffn_down.weight`, [s.nFf!, e]);
      continue;
    }
    m.set(`${b}.ffn_gate_inp.weight`, [e, s.nExpert]);
    m.set(`${b}.ffn_gate_exps.weight`, [e, s.nFfExp, s.nExpert]);
    m.set(`${b}.ffn_up_exps.weight`, [e, s.nFfExp, s.nExpert]);
    m.set(`${b}.ffn_down_exps.weight`, [s.nFfExp, e, s.nExpert]);
    if (s.arch === "qwen2moe" || s.arch === "gpt-oss") {
      m.set(`${b}.attn_q.bias`, [q]);
      m.set(`${b}.attn_k.bias`, [kv]);
      m.set(`${b}.attn_v.bias`, [kv]);
    }
    if (s.arch === "qwen2moe" || hybrid) {
      m.set(`${b}.ffn_gate_inp_shexp.weight`, [e]);
      m.set(`${b}.ffn_gate_shexp.weight`, [e, s.nFfShexp!]);
      m.set(`${b}.ffn_up_shexp.weight`, [e, s.nFfShexp!]);
      m.set(`${b}.ffn_down_shexp.weight`, [s.nFfShexp!, e]);
    }
    if (s.arch === "qwen3moe") {
      m.set(`${b}.attn_q_norm.weight`, [hd]);
      m.set(`${b}.attn_k_norm.weight`, [hd]);
    }
    if (s.arch === "olmoe") {
      m.set(`${b}.attn_q_norm.weight`, [e]);
      m.set(`${b}.attn_k_norm.weight`, [e]);
    }
    if (s.arch === "minimax-m2") {
      m.set(`${b}.attn_q_norm.weight`, [q]);
      m.set(`${b}.attn_k_norm.weight`, [kv]);
      m.set(`${b}.exp_probs_b.bias`, [s.nExpert]);
    }
    if (s.arch === "gpt-oss") {
      m.set(`${b}.attn_output.bias`, [e]);
      m.set(`${b}.attn_sinks.weight`, [s.nHead]);
      m.set(`${b}.ffn_gate_inp.bias`, [s.nExpert]);
      m.set(`${b}.ffn_gate_exps.bias`, [s.nFfExp, s.nExpert]);
      m.set(`${b}.ffn_up_exps.bias`, [s.nFfExp, s.nExpert]);
      m.set(`${b}.ffn_down_exps.bias`, [e, s.nExpert]);
    }
    if (s.arch === "deepseek2") {
      const f = s.nFfExp * (s.nExpertShared ?? 1);
      if (s.expProbsBias) m.set(`${b}.exp_probs_b.bias`, [s.nExpert]);
      m.set(`${b}.ffn_gate_shexp.weight`, [e, f]);
      m.set(`${b}.ffn_up_shexp.weight`, [e, f]);
      m.set(`${b}.ffn_down_shexp.weight`, [f, e]);
    }
  }
  return m;
}

function floats(h: GgufHeader, bytes: Uint8Array, name: string): Float32Array {
  const t = h.tensors.find((t) => t.name === name);
  assert.ok(t, `tensor ${name} is missing`);
  const at = h.dataOffset + t.dataOffset;
  if (t.type.id === GgmlType.F32) {
    return new Float32Array(bytes.slice(at, at + t.nBytes).buffer);
  }
  assert.equal(t.type.id, GgmlType.F16, `${name} is ${t.type.name}`);
  const half = new Uint16Array(bytes.slice(at, at + t.nBytes).buffer);
  return Float32Array.from(half, f16ToF32);
}

function std(v: Float32Array, mean = 0): number {
  let s = 0;
  for (const x of v) s += (x - mean) ** 2;
  return Math.sqrt(s / v.length);
}

/** Archs whose llama.cpp loader falls back to token_embd when output.weight is absent. */
const TIES: readonly SyntheticArch[] = ["llama", "qwen3moe", "deepseek2"];

for (const arch of SYNTHETIC_ARCHS) {
  Deno.test(`${arch}: the file reads back with every tensor llama.cpp loads, shaped as it expects`, () => {
    for (const tiedOutput of TIES.includes(arch) ? [false, true] : [false]) {
      const s = spec(arch, { tiedOutput });
      const bytes = serializeGguf(syntheticModel(s));
      const h = parseGguf(bytes);
      const want = expectedTensors(s);
      const got = new Map(h.tensors.map((t) => [t.name, [...t.shape]]));
      assert.deepEqual(
        [...got.keys()].sort(),
        [...want.keys()].sort(),
        `${arch} tied=${tiedOutput}`,
      );
      for (const [name, shape] of want) assert.deepEqual(got.get(name), shape, name);
      assert.ok(h.tensors.every((t) => t.type.id === GgmlType.F32));
      const hybrid = arch === "qwen35moe" || arch === "qwen3next";

      const md = h.metadata;
      const hd = s.headDim ?? s.nEmbd / s.nHead;
      const key = (k: string) => md.number(`${arch}.${k}`);
      assert.equal(md.string("general.architecture"), arch);
      assert.equal(md.number("general.file_type"), 0);
      assert.equal(key("context_length"), s.nCtx);
      assert.equal(key("embedding_length"), s.nEmbd);
      assert.equal(key("block_count"), s.nLayer);
      assert.equal(key("attention.head_count"), s.nHead);
      assert.equal(key("attention.head_count_kv"), s.nHeadKv);
      if (arch === "deepseek2") {
        // the absorbed (MQA) view, and the decompressed head sizes in the _mla keys
        assert.equal(key("attention.key_length"), s.kvLoraRank! + s.qkRopeDim!);
        assert.equal(key("attention.value_length"), s.kvLoraRank);
        assert.equal(key("attention.key_length_mla"), s.qkNopeDim! + s.qkRopeDim!);
        assert.equal(key("attention.value_length_mla"), s.vHeadDim);
        assert.equal(key("rope.dimension_count"), s.qkRopeDim);
        assert.equal(key("attention.q_lora_rank"), s.qLoraRank);
        assert.equal(key("attention.kv_lora_rank"), s.kvLoraRank);
        assert.equal(key("leading_dense_block_count"), s.nLayerDenseLead);
        assert.equal(key("feed_forward_length"), s.nFf);
        assert.equal(key("expert_shared_count"), s.nExpertShared);
        assert.equal(key("expert_gating_func"), 2);
      } else if (hybrid) {
        assert.equal(key("attention.key_length"), hd);
        assert.equal(key("attention.value_length"), hd);
        assert.equal(key("rope.dimension_count"), s.ropeDim);
        assert.equal(key("full_attention_interval"), s.fullAttnInterval ?? 4);
        assert.equal(key("ssm.conv_kernel"), s.ssm!.convKernel);
        assert.equal(key("ssm.state_size"), s.ssm!.stateSize);
        assert.equal(key("ssm.inner_size"), s.ssm!.stateSize * s.ssm!.nVHeads);
        assert.equal(key("ssm.time_step_rank"), s.ssm!.nVHeads);
        assert.equal(key("ssm.group_count"), s.ssm!.nKHeads);
        assert.equal(key("expert_shared_feed_forward_length"), s.nFfShexp);
        if (arch === "qwen35moe") {
          // llama.cpp requires the IMRoPE sections; they cover the rotated pairs
          const sections = md.numbers(`${arch}.rope.dimension_sections`)!;
          assert.equal(sections.length, 4);
          assert.equal(sections.reduce((a, b) => a + b, 0), s.ropeDim! / 2);
        }
      } else {
        assert.equal(key("attention.key_length"), hd);
        assert.equal(key("attention.value_length"), hd);
        assert.equal(key("rope.dimension_count"), hd);
      }
      assert.equal(key("rope.freq_base"), s.ropeBase);
      assert.equal(key("attention.layer_norm_rms_epsilon"), Math.fround(s.rmsEps));
      assert.equal(key("expert_count"), s.nExpert);
      assert.equal(key("expert_used_count"), s.nExpertUsed);
      // The expert width: feed_forward_length for llama (Mixtral) and olmoe, its own key elsewhere.
      const byFf = arch === "llama" || arch === "olmoe";
      assert.equal(key(byFf ? "feed_forward_length" : "expert_feed_forward_length"), s.nFfExp);
      if (arch === "qwen2moe") {
        assert.equal(key("expert_shared_feed_forward_length"), s.nFfShexp);
      }
      if (arch === "gpt-oss") {
        assert.equal(key("attention.sliding_window"), s.slidingWindow);
        assert.equal(md.string(`${arch}.rope.scaling.type`), "yarn");
        assert.equal(key("rope.scaling.factor"), s.yarnFactor);
        assert.equal(key("rope.scaling.original_context_length"), s.yarnOrigCtx);
      }
      assert.equal(md.strings("tokenizer.ggml.tokens")?.length, vocab.nTokens);
    }
  });
}

/** `a` and `b` equal, numbers up to f32 rounding (the file stores f32). */
function assertClose(a: unknown, b: unknown, path: string): void {
  if (typeof a === "number" && typeof b === "number") {
    assert.ok(Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), `${path}: ${a} vs ${b}`);
  } else if (a && b && typeof a === "object" && typeof b === "object") {
    assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort(), path);
    for (const [k, v] of Object.entries(a)) {
      assertClose(v, (b as Record<string, unknown>)[k], `${path}.${k}`);
    }
  } else {
    assert.equal(a, b, path);
  }
}

for (const arch of SYNTHETIC_ARCHS) {
  Deno.test(`${arch}: readConfig of what the arch file's writeConfig wrote is the config it was given`, () => {
    const variants: Partial<SyntheticSpec>[] = [{}, { yarnFactor: 4, yarnOrigCtx: 64 }];
    if (arch === "deepseek2") {
      variants.push({ yarnFactor: 4, yarnOrigCtx: 64, yarnMscaleAllDim: 0.707 }, {
        archName: "mistral4",
        nNextn: 1,
        nExpertGroups: 5,
        nExpertGroupsUsed: 2,
        expertWeightsNorm: true,
        expertWeightsScale: 2.5,
      });
    }
    for (const extra of variants) {
      const s = spec(arch, extra);
      const want = syntheticConfig(s);
      const h = parseGguf(serializeGguf(syntheticModel(s)));
      const got = archSpec(h.metadata.string("general.architecture")).readConfig(h.metadata);
      assertClose(got, want, `${arch} ${JSON.stringify(extra)}`);
    }
  });
}

Deno.test("the same seed gives the same bytes; another seed other weights, same metadata", () => {
  const a = serializeGguf(syntheticModel(spec("qwen2moe")));
  const b = serializeGguf(syntheticModel(spec("qwen2moe")));
  assert.deepEqual(a, b);
  const c = serializeGguf(syntheticModel(spec("qwen2moe", { seed: 8 })));
  assert.equal(c.length, a.length);
  assert.notDeepEqual(c, a);
  const h = parseGguf(a);
  assert.deepEqual(a.subarray(0, h.dataOffset), c.subarray(0, h.dataOffset));
});

Deno.test("each tensor has its own stream: a bigger vocabulary changes only the vocabulary tensors", () => {
  const small = spec("llama");
  const big = spec("llama", { vocab: builtinTokenizer({ nMerges: 300 }) });
  const a = serializeGguf(syntheticModel(small));
  const b = serializeGguf(syntheticModel(big));
  const ha = parseGguf(a);
  const hb = parseGguf(b);
  for (const t of ha.tensors) {
    const other = floats(hb, b, t.name);
    const same = floats(ha, a, t.name).every((x, i) => x === other[i]);
    assert.equal(same, t.name !== "token_embd.weight" && t.name !== "output.weight", t.name);
  }
});

Deno.test("F16 files hold the F32 values rounded; norms, biases and routers stay F32", () => {
  for (const arch of ["qwen2moe", "gpt-oss"] as const) {
    const s = spec(arch);
    const f32 = serializeGguf(syntheticModel(s));
    const f16 = serializeGguf(syntheticModel({ ...s, weightType: "F16" }));
    const h32 = parseGguf(f32);
    const h16 = parseGguf(f16);
    assert.equal(h16.metadata.number("general.file_type"), 1);
    for (const t of h16.tensors) {
      const matrix = t.shape.length >= 2 && !t.name.endsWith("ffn_gate_inp.weight") &&
        t.name.endsWith(".weight");
      assert.equal(t.type.name, matrix ? "F16" : "F32", t.name);
      const x = floats(h32, f32, t.name);
      const y = floats(h16, f16, t.name);
      for (let i = 0; i < x.length; i++) {
        assert.ok(Math.abs(x[i]! - y[i]!) <= Math.abs(x[i]!) * 2 ** -11 + 2 ** -24, t.name);
      }
    }
  }
});

Deno.test("weights are scaled for informative outputs", () => {
  const s = spec("qwen3moe", { nEmbd: 128, headDim: 32 });
  const bytes = serializeGguf(syntheticModel(s));
  const h = parseGguf(bytes);
  const near = (x: number, want: number, what: string) =>
    assert.ok(Math.abs(x / want - 1) < 0.1, `${what}: ${x} vs ${want}`);
  near(std(floats(h, bytes, "blk.0.attn_q.weight")), 1 / Math.sqrt(128), "attn_q std");
  near(std(floats(h, bytes, "blk.0.ffn_down_exps.weight")), 1 / Math.sqrt(s.nFfExp), "down std");
  near(std(floats(h, bytes, "blk.1.ffn_gate_inp.weight")), 3 / Math.sqrt(128), "router std");
  near(std(floats(h, bytes, "output.weight")), 1 / Math.sqrt(128), "output std");
  const norm = floats(h, bytes, "blk.0.attn_norm.weight");
  const qNorm = floats(h, bytes, "blk.0.attn_q_norm.weight");
  near(norm.reduce((a, b) => a + b) / norm.length, 1, "attn_norm mean");
  assert.ok(std(norm, 1) > 0.05 && std(qNorm, 1) > 0.1, "norms have jitter");
  const outNorm = floats(h, bytes, "output_norm.weight");
  near(outNorm.reduce((a, b) => a + b) / outNorm.length, 4, "output_norm carries the logit std");
});

Deno.test("specs llama.cpp would reject are rejected, saying why", () => {
  const cases: [Partial<SyntheticSpec> & { arch: SyntheticArch }, RegExp][] = [
    [{ arch: "qwen2moe", tiedOutput: true }, /qwen2moe requires output\.weight/],
    [{ arch: "qwen2moe", headDim: 32 }, /nHead \* headDim = nEmbd/],
    [{ arch: "qwen2moe", nFfShexp: undefined }, /nFfShexp must be a positive integer/],
    [{ arch: "llama", nFfShexp: 64 }, /no shared expert/],
    [{ arch: "llama", nHeadKv: 3 }, /must divide nHead/],
    [{ arch: "qwen3moe", nExpertUsed: 6 }, /exceeds nExpert/],
    [{ arch: "qwen3moe", headDim: 15 }, /even integer/],
    [{ arch: "llama", nLayer: 0 }, /nLayer must be a positive integer/],
    [{ arch: "olmoe", nHeadKv: 2 }, /nHeadKv must equal nHead/],
    [{ arch: "gpt-oss", tiedOutput: true }, /gpt-oss requires output\.weight/],
    [{ arch: "gpt-oss", slidingWindow: undefined }, /sliding window/],
    [{ arch: "llama", slidingWindow: 4 }, /gpt-oss only/],
    [{ arch: "qwen3moe", kvLoraRank: 16 }, /deepseek2 only/],
    [{ arch: "deepseek2", nHeadKv: 2 }, /nHeadKv must be 1/],
    [{ arch: "deepseek2", qkRopeDim: 7 }, /qkRopeDim must be even/],
    [{ arch: "deepseek2", vHeadDim: undefined }, /vHeadDim must be a positive integer/],
    [{ arch: "deepseek2", nExpertShared: 0 }, /nExpertShared must be ≥ 1/],
    [{ arch: "deepseek2", nLayerDenseLead: 3 }, /nLayerDenseLead must be in/],
    [{ arch: "deepseek2", nExpertGroups: 2 }, /expert groups/],
    [{ arch: "deepseek2", nNextn: -1 }, /nNextn must be an integer ≥ 0/],
    [{ arch: "deepseek2", archName: "llama" }, /archName must be deepseek2 or mistral4/],
    [{ arch: "qwen3moe", nNextn: 1 }, /nNextn apply to deepseek2 only/],
    [{ arch: "llama", archName: "mistral4" }, /archName apply to deepseek2 only/],
    [{ arch: "llama", yarnFactor: 4 }, /YaRN needs/],
    [{ arch: "llama", ropeDim: 40 }, /ropeDim must be an even integer in 2…headDim \(16\)/],
    [
      { arch: "mixtral" as SyntheticArch },
      /supported: llama, qwen2moe, qwen3moe, olmoe, gpt-oss, deepseek2/,
    ],
  ];
  for (const [extra, re] of cases) {
    assert.throws(() => syntheticModel(spec(extra.arch, extra)), re, JSON.stringify(extra));
  }
});

Deno.test("the demo model is valid and uses the built-in vocabulary", () => {
  const h = parseGguf(serializeGguf(syntheticModel(demoModelSpec())));
  assert.equal(h.metadata.string("general.architecture"), "qwen3moe");
  assert.equal(h.metadata.string("tokenizer.ggml.model"), "gpt2");
  assert.ok(h.metadata.string("tokenizer.chat_template").includes("<|im_start|>"));
});

Deno.test("the built-in vocabulary: byte tokens first, unique tokens, merges of kept tokens", () => {
  const v = builtinTokenizer();
  const md = new Map(v.entries);
  const tokens = md.get("tokenizer.ggml.tokens")!.value as string[];
  const merges = md.get("tokenizer.ggml.merges")!.value as string[];
  const types = md.get("tokenizer.ggml.token_type")!.value as Int32Array;
  assert.equal(tokens.length, v.nTokens);
  assert.deepEqual(tokens.slice(0, 256), gpt2ByteChars().map((c) => c.char));
  assert.equal(new Set(tokens).size, tokens.length, "token strings are unique");
  assert.equal(merges.length, 400);
  const known = new Set(tokens);
  for (const m of merges) {
    const [a, b] = m.split(" ");
    assert.ok(known.has(a!) && known.has(b!) && known.has(a! + b!), m);
  }
  const eos = md.get("tokenizer.ggml.eos_token_id")!.value as number;
  const eot = md.get("tokenizer.ggml.eot_token_id")!.value as number;
  assert.equal(tokens[eos], "<|endoftext|>");
  assert.equal(tokens[eot], "<|im_end|>");
  assert.equal(types[eot], TokenType.control);
  assert.deepEqual(builtinTokenizer(), v, "deterministic");
});

Deno.test("cutting a vocabulary keeps control tokens, merges of kept tokens and special ids", () => {
  const tokens = ["a", "b", "c", "ab", "abc", "bc", "<s>", "x", "<|end|>", "y"];
  const types = [1, 1, 1, 1, 1, 1, 1, 1, 3, 1];
  const src = [
    ["general.architecture", gv.str("qwen2")],
    ["tokenizer.ggml.model", gv.str("gpt2")],
    ["tokenizer.ggml.tokens", gv.strings(tokens)],
    ["tokenizer.ggml.token_type", gv.i32s(types)],
    ["tokenizer.ggml.scores", gv.f32s(tokens.map((_, i) => 10 - i))],
    ["tokenizer.ggml.merges", gv.strings(["a b", "ab c", "b c", "x y"])],
    ["tokenizer.ggml.eos_token_id", gv.u32(8)],
    ["tokenizer.ggml.padding_token_id", gv.u32(9)],
    ["tokenizer.ggml.bos_token_id", gv.u32(1)],
    ["tokenizer.chat_template", gv.str("{{x}}")],
  ] as const;
  const cut = tokenizerFromGguf(src, { maxTokens: 4 });
  const md = new Map(cut.entries);
  assert.equal(md.has("general.architecture"), false, "only tokenizer keys are copied");
  assert.equal(cut.nTokens, 5);
  assert.deepEqual(md.get("tokenizer.ggml.tokens")!.value, ["a", "b", "c", "ab", "<|end|>"]);
  assert.deepEqual([...(md.get("tokenizer.ggml.token_type")!.value as Int32Array)], [
    1,
    1,
    1,
    1,
    3,
  ]);
  assert.deepEqual([...(md.get("tokenizer.ggml.scores")!.value as Float32Array)], [10, 9, 8, 7, 2]);
  assert.deepEqual(md.get("tokenizer.ggml.merges")!.value, ["a b"]);
  assert.equal(md.get("tokenizer.ggml.eos_token_id")!.value, 4);
  assert.equal(md.get("tokenizer.ggml.bos_token_id")!.value, 1);
  assert.equal(md.has("tokenizer.ggml.padding_token_id"), false, "a dropped token's id key goes");
  assert.equal(md.get("tokenizer.chat_template")!.value, "{{x}}");

  const all = tokenizerFromGguf(src);
  assert.equal(all.nTokens, tokens.length);
  assert.deepEqual(new Map(all.entries).get("tokenizer.ggml.merges")!.value, [
    "a b",
    "ab c",
    "b c",
    "x y",
  ]);
});
