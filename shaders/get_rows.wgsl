// get_rows: out[t, c] = W[ids[t] - row_start, c] for t < T, dequantised to
// f32 (the embedding lookup). A weight split into chunks gets one dispatch
// per chunk; each writes only the tokens whose row it holds.
//
// Variants (text substitution, weight type only):
//   QUANT  (in double braces, below) the common part and one type section
//          of quant.wgsl: QK, QB, NP, TAIL, xoff, deq; see there
// Overrides (tunables):
//   WG  invocations per workgroup (default 64)
//
// Bindings (inputs -> outputs -> params):
//   @binding(0) W:    array<u32>  raw ggml bytes of the chunk      read
//   @binding(1) ids:  array<u32>  [T] row ids                      read_write*
//   @binding(2) step: array<u32>  the step buffer; [1] = T         read
//   @binding(3) out:  array<f32>  [T, n_cols]                      read_write
//   @binding(4) params: read-only storage, struct Params below
//   * never written; read_write so that ids may share a buffer with out.
//
// Dispatch: T workgroups (linear index wid.x + wid.y * nwg.x), one per
// token; the invocations stride over the row's 8-element pieces.

{{QUANT}}

struct Params {
  w_off: u32, // bytes from the binding start to the chunk's first row
  row_bytes: u32, // bytes per row
  row_start: u32, // first row held by this chunk
  n_rows: u32, // rows held by this chunk
  n_cols: u32, // row length, elements
  ids_off: u32, // ids: first element
  ids_stride: u32, // ids: elements between tokens
  out_off: u32, // out: first element
  out_stride: u32, // out: elements between tokens
}

override WG: u32 = 64;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> params: Params;

fn store4(base: u32, col: u32, v: vec4f) {
  let i = base + col;
  if (TAIL && col + 4u > params.n_cols) {
    for (var k = 0u; k < 4u; k++) {
      if (col + k < params.n_cols) {
        out[i + k] = v[k];
      }
    }
    return;
  }
  out[i] = v.x;
  out[i + 1u] = v.y;
  out[i + 2u] = v.z;
  out[i + 3u] = v.w;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= step[1]) {
    return;
  }
  let r = ids[params.ids_off + t * params.ids_stride] - params.row_start;
  if (r >= params.n_rows) {
    return;
  }
  let rb = params.w_off + r * params.row_bytes;
  let ob = params.out_off + t * params.out_stride;
  let np = ((params.n_cols + QK - 1u) / QK) * NP;
  for (var g = lid; g < np; g += WG) {
    let blk = g / NP;
    let p = g % NP;
    let pc = deq(rb + blk * QB, p);
    let o = xoff(p) + blk * QK;
    store4(ob, o.x, pc.a);
    store4(ob, o.y, pc.b);
  }
}
