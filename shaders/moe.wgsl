// moe: combine the chosen experts' outputs of each token, in one pass:
//   out[t] = ((Σ_k w[t,k] · y[t,k]) + shared[t] · σ(gate[t])) + residual[t]
// with the shared expert, its gate and the residual each optional. The sum
// runs k = 0, 1, … in f32, the order in which llama.cpp adds the views.
//
// Bindings (inputs → outputs → params). residual and out are read_write so
// that out may be the residual stream itself (out += …):
//   @binding(0) y:        array<f32>  [T, K, n]: yOffset + t*yStride + k*yExpertStride + i   read
//   @binding(1) w:        array<f32>  [T, K]: wOffset + t*wStride + k                      read
//   @binding(2) shared:   array<f32>  [T, n]: sOffset + t*sStride + i (if hasShared)       read
//   @binding(3) gate:     array<f32>  [T]: gOffset + t*gStride (if hasGate)                read
//   @binding(4) residual: array<f32>  [T, n]: rOffset + t*rStride + i (if hasResidual)     read
//   @binding(5) out:      array<f32>  [T, n]: oOffset + t*oStride + i                      written
//   @binding(6) params: read-only storage, struct Params below
//
// Dispatch: [ceil(n / WG_SIZE), T].

struct Params {
  n: u32, // row length
  k: u32, // experts per token
  yOffset: u32,
  yStride: u32,
  yExpertStride: u32,
  wOffset: u32,
  wStride: u32,
  hasShared: u32,
  sOffset: u32,
  sStride: u32,
  hasGate: u32,
  gOffset: u32,
  gStride: u32,
  hasResidual: u32,
  rOffset: u32,
  rStride: u32,
  oOffset: u32,
  oStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> shared_: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn combine(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wid.x * WG_SIZE + lid;
  let t = wid.y;
  if (i >= params.n) {
    return;
  }
  let wb = params.wOffset + t * params.wStride;
  var yi = params.yOffset + t * params.yStride + i;
  var acc = y[yi] * w[wb];
  for (var r = 1u; r < params.k; r++) {
    yi += params.yExpertStride;
    acc = acc + y[yi] * w[wb + r];
  }
  if (params.hasShared != 0u) {
    var s = shared_[params.sOffset + t * params.sStride + i];
    if (params.hasGate != 0u) {
      let g = gate[params.gOffset + t * params.gStride];
      s = s * (1.0 / (1.0 + exp(min(-g, 88.0))));
    }
    acc = acc + s;
  }
  if (params.hasResidual != 0u) {
    acc = acc + residual[params.rOffset + t * params.rStride + i];
  }
  out[params.oOffset + t * params.oStride + i] = acc;
}
