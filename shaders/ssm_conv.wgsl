// ssm_conv: the short causal conv1d of a gated DeltaNet layer (Qwen3-Next,
// Qwen3.5-MoE) over a per-sequence conv state, then SiLU, as llama.cpp
// computes it (src/models/delta-net-base.cpp build_conv_state, ggml_ssm_conv):
//   y[t, c] = silu(Σ_k w[c, k] · in[t − K + 1 + k, c])
// where inputs before the batch come from the state (the last K − 1 inputs of
// each channel), which is then advanced. The batch's tokens run one after
// another, so a prompt batch equals its tokens fed one at a time.
//
// State is written only by a pass whose tokens will be kept: when an expert
// miss was recorded earlier in this pass (misses[0] != 0: the token will be
// repaired from that layer) or in an earlier token of the same decode window
// (misses[1] != 0: the token will be dropped), the kernel returns at once.
// At position 0 (step[0] == 0) the state starts from zeros: a new sequence.
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<f32>  [T, C] (xOffset, xStride): the qkv projection    read
//   @binding(1) w:      array<f32>  [C, K] conv weights (ggml ne = [K, C])          read
//   @binding(2) state:  array<f32>  [C, K−1], oldest input first                    read_write
//   @binding(3) y:      array<f32>  [T, C] (yOffset, yStride)                       read_write
//   @binding(4) step:   array<u32>  [0] pos0, [1] tokens in the batch               read
//   @binding(5) misses: array<u32>  [0] misses in this pass, [1] in this window     read
//   @binding(6) params: struct Params
//
// Dispatch: ceil(C / WG_SIZE) workgroups; one invocation per channel.

struct Params {
  nChannels: u32,
  kernel: u32, // K, ≤ MAX_K
  xOffset: u32,
  xStride: u32,
  yOffset: u32,
  yStride: u32,
  wOffset: u32,
}

const MAX_K: u32 = 8u;

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read> misses: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

@compute @workgroup_size(WG_SIZE)
fn ssm_conv(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  if (c >= params.nChannels || misses[0] != 0u || misses[1] != 0u) {
    return;
  }
  let K = params.kernel;
  let fresh = step[0] == 0u;
  // win[0 … K−2] = the previous inputs (oldest first), win[K−1] = this token's
  var win: array<f32, MAX_K>;
  for (var k = 0u; k + 1u < K; k++) {
    win[k] = select(state[c * (K - 1u) + k], 0.0, fresh);
  }
  var wk: array<f32, MAX_K>;
  for (var k = 0u; k < K; k++) {
    wk[k] = w[params.wOffset + c * K + k];
  }
  let T = step[1];
  for (var t = 0u; t < T; t++) {
    win[K - 1u] = x[params.xOffset + t * params.xStride + c];
    var acc = 0.0;
    for (var k = 0u; k < K; k++) {
      acc += win[k] * wk[k];
    }
    y[params.yOffset + t * params.yStride + c] = silu(acc);
    for (var k = 0u; k + 1u < K; k++) {
      win[k] = win[k + 1u];
    }
  }
  for (var k = 0u; k + 1u < K; k++) {
    state[c * (K - 1u) + k] = win[k];
  }
}
