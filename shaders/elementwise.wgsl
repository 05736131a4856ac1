// elementwise: per-element ops over [T, n] activations (residual adds, bias,
// scale, copy, activations and gated units). llama.cpp's CPU formulas:
//   silu(x)        = x / (1 + exp(-x))
//   swiglu(g, u)   = silu(g) * u
//   swiglu_oai     = g' * sigmoid(alpha * g') * (u' + 1),
//                    g' = min(g, limit), u' = clamp(u, -limit, limit)   (GPT-OSS)
//   gelu(x)        = ggml's f16 table: 0 for x <= -10, x for x >= 10, else
//                    f16(0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))) at x = f16(x)
//   geglu(g, u)    = gelu(g) * u
//   add_id         = a[t, r, :] + b[ids[t, r], :]  (ggml_add_id: per-expert biases of
//                    GPT-OSS, rows r of length rowLen within a token)
//
// Bindings (inputs → outputs → params). Every activation binding is
// read_write so that the output may alias an input (in-place ops):
//   @binding(0) a:      array<f32>  [T, aStride] from aOffset   (read)
//   @binding(1) b:      array<f32>  [T, bStride] from bOffset   (read; bStride 0 broadcasts
//                                   one row, e.g. a bias; unused by unary ops)
//   @binding(2) ids:    array<u32>  [T, idsStride] from idsOffset (add_id only)  read
//   @binding(3) y:      array<f32>  [T, yStride] from yOffset   (written)
//   @binding(4) params: read-only storage, struct Params below
//
// Dispatch: [ceil(n / WG_SIZE), T]; workgroup (x, t) handles elements
// x*WG_SIZE .. of token t.
//
// Entry points: add (y = a + b), scale (y = s0 * a), copy (y = a), silu,
// gelu, swiglu (y = silu(a) * b), swiglu_oai, geglu (y = gelu(a) * b), add_id.

struct Params {
  n: u32, // elements per token
  aOffset: u32,
  aStride: u32,
  bOffset: u32,
  bStride: u32,
  yOffset: u32,
  yStride: u32,
  s0: f32, // scale (scale), alpha (swiglu_oai)
  s1: f32, // limit (swiglu_oai)
  rowLen: u32, // add_id: row r = i / rowLen of a token uses b row ids[t, r]
  idsOffset: u32,
  idsStride: u32,
  bRowStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> params: Params;

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.79788456080286535587989211986876;

fn silu(x: f32) -> f32 {
  // exp(-x) overflows to inf for x < -88; clamping keeps the quotient a tiny finite number.
  return x / (1.0 + exp(min(-x, 88.0)));
}

// Rounds to the nearest f16 value, subnormals included (quantizeToF16 may flush them).
fn f16_round(v: f32) -> f32 {
  if (abs(v) < 6.103515625e-5) {
    return round(v * 16777216.0) / 16777216.0;
  }
  return quantizeToF16(v);
}

fn gelu(x: f32) -> f32 {
  if (x <= -10.0) {
    return 0.0;
  }
  if (x >= 10.0) {
    return x;
  }
  let h = f16_round(x);
  // 0.5 (1 + tanh(z)) = 1 / (1 + e^(-2z)): no cancellation where tanh(z) ≈ -1, and no
  // dependence on how closely the GPU's tanh approaches ±1.
  let z = SQRT_2_OVER_PI * h * (1.0 + GELU_COEF_A * h * h);
  return f16_round(h / (1.0 + exp(min(-2.0 * z, 88.0))));
}

struct Idx {
  ok: bool,
  a: u32,
  b: u32,
  y: u32,
}

fn index(wid: vec3u, lid: u32) -> Idx {
  let i = wid.x * WG_SIZE + lid;
  let t = wid.y;
  return Idx(
    i < params.n,
    params.aOffset + t * params.aStride + i,
    params.bOffset + t * params.bStride + i,
    params.yOffset + t * params.yStride + i,
  );
}

@compute @workgroup_size(WG_SIZE)
fn add(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = a[ix.a] + b[ix.b];
  }
}

@compute @workgroup_size(WG_SIZE)
fn scale(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = params.s0 * a[ix.a];
  }
}

@compute @workgroup_size(WG_SIZE)
fn copy(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = a[ix.a];
  }
}

@compute @workgroup_size(WG_SIZE)
fn silu_op(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = silu(a[ix.a]);
  }
}

@compute @workgroup_size(WG_SIZE)
fn gelu_op(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = gelu(a[ix.a]);
  }
}

@compute @workgroup_size(WG_SIZE)
fn swiglu(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = silu(a[ix.a]) * b[ix.b];
  }
}

@compute @workgroup_size(WG_SIZE)
fn swiglu_oai(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    let alpha = params.s0;
    let limit = params.s1;
    let g = min(a[ix.a], limit);
    let u = clamp(b[ix.b], -limit, limit);
    let glu = g / (1.0 + exp(min(alpha * -g, 88.0)));
    y[ix.y] = glu * (u + 1.0);
  }
}

@compute @workgroup_size(WG_SIZE)
fn geglu(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let ix = index(wid, lid);
  if (ix.ok) {
    y[ix.y] = gelu(a[ix.a]) * b[ix.b];
  }
}

@compute @workgroup_size(WG_SIZE)
fn add_id(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wid.x * WG_SIZE + lid;
  let t = wid.y;
  if (i >= params.n) {
    return;
  }
  let r = i / params.rowLen;
  let e = ids[params.idsOffset + t * params.idsStride + r];
  let bi = params.bOffset + e * params.bRowStride + i % params.rowLen;
  y[params.yOffset + t * params.yStride + i] = a[params.aOffset + t * params.aStride + i] + b[bi];
}
