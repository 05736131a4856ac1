// sample: token selection on the GPU, so the next token's embedding can read
// the chosen id without a readback. Today: greedy (argmax). Later samplers
// (temperature, top-k, top-p) go here as further entry points sharing the
// bindings below (extra inputs such as a random seed go at the end of params).
//
// argmax: for the selected rows of logits [T, n], the index of the largest
// logit (the first of equal ones, as ggml_argmax; NaN never wins; a row with
// no comparable value gives 0), written to tokens[outOffset + r], and the
// logit itself to maxLogit[maxOffset + r] when hasMax. Rows: mode 0 = row 0
// only, 1 = the batch's last row (nTokens − 1 from the step buffer), 2 = every
// row t of the batch (r = t).
//
// Bindings (inputs → outputs → params):
//   @binding(0) logits:   array<f32>  [T, n]: offset + t*stride + i        read
//   @binding(1) step:     array<u32>  step buffer, [1] = nTokens (mode 1)  read
//   @binding(2) tokens:   array<u32>  token ids, from outOffset            written
//   @binding(3) maxLogit: array<f32>  the chosen logits, from maxOffset    written (if hasMax)
//   @binding(4) params: uniform, 4-byte units:
//     [0] n: u32  [1] offset: u32  [2] stride: u32  [3] mode: u32
//     [4] outOffset: u32  [5] hasMax: u32  [6] maxOffset: u32
//
// Dispatch: one workgroup per output row ([1] for modes 0 and 1, [T] for 2).

struct Params {
  n: u32,
  offset: u32,
  stride: u32,
  mode: u32,
  outOffset: u32,
  hasMax: u32,
  maxOffset: u32,
}

override WG_SIZE: u32 = 256;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> step: array<u32>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> maxLogit: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

const NONE: u32 = 0xffffffffu;

var<workgroup> redV: array<f32, WG_SIZE>;
var<workgroup> redI: array<u32, WG_SIZE>;

// Whether (va, ia) ranks before (vb, ib): larger value, then lower index; NONE last.
fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
  if (ia == NONE) {
    return false;
  }
  return ib == NONE || va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(WG_SIZE)
fn argmax(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  var row = wid.x;
  if (params.mode == 1u) {
    row = max(step[1], 1u) - 1u;
  }
  let base = params.offset + row * params.stride;
  var bv = 0.0;
  var bi = NONE;
  for (var i = lid; i < params.n; i += WG_SIZE) {
    let v = logits[base + i];
    // v == v is false for NaN.
    if (v == v && (bi == NONE || v > bv)) {
      bv = v;
      bi = i;
    }
  }
  redV[lid] = bv;
  redI[lid] = bi;
  workgroupBarrier();
  for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
    if (lid < s && better(redV[lid + s], redI[lid + s], redV[lid], redI[lid])) {
      redV[lid] = redV[lid + s];
      redI[lid] = redI[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let r = select(0u, wid.x, params.mode == 2u);
    var index = redI[0];
    var value = redV[0];
    if (index == NONE) {
      index = 0u;
      value = logits[base];
    }
    tokens[params.outOffset + r] = index;
    if (params.hasMax != 0u) {
      maxLogit[params.maxOffset + r] = value;
    }
  }
}
