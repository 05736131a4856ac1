// norm: RMSNorm of rows, y = x / sqrt(mean(x²) + eps) · w (ggml rms_norm, then
// mul by the weight). A token holds nRows rows of length n, rowStride apart:
// one row for attn/ffn/output norms and OLMoE's whole-projection q/k norms,
// one per head for Qwen3's q/k norms (weight of length headDim).
//
// Bindings (inputs → outputs → params). x is read_write so that y may be x
// (in place; each element is read and then written by the same invocation):
//   @binding(0) x:      array<f32>  [T, nRows, n]: t * xStride + r * xRowStride + i
//                                   from xOffset                                 (read)
//   @binding(1) w:      array<f32>  [n] from wOffset; unused when hasWeight = 0   read
//   @binding(2) y:      array<f32>  like x, with yOffset, yStride, yRowStride    (written)
//   @binding(3) params: read-only storage, struct Params below
//
// Dispatch: [nRows, T]; one workgroup per row.

struct Params {
  n: u32, // row length
  xOffset: u32,
  xStride: u32,
  xRowStride: u32,
  yOffset: u32,
  yStride: u32,
  yRowStride: u32,
  wOffset: u32,
  hasWeight: u32, // 0 | 1
  eps: f32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> params: Params;

//#include wg_reduce

@compute @workgroup_size(WG_SIZE)
fn rms_norm(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wid.x;
  let t = wid.y;
  let n = params.n;
  let xb = params.xOffset + t * params.xStride + r * params.xRowStride;
  let yb = params.yOffset + t * params.yStride + r * params.yRowStride;

  var sum = 0.0;
  for (var i = lid; i < n; i += WG_SIZE) {
    let v = x[xb + i];
    sum += v * v;
  }
  let mean = wg_sum(lid, sum) / f32(n);
  let scale = 1.0 / sqrt(mean + params.eps);

  for (var i = lid; i < n; i += WG_SIZE) {
    var v = x[xb + i] * scale;
    if (params.hasWeight != 0u) {
      v *= w[params.wOffset + i];
    }
    y[yb + i] = v;
  }
}
