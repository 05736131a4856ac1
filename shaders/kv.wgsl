// kv: store the batch's keys and values into a layer's cache, token t at
// row base + pos (its sequence's first cache row and its position, from the
// step buffer's [5 + 2t] and [4 + 2t]). Rows are copied whole: a row is
// whatever one position holds (nHeadKv · headDim for K or V, or MLA's
// [latent | k_pe] row), so any row width works. vWidth = 0 stores K only.
//
// Bindings (inputs → outputs → params):
//   @binding(0) k:      array<f32>  [T, kWidth] from kOffset, kStride apart       read
//   @binding(1) v:      array<f32>  [T, vWidth] from vOffset, vStride apart       read
//   @binding(2) kCache: array<f32>  [nCtx, kWidth] from kcOffset, kcStride apart  written
//   @binding(3) vCache: array<f32>  [nCtx, vWidth] from vcOffset, vcStride apart  written
//   @binding(4) step:   array<u32>  the step buffer: per-token [4 + 2t], [5 + 2t]   read
//   @binding(5) params: read-only storage, struct Params below
//
// Dispatch: [ceil((kWidth + vWidth) / WG_SIZE), T]; element j < kWidth is
// K's, the rest V's.

struct Params {
  kWidth: u32,
  kOffset: u32,
  kStride: u32,
  kcOffset: u32,
  kcStride: u32,
  vWidth: u32,
  vOffset: u32,
  vStride: u32,
  vcOffset: u32,
  vcStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(3) var<storage, read_write> vCache: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn store(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wid.x * WG_SIZE + lid;
  let t = wid.y;
  let pos = step[5u + 2u * t] + step[4u + 2u * t];
  if (j < params.kWidth) {
    kCache[params.kcOffset + pos * params.kcStride + j] = k[params.kOffset + t * params.kStride + j];
  } else if (j < params.kWidth + params.vWidth) {
    let i = j - params.kWidth;
    vCache[params.vcOffset + pos * params.vcStride + i] = v[params.vOffset + t * params.vStride + i];
  }
}
