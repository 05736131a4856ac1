// copy_rows: a strided copy of `rows` rows of `n` elements per token,
//   y[t, r, i] = x[t, r, i]   for r < rows, i < n,
// where row r of token t starts at offset + t·stride + r·rowStride in each
// buffer. Multi-head latent attention uses it to put each head's rotated
// query part after its absorbed (latent-space) part; a row stride of 0 in x
// broadcasts one row to every row of y.
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<f32>  read
//   @binding(1) y:      array<f32>  read_write
//   @binding(2) params: read-only storage, struct Params below
//
// Dispatch: [ceil(rows · n / WG_SIZE), T]; workgroup (x, t) copies elements
// x·WG_SIZE … of token t's rows.

struct Params {
  n: u32, // elements per row
  rows: u32, // rows per token
  xOffset: u32,
  xStride: u32,
  xRowStride: u32,
  yOffset: u32,
  yStride: u32,
  yRowStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn copy_rows(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wid.x * WG_SIZE + lid;
  let t = wid.y;
  if (j >= params.rows * params.n) {
    return;
  }
  let r = j / params.n;
  let i = j % params.n;
  y[params.yOffset + t * params.yStride + r * params.yRowStride + i] =
    x[params.xOffset + t * params.xStride + r * params.xRowStride + i];
}
