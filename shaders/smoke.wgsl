// smoke: y = a * x + b, element-wise. The smallest kernel that exercises the
// whole path: shader loading, dtype substitution, override constants, the
// pipeline cache, bind groups, the workgroup split across y, and readback.
//
// Variants (text substitution, dtype only):
//   {{ENABLE}}  "" for f32, "enable f16;" for f16 (needs shader-f16)
//   {{T}}       element type of x and y: f32 | f16
// Overrides (tunables):
//   WG_SIZE     invocations per workgroup (default 64)
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<T>  [n]           read
//   @binding(1) y:      array<T>  [n]           read_write
//   @binding(2) params: uniform, struct Params below
//
// Dispatch: ceil(n / WG_SIZE) workgroups, possibly split as [x, y, 1]; the
// linear workgroup index is wid.x + wid.y * nwg.x.
//
// Entry points:
//   main  y[i] = a * x[i] + b   (arithmetic in f32, rounded to T on store)
//   fill  y[i] = b              (x bound but unused)

{{ENABLE}}

struct Params {
  n: u32, // element count
  a: f32, // scale
  b: f32, // offset
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> y: array<{{T}}>;
@group(0) @binding(2) var<uniform> params: Params;

fn linear_index(wid: vec3u, nwg: vec3u, lid: u32) -> u32 {
  return (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
}

@compute @workgroup_size(WG_SIZE)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = linear_index(wid, nwg, lid);
  if (i >= params.n) {
    return;
  }
  y[i] = {{T}}(params.a * f32(x[i]) + params.b);
}

@compute @workgroup_size(WG_SIZE)
fn fill(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = linear_index(wid, nwg, lid);
  if (i >= params.n) {
    return;
  }
  y[i] = {{T}}(params.b);
}
