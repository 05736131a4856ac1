// train_adam: one Adam(W) step over a flat parameter buffer:
//   m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²
//   p = p − lrT · m / (√v + epsT) − decay · p
// with the bias corrections folded into lrT = lr·√(1 − β2^t)/(1 − β1^t) and
// epsT = eps·√(1 − β2^t) (computed on the CPU per step), and decay = lr·wd
// (decoupled weight decay; 0 for none).
//
// Bindings (inputs → outputs → params):
//   @binding(0) g:      array<f32>  [n] gradients                read
//   @binding(1) p:      array<f32>  [n] parameters               read_write
//   @binding(2) m:      array<f32>  [n] first moments            read_write
//   @binding(3) v:      array<f32>  [n] second moments           read_write
//   @binding(4) params: uniform, struct Params below
// Overrides: WG_SIZE.
// Dispatch: ceil(n / WG_SIZE) workgroups, split across y when large
// (linear index wid.x + wid.y · nwg.x).

struct Params {
  n: u32,
  lrT: f32,
  beta1: f32,
  beta2: f32,
  epsT: f32,
  decay: f32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(WG_SIZE)
fn adam(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
  if (i >= params.n) {
    return;
  }
  let gi = g[i];
  let mi = params.beta1 * m[i] + (1.0 - params.beta1) * gi;
  let vi = params.beta2 * v[i] + (1.0 - params.beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  p[i] = p[i] - params.lrT * mi / (sqrt(vi) + params.epsT) - params.decay * p[i];
}
