// rows: copy the last token's row of a batch, so the output head runs on one
// token whatever the batch size (the batch size is only known per submit).
//
// Bindings (inputs → outputs → params):
//   @binding(0) x:      array<f32>  [nTokens, stride] (from offset)   read
//   @binding(1) out:    array<f32>  [n]                               read_write
//   @binding(2) step:   array<u32>  the step buffer: [1] = nTokens    read
//   @binding(3) params: read-only storage, struct Params below
//
// Dispatch: ceil(n / WG_SIZE) workgroups.

struct Params {
  n: u32, // elements to copy
  offset: u32, // first element of row 0 in x
  stride: u32, // elements between rows
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn copy_last_row(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i >= params.n) {
    return;
  }
  let last = max(step[1], 1u) - 1u;
  out[i] = x[params.offset + last * params.stride + i];
}

// gather_rows: out[r, i] = x[row r, i] for the rows a batch of several
// sequences needs logits for (each sequence's last token), the rows listed
// in the head's step buffer: [1] = rows, [4 + r] = batch row of output r.
//   Same bindings as copy_last_row (out [rows, n]). Dispatch: [ceil(n / WG_SIZE), rows].
@compute @workgroup_size(WG_SIZE)
fn gather_rows(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  let r = gid.y;
  if (i >= params.n || r >= step[1]) {
    return;
  }
  out[r * params.n + i] = x[params.offset + step[4u + r] * params.stride + i];
}

// save_if_clean: out[t, i] = x[t, i] for t < nTokens while no expert miss
// has been recorded yet in this pass (misses[0] == 0). Placed before each MoE
// step, it leaves `out` holding the residual stream that entered the first
// MoE step that missed, which is where a repaired token resumes.
//   Same bindings as copy_last_row, with the miss counter as binding 2
//   (`step` there) and params [0] n (elements per token), [1] offset,
//   [2] stride (of x and out alike). Dispatch: ceil(n * nTokens / WG_SIZE).
@compute @workgroup_size(WG_SIZE)
fn save_if_clean(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG_SIZE;
  if (step[0] != 0u) {
    return;
  }
  let t = i / params.n;
  let j = i % params.n;
  let total = arrayLength(&out);
  let at = params.offset + t * params.stride + j;
  if (at < total) {
    out[at] = x[at];
  }
}
