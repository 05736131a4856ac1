// gdn_gates: the gates of a gated DeltaNet layer (Qwen3-Next, Qwen3.5-MoE),
// in place over each token's beta/alpha projections, as llama.cpp computes
// them: beta ← sigmoid(beta), alpha ← exp(softplus(alpha + dt_bias) · ssm_a)
// (ssm_a = −exp(A_log): the per-token decay of each value head's state).
//
// Bindings (inputs → outputs → params):
//   @binding(0) dtBias: array<f32>  [H] (dtOffset)                                 read
//   @binding(1) ssmA:   array<f32>  [H] (aOffset)                                  read
//   @binding(2) ba:     array<f32>  [T, baStride] from baOffset                    read_write
//   @binding(3) step:   array<u32>  [1] tokens in the batch                        read
//   @binding(4) params: struct Params
//
// Head h's beta is at betaAt(h), its alpha alphaDelta further (lib/gdn_layout).
// Dispatch: [ceil(H / WG_SIZE), T].

struct Params {
  nHeads: u32,
  baOffset: u32,
  baStride: u32,
  grouped: u32, // 0: [beta (H) | alpha (H)]; 1: per k head [beta (r) | alpha (r)] (qwen3next's ssm_ba)
  ratio: u32, // r = H / Hk
  dtOffset: u32,
  aOffset: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> dtBias: array<f32>;
@group(0) @binding(1) var<storage, read> ssmA: array<f32>;
@group(0) @binding(2) var<storage, read_write> ba: array<f32>;
@group(0) @binding(3) var<storage, read> step: array<u32>;
@group(0) @binding(4) var<storage, read> params: Params;

//#include gdn_layout

fn softplus(v: f32) -> f32 {
  // ggml_softplus: log(1 + exp(x)), and x itself above 20
  return select(log(1.0 + exp(v)), v, v > 20.0);
}

@compute @workgroup_size(WG_SIZE)
fn gdn_gates(@builtin(global_invocation_id) gid: vec3u) {
  let h = gid.x;
  let t = gid.y;
  if (h >= params.nHeads || t >= step[1]) {
    return;
  }
  let row = params.baOffset + t * params.baStride;
  let bi = row + betaAt(h, params.grouped, params.ratio);
  let ai = bi + alphaDelta(params.nHeads, params.grouped, params.ratio);
  ba[bi] = 1.0 / (1.0 + exp(-ba[bi]));
  ba[ai] = exp(softplus(ba[ai] + dtBias[params.dtOffset + h]) * ssmA[params.aOffset + h]);
}
