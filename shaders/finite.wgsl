// finite: flags the first layer whose output holds a NaN or an infinity, so a
// generation ends with an error naming it instead of sampling from NaN logits.
// The flag is read back with the tokens (no extra sync); the CPU sets it to
// 0xffffffff before a generation and each check lowers it to its layer index.
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<f32>          [nTokens, stride] (from offset)   read
//   @binding(1) flag:   array<atomic<u32>>  [1] lowest flagged layer          read_write
//   @binding(2) misses: array<u32>          [0] = experts missed in this pass read
//   @binding(3) step:   array<u32>          the step buffer: [1] = nTokens    read
//   @binding(4) params: read-only storage, struct Params below
//
// A pass that missed an expert (misses[0] != 0) checks nothing: its later
// layers were skipped and will be computed again by the repair.
//
// Dispatch: ceil(n * tokens / WG_SIZE) workgroups, split over x and y.

struct Params {
  n: u32, // elements per token
  offset: u32, // first element of row 0 in x
  stride: u32, // elements between rows
  layer: u32, // the value written to the flag
  tokens: u32, // rows to check; 0 = step[1]
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> flag: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> misses: array<u32>;
@group(0) @binding(3) var<storage, read> step: array<u32>;
@group(0) @binding(4) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn check_finite(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG_SIZE;
  if (misses[0] != 0u) {
    return;
  }
  var tokens = params.tokens;
  if (tokens == 0u) {
    tokens = step[1];
  }
  if (i >= params.n * tokens) {
    return;
  }
  let t = i / params.n;
  let j = i % params.n;
  // exponent bits all ones: an infinity or a NaN (WGSL has no isnan, and a
  // compiler may fold float comparisons that assume finite values)
  let bits = bitcast<u32>(x[params.offset + t * params.stride + j]);
  if ((bits & 0x7f800000u) == 0x7f800000u) {
    atomicMin(&flag[0], params.layer);
  }
}
