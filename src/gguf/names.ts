/**
 * GGUF metadata keys and tensor names, as data. The reader, the engine, the
 * converter and the test-model generator all take names from here, so that a
 * name is spelled in one place (llama.cpp's spelling: `llama-arch.cpp`).
 *
 * Keys containing `{arch}` are per-architecture; tensor names containing
 * `{bid}` are per-block (layer).
 *
 * @module
 */

/** Metadata keys. */
export const Keys = {
  // general
  architecture: "general.architecture",
  name: "general.name",
  alignment: "general.alignment",
  fileType: "general.file_type",
  quantizationVersion: "general.quantization_version",
  // split files
  splitNo: "split.no",
  splitCount: "split.count",
  splitTensorsCount: "split.tensors.count",
  // hyperparameters
  vocabSize: "{arch}.vocab_size",
  contextLength: "{arch}.context_length",
  embeddingLength: "{arch}.embedding_length",
  blockCount: "{arch}.block_count",
  leadingDenseBlockCount: "{arch}.leading_dense_block_count",
  feedForwardLength: "{arch}.feed_forward_length",
  expertFeedForwardLength: "{arch}.expert_feed_forward_length",
  expertSharedFeedForwardLength: "{arch}.expert_shared_feed_forward_length",
  expertCount: "{arch}.expert_count",
  expertUsedCount: "{arch}.expert_used_count",
  expertSharedCount: "{arch}.expert_shared_count",
  expertGroupCount: "{arch}.expert_group_count",
  expertGroupUsedCount: "{arch}.expert_group_used_count",
  expertWeightsScale: "{arch}.expert_weights_scale",
  expertWeightsNorm: "{arch}.expert_weights_norm",
  expertGatingFunc: "{arch}.expert_gating_func",
  headCount: "{arch}.attention.head_count",
  headCountKv: "{arch}.attention.head_count_kv",
  keyLength: "{arch}.attention.key_length",
  valueLength: "{arch}.attention.value_length",
  keyLengthMla: "{arch}.attention.key_length_mla",
  valueLengthMla: "{arch}.attention.value_length_mla",
  layerNormEps: "{arch}.attention.layer_norm_epsilon",
  layerNormRmsEps: "{arch}.attention.layer_norm_rms_epsilon",
  qLoraRank: "{arch}.attention.q_lora_rank",
  kvLoraRank: "{arch}.attention.kv_lora_rank",
  slidingWindow: "{arch}.attention.sliding_window",
  slidingWindowPattern: "{arch}.attention.sliding_window_pattern",
  attentionTemperatureScale: "{arch}.attention.temperature_scale",
  nextnPredictLayers: "{arch}.nextn_predict_layers",
  ropeDimensionCount: "{arch}.rope.dimension_count",
  ropeDimensionSections: "{arch}.rope.dimension_sections",
  fullAttentionInterval: "{arch}.full_attention_interval",
  attentionRecurrentLayers: "{arch}.attention.recurrent_layers",
  ssmConvKernel: "{arch}.ssm.conv_kernel",
  ssmInnerSize: "{arch}.ssm.inner_size",
  ssmStateSize: "{arch}.ssm.state_size",
  ssmTimeStepRank: "{arch}.ssm.time_step_rank",
  ssmGroupCount: "{arch}.ssm.group_count",
  ropeFreqBase: "{arch}.rope.freq_base",
  ropeFreqBaseSwa: "{arch}.rope.freq_base_swa",
  ropeScalingType: "{arch}.rope.scaling.type",
  ropeScalingFactor: "{arch}.rope.scaling.factor",
  ropeScalingAttnFactor: "{arch}.rope.scaling.attn_factor",
  ropeScalingOrigCtx: "{arch}.rope.scaling.original_context_length",
  ropeScalingYarnLogMul: "{arch}.rope.scaling.yarn_log_multiplier",
  ropeScalingYarnBetaFast: "{arch}.rope.scaling.yarn_beta_fast",
  ropeScalingYarnBetaSlow: "{arch}.rope.scaling.yarn_beta_slow",
  // tokenizer
  tokenizerModel: "tokenizer.ggml.model",
  tokenizerPre: "tokenizer.ggml.pre",
  tokenizerTokens: "tokenizer.ggml.tokens",
  tokenizerTokenType: "tokenizer.ggml.token_type",
  tokenizerScores: "tokenizer.ggml.scores",
  tokenizerMerges: "tokenizer.ggml.merges",
  tokenizerBosId: "tokenizer.ggml.bos_token_id",
  tokenizerEosId: "tokenizer.ggml.eos_token_id",
  tokenizerEotId: "tokenizer.ggml.eot_token_id",
  tokenizerEomId: "tokenizer.ggml.eom_token_id",
  tokenizerUnknownId: "tokenizer.ggml.unknown_token_id",
  tokenizerSeparatorId: "tokenizer.ggml.seperator_token_id",
  tokenizerPaddingId: "tokenizer.ggml.padding_token_id",
  tokenizerAddBos: "tokenizer.ggml.add_bos_token",
  tokenizerAddEos: "tokenizer.ggml.add_eos_token",
  tokenizerAddSpacePrefix: "tokenizer.ggml.add_space_prefix",
  tokenizerChatTemplate: "tokenizer.chat_template",
} as const;

