// rope: in-place rotary position embedding of [T, nHeads, headDim] as ggml's
// rope_ext computes it (forward), for the nRot dimensions of each head that
// start at dimOffset (ggml n_offs; 0 except for split heads):
//   mode 0 "normal" pairs (2i, 2i+1)              (llama, deepseek2)
//   mode 2 "neox"   pairs (i, i + nRot/2)         (qwen, gpt-oss, olmoe)
// Token t sits at the position the step buffer gives it ([4 + 2t]). Pair i's
// angle is pos · thetaScale^i (ggml's running product in f32), divided by
// the optional frequency factor, then YaRN-corrected (rope_yarn):
//   interp = freqScale · extrap
//   ext ≠ 0: mix = ramp(i) · ext, theta = interp (1 − mix) + extrap · mix, m = mscaleExt
//   ext = 0: theta = interp, m = mscale
//   ramp(i) = 1 − clamp((i − corr0) / max(0.001, corr1 − corr0), 0, 1)
//   x0' = x0 m cos − x1 m sin,  x1' = x0 m sin + x1 m cos
// Angles are reduced modulo 2π exactly (Cody–Waite) before cos/sin, so
// large positions keep their precision on GPUs with fast, short-range trig.
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<f32>  [T, nHeads, headStride] element
//                                   offset + t * stride + h * headStride + dimOffset + d
//                                   (read and written in place)
//   @binding(1) ff:     array<f32>  [nRot / 2] frequency factors from ffOffset;
//                                   unused when hasFreqFactors = 0             read
//   @binding(2) step:   array<u32>  the step buffer: [4 + 2t] = token t's position  read
//   @binding(3) params: read-only storage, struct Params below
//
// Dispatch: [ceil(nHeads · nRot/2 / WG_SIZE), T]; one invocation per pair.

struct Params {
  nHeads: u32,
  headStride: u32,
  nRot: u32,
  dimOffset: u32,
  offset: u32,
  stride: u32,
  mode: u32, // 0 normal, 2 neox
  hasFreqFactors: u32,
  ffOffset: u32,
  thetaScale: f32,
  freqScale: f32,
  extFactor: f32,
  corr0: f32,
  corr1: f32,
  mscale: f32,
  mscaleExt: f32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> ff: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read> params: Params;

// 2π = C1 + C2 + C3 with C1 and C2 short enough that k·C1 and k·C2 are exact
// for k < 2^16 (angles up to ~4e5), so theta − k·2π loses nothing.
const INV_TWO_PI: f32 = 0.15915494309189535;
const C1: f32 = 6.28125;
const C2: f32 = 0.0019378662109375; // 127 / 2^16
const C3: f32 = -2.559031372584286e-6;

fn reduce_angle(theta: f32) -> f32 {
  let k = round(theta * INV_TWO_PI);
  return ((theta - k * C1) - k * C2) - k * C3;
}

@compute @workgroup_size(WG_SIZE)
fn rope(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let half = params.nRot / 2u;
  let j = wid.x * WG_SIZE + lid;
  if (j >= params.nHeads * half) {
    return;
  }
  let h = j / half;
  let i = j % half;
  let t = wid.y;

  var theta = f32(step[4u + 2u * t]);
  for (var r = 0u; r < i; r++) {
    theta *= params.thetaScale;
  }
  if (params.hasFreqFactors != 0u) {
    theta = theta / ff[params.ffOffset + i];
  }
  let extrap = theta;
  let interp = params.freqScale * extrap;
  var angle = interp;
  var m = params.mscale;
  if (params.extFactor != 0.0) {
    let y = (f32(i) - params.corr0) / max(0.001, params.corr1 - params.corr0);
    let mix = (1.0 - min(1.0, max(0.0, y))) * params.extFactor;
    angle = interp * (1.0 - mix) + extrap * mix;
    m = params.mscaleExt;
  }
  let a = reduce_angle(angle);
  let c = cos(a) * m;
  let s = sin(a) * m;

  let base = params.offset + t * params.stride + h * params.headStride + params.dimOffset;
  var i0: u32;
  var i1: u32;
  if (params.mode == 0u) {
    i0 = base + 2u * i;
    i1 = i0 + 1u;
  } else {
    i0 = base + i;
    i1 = i0 + half;
  }
  let x0 = x[i0];
  let x1 = x[i1];
  x[i0] = x0 * c - x1 * s;
  x[i1] = x0 * s + x1 * c;
}
