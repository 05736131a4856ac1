// train_gather: gathers a minibatch for the shadow predictor's trainer, from
// token-major samples into layer-major rows, 4-byte words of any type:
//   dst[dstOff + (l · B + i) · W + c] = src[(idx[i] · L + l) · W + c]
// for l < L (layers), i < B (tokens of the batch, ids in idx), c < W (words
// per row). Layer-major rows let each layer's rows be one matrix of a stack.
//
// Bindings (inputs → outputs → params):
//   @binding(0) src:    array<u32>  [nSamples, L, W]              read
//   @binding(1) idx:    array<u32>  [B] sample of each batch token read
//   @binding(2) dst:    array<u32>  [L, B, W] from dstOff          read_write
//   @binding(3) params: uniform, struct Params below
// Overrides: WG_SIZE.
// Dispatch: ceil(L·B·W / WG_SIZE) workgroups, split across y when large
// (linear index wid.x + wid.y · nwg.x).

struct Params {
  L: u32,
  B: u32,
  W: u32,
  dstOff: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WG_SIZE)
fn gather(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let j = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
  let W = params.W;
  if (j >= params.L * params.B * W) {
    return;
  }
  let c = j % W;
  let row = j / W;
  let i = row % params.B;
  let l = row / params.B;
  dst[params.dstOff + j] = src[(idx[i] * params.L + l) * W + c];
}