/** Tensor base names (without the `.weight` / `.bias` suffix). */
export const Tensors = {
  tokenEmbd: "token_embd",
  outputNorm: "output_norm",
  output: "output",
  attnNorm: "blk.{bid}.attn_norm",
  attnQ: "blk.{bid}.attn_q",
  attnK: "blk.{bid}.attn_k",
  attnV: "blk.{bid}.attn_v",
  attnOut: "blk.{bid}.attn_output",
  attnQNorm: "blk.{bid}.attn_q_norm",
  attnKNorm: "blk.{bid}.attn_k_norm",
  attnSinks: "blk.{bid}.attn_sinks",
  attnPostNorm: "blk.{bid}.post_attention_norm",
  // gated DeltaNet layers (qwen3next, qwen35moe); ssm_a has no suffix
  attnQkv: "blk.{bid}.attn_qkv",
  attnGate: "blk.{bid}.attn_gate",
  ssmIn: "blk.{bid}.ssm_in",
  ssmConv1d: "blk.{bid}.ssm_conv1d",
  ssmDt: "blk.{bid}.ssm_dt",
  ssmA: "blk.{bid}.ssm_a",
  ssmBeta: "blk.{bid}.ssm_beta",
  ssmAlpha: "blk.{bid}.ssm_alpha",
  ssmBa: "blk.{bid}.ssm_ba",
  ssmNorm: "blk.{bid}.ssm_norm",
  ssmOut: "blk.{bid}.ssm_out",
  attnQA: "blk.{bid}.attn_q_a",
  attnQANorm: "blk.{bid}.attn_q_a_norm",
  attnQB: "blk.{bid}.attn_q_b",
  attnKvAMqa: "blk.{bid}.attn_kv_a_mqa",
  attnKvANorm: "blk.{bid}.attn_kv_a_norm",
  attnKvB: "blk.{bid}.attn_kv_b",
  attnKB: "blk.{bid}.attn_k_b",
  attnVB: "blk.{bid}.attn_v_b",
  ffnNorm: "blk.{bid}.ffn_norm",
  ffnGate: "blk.{bid}.ffn_gate",
  ffnUp: "blk.{bid}.ffn_up",
  ffnDown: "blk.{bid}.ffn_down",
  ffnGateInp: "blk.{bid}.ffn_gate_inp",
  ffnExpProbsB: "blk.{bid}.exp_probs_b",
  ffnGateExps: "blk.{bid}.ffn_gate_exps",
  ffnUpExps: "blk.{bid}.ffn_up_exps",
  ffnDownExps: "blk.{bid}.ffn_down_exps",
  ffnGateShexp: "blk.{bid}.ffn_gate_shexp",
  ffnUpShexp: "blk.{bid}.ffn_up_shexp",
  ffnDownShexp: "blk.{bid}.ffn_down_shexp",
  ffnGateInpShexp: "blk.{bid}.ffn_gate_inp_shexp",
  // Multi-token-prediction (nextn) blocks after the trunk (GLM-4.x, DeepSeek-V3 conversions).
  nextnEhProj: "blk.{bid}.nextn.eh_proj",
  nextnEnorm: "blk.{bid}.nextn.enorm",
  nextnHnorm: "blk.{bid}.nextn.hnorm",
  nextnSharedHeadNorm: "blk.{bid}.nextn.shared_head_norm",
  nextnSharedHeadHead: "blk.{bid}.nextn.shared_head_head",
} as const;

/** A per-architecture key with `{arch}` filled in. */
export function archKey(key: string, arch: string): string {
  return key.replace("{arch}", arch);
}

/** A tensor name for block `bid` with its suffix (`"weight"` by default). */
export function tensorName(base: string, bid?: number, suffix = "weight"): string {
  const name = bid === undefined ? base : base.replace("{bid}", String(bid));
  return suffix ? `${name}.${suffix}` : name;
}

/** The routed-expert tensors of a block: streamed, never resident. */
export const EXPERT_TENSOR_PATTERN =
  /^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.(weight|bias|scale)$/;

/** Whether a tensor holds routed experts (streamed) rather than base weights (resident). */
export function isExpertTensor(name: string): boolean {
  return EXPERT_TENSOR_PATTERN.test(name);
}
