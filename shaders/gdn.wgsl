// gdn: the gated delta rule of a gated DeltaNet layer (Qwen3-Next,
// Qwen3.5-MoE), as llama.cpp computes it (ggml gated_delta_net): per value
// head h a state matrix M (S × S, M[j][i]: j value dim, i key dim) carried
// across tokens. Per token, with q and k of k head kh (h % Hk, or
// h / (H / Hk) when interleaved) L2-normalised (x / max(‖x‖, eps)) and q
// scaled by 1/√S, and beta and the decay from gdn_gates:
//   M ← decay · M;  d_j = β (v_j − Σ_i M[j][i] k_i);  M[j][i] += k_i d_j;
//   out_j = Σ_i M[j][i] q_i.
// The batch's tokens run one after another inside the dispatch (token by
// token, whatever the batch size), so a prompt batch equals its tokens fed
// one at a time.
//
// State is written only by a pass whose tokens will be kept: when an expert
// miss was recorded earlier in this pass (misses[0] != 0: the token will be
// repaired from that layer) or in an earlier token of the same decode window
// (misses[1] != 0: the token will be dropped), the kernel returns at once.
// At position 0 (step[0] == 0) the state starts from zeros: a new sequence.
//
// Bindings (inputs → outputs → params):
//   @binding(0) qkv:    array<f32>  [T, qkvStride] from qkvOffset: [q (Hk·S) | k (Hk·S) | v (H·S)]  read
//   @binding(1) ba:     array<f32>  [T, baStride] from baOffset: gdn_gates' output     read
//   @binding(2) state:  array<f32>  [H, S, S]                                          read_write
//   @binding(3) out:    array<f32>  [T, outStride] from outOffset: [H, S]              read_write
//   @binding(4) step:   array<u32>  [0] pos0, [1] tokens in the batch                  read
//   @binding(5) misses: array<u32>  [0] misses in this pass, [1] in this window        read
//   @binding(6) params: struct Params
//
// Dispatch: H workgroups; invocation j owns state rows j, j + WG_SIZE, …

struct Params {
  nHeads: u32, // H (value heads)
  nKHeads: u32, // Hk
  headDim: u32, // S, ≤ MAX_S
  interleaved: u32,
  qkvOffset: u32,
  qkvStride: u32,
  outOffset: u32,
  outStride: u32,
  baOffset: u32,
  baStride: u32,
  grouped: u32,
  eps: f32,
}

const MAX_S: u32 = 256u;

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> ba: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read> misses: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

var<workgroup> kn: array<f32, MAX_S>;
var<workgroup> qn: array<f32, MAX_S>;
var<workgroup> uni: array<u32, 3>; // skip, tokens, fresh

//#include wg_reduce
//#include gdn_layout

@compute @workgroup_size(WG_SIZE)
fn gdn(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  if (lid == 0u) {
    uni[0] = select(0u, 1u, misses[0] != 0u || misses[1] != 0u);
    uni[1] = step[1];
    uni[2] = select(0u, 1u, step[0] == 0u);
  }
  let skip = workgroupUniformLoad(&uni[0]);
  let T = workgroupUniformLoad(&uni[1]);
  let fresh = workgroupUniformLoad(&uni[2]);
  if (skip != 0u) {
    return;
  }
  let H = params.nHeads;
  let Hk = params.nKHeads;
  let S = params.headDim;
  let kh = select(h % Hk, h / (H / Hk), params.interleaved != 0u);
  let sBase = h * S * S;
  if (fresh != 0u) {
    // each invocation clears the rows it owns below
    for (var j = lid; j < S; j += WG_SIZE) {
      for (var i = 0u; i < S; i++) {
        state[sBase + j * S + i] = 0.0;
      }
    }
  }
  let ratio = H / Hk;
  let bOff = betaAt(h, params.grouped, ratio);
  let aOff = bOff + alphaDelta(H, params.grouped, ratio);
  let qScale = 1.0 / sqrt(f32(S));
  for (var t = 0u; t < T; t++) {
    let row = params.qkvOffset + t * params.qkvStride;
    let qAt = row + kh * S;
    let kAt = row + Hk * S + kh * S;
    let vAt = row + 2u * Hk * S + h * S;
    var sq = 0.0;
    var sk = 0.0;
    for (var i = lid; i < S; i += WG_SIZE) {
      let q = qkv[qAt + i];
      let k = qkv[kAt + i];
      qn[i] = q;
      kn[i] = k;
      sq += q * q;
      sk += k * k;
    }
    // wg_sum's barriers also publish qn and kn to the workgroup
    let qMul = qScale / max(sqrt(wg_sum(lid, sq)), params.eps);
    let kMul = 1.0 / max(sqrt(wg_sum(lid, sk)), params.eps);
    let b = params.baOffset + t * params.baStride;
    let beta = ba[b + bOff];
    let decay = ba[b + aOff];
    for (var j = lid; j < S; j += WG_SIZE) {
      let r = sBase + j * S;
      var dot = 0.0;
      for (var i = 0u; i < S; i++) {
        let m = state[r + i] * decay;
        state[r + i] = m;
        dot += m * (kn[i] * kMul);
      }
      let d = (qkv[vAt + j] - dot) * beta;
      var o = 0.0;
      for (var i = 0u; i < S; i++) {
        let m = state[r + i] + (kn[i] * kMul) * d;
        state[r + i] = m;
        o += m * (qn[i] * qMul);
      }
      out[params.outOffset + t * params.outStride + h * S + j] = o;
    }
    // the next token overwrites qn and kn
    workgroupBarrier();
  }
}
