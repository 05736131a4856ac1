// attn_gate: the gated full attention of Qwen3-Next and Qwen3.5-MoE, whose Q
// projection yields per head [q (D) | gate (D)]. split_heads copies the q
// halves into a dense [T, nHead, D] buffer for RoPE and attention;
// sigmoid_mul multiplies the attention output by sigmoid(gate).
//
// Bindings (inputs → outputs → params):
//   @binding(0) src:    array<f32>  [T, srcStride] from srcOffset; head h at h · srcHeadStride  read
//   @binding(1) y:      array<f32>  [T, yStride] from yOffset: [nHead, D]                       read_write
//   @binding(2) step:   array<u32>  [1] tokens in the batch                                      read
//   @binding(3) params: struct Params
//
// split_heads: y[t, h, i] = src[t, h · srcHeadStride + i]
// sigmoid_mul: y[t, h, i] *= sigmoid(src[t, h · srcHeadStride + gateOffset + i])
// Dispatch: [ceil(nHead · D / WG_SIZE), T].

struct Params {
  nHead: u32,
  headDim: u32, // D
  srcOffset: u32,
  srcStride: u32,
  srcHeadStride: u32,
  gateOffset: u32,
  yOffset: u32,
  yStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read> params: Params;

fn srcAt(t: u32, e: u32, extra: u32) -> u32 {
  let h = e / params.headDim;
  let i = e % params.headDim;
  return params.srcOffset + t * params.srcStride + h * params.srcHeadStride + extra + i;
}

@compute @workgroup_size(WG_SIZE)
fn split_heads(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x;
  let t = gid.y;
  if (e >= params.nHead * params.headDim || t >= step[1]) {
    return;
  }
  y[params.yOffset + t * params.yStride + e] = src[srcAt(t, e, 0u)];
}

@compute @workgroup_size(WG_SIZE)
fn sigmoid_mul(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x;
  let t = gid.y;
  if (e >= params.nHead * params.headDim || t >= step[1]) {
    return;
  }
  let g = src[srcAt(t, e, params.gateOffset)];
  let at = params.yOffset + t * params.yStride + e;
  y[at] = y[at] / (1.0 + exp(-g));
}
