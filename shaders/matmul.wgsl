// matmul: y[e, r] (+)= sum_c W[mat(e), r, c] * x[e, c] for a weight matrix in
// any ggml type, dequantised in registers, accumulated in f32.
//
// An "entry" e is one (token t, slot s) pair, e = t * n_used + s, t < T with T
// read from the step buffer. A plain matmul has n_used = 1 and one matrix
// (n_mats = 0 in params). ggml's mul_mat_id (routed experts) has n_used slots
// per token, each naming a matrix of the stack in ids[t, s]; a matrix outside
// [id_base, id_base + n_mats) is skipped, leaving its y untouched.
//
// Variants (text substitution, weight type only):
//   QUANT  (in double braces, below) the common part and one type section
//          of quant.wgsl: QK, QB, NP, TAIL, xoff, deq; see there
// Overrides (tunables):
//   WG_MV  matvec: invocations per workgroup, a power of two (default 64)
//   ROWS   matvec: rows per workgroup, 1..4 (default 2)
//   BM     tiled: rows per workgroup, a multiple of 4 (default 64)
//   BN     tiled: entries per workgroup, a multiple of 4 (default 32);
//          BM * BN / 16 invocations, each computing 4 rows x 4 entries
//
// Bindings (inputs -> outputs -> params):
//   @binding(0) W:     array<u32>  raw ggml bytes of the stack        read
//   @binding(1) X:     array<f32>  activations                         read_write*
//   @binding(2) ids:   array<u32>  [T, n_used] matrix ids (mul_mat_id) read_write*
//   @binding(3) route: array<u32>  tiles sorted by matrix, written by
//                                  matmul_route.wgsl (tiled mul_mat_id) read
//   @binding(4) step:  array<u32>  the step buffer; [1] = T             read
//   @binding(5) Y:     array<f32>  outputs                             read_write
//   @binding(6) P:     uniform Params, 4-byte units:
//     [0] w_off       bytes from the binding start to row 0 of matrix 0
//     [1] row_bytes   bytes per row
//     [2] mat_stride  bytes between stacked matrices
//     [3] n_rows      rows (of this chunk)
//     [4] n_cols      row length, elements
//     [5] n_used      slots per token (1: plain matmul)
//     [6] n_mats      matrices in the stack; 0: plain matmul, ids unused
//     [7] id_base     id of matrix 0 of the stack
//     [8] ids_off     ids: first element
//     [9] ids_stride  ids: elements between tokens
//     [10] x_off      X: first element
//     [11] x_stride   X: elements between tokens
//     [12] x_slot     X: elements between the slots of a token (0: shared x)
//     [13] y_off      Y: first element, the chunk's first row included
//     [14] y_stride   Y: elements between tokens
//     [15] y_slot     Y: elements between the slots of a token
//     [16] accumulate 1: y += W x, 0: y = W x
//     [17] tiles_off  route: first word of the tile table (2 words a tile)
//     [18] sorted_off route: first word of the entries sorted by matrix
//   * never written; read_write so that x, ids and y may be views of one
//     buffer (WebGPU forbids read-only and writable bindings of one buffer
//     in a dispatch).
//
// Entry points and dispatch (linear workgroup index wid.x + wid.y * nwg.x):
//   matvec  decode: one workgroup per (ROWS rows, entry); the invocations
//           stride over the row's 8-weight pieces and tree-reduce in
//           workgroup memory. ceil(n_rows / ROWS) * T * n_used workgroups.
//   tiled   prefill: one workgroup per (BM rows, BN entries) with the
//           dequantised weights and the x values of 4 pieces (32 columns)
//           at a time in workgroup memory. Plain: ceil(n_rows / BM) *
//           ceil(T / BN) workgroups; mul_mat_id: ceil(n_rows / BM) times
//           the route's tile bound, tiles past route[0] return at once.

{{QUANT}}

struct Params {
  w_off: u32,
  row_bytes: u32,
  mat_stride: u32,
  n_rows: u32,
  n_cols: u32,
  n_used: u32,
  n_mats: u32,
  id_base: u32,
  ids_off: u32,
  ids_stride: u32,
  x_off: u32,
  x_stride: u32,
  x_slot: u32,
  y_off: u32,
  y_stride: u32,
  y_slot: u32,
  accumulate: u32,
  tiles_off: u32,
  sorted_off: u32,
}

override WG_MV: u32 = 64;
override ROWS: u32 = 2;
override BM: u32 = 64;
override BN: u32 = 32;

const MAX_ROWS = 4u;
const KP = 4u;
const NONE = 0xffffffffu;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read> route: array<u32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
@group(0) @binding(6) var<uniform> P: Params;

fn n_entries() -> u32 {
  return step[1] * P.n_used;
}

fn n_pieces() -> u32 {
  return ((P.n_cols + QK - 1u) / QK) * NP;
}

// The matrix of entry e, or NONE when its id is outside this stack.
fn entry_mat(e: u32) -> u32 {
  if (P.n_mats == 0u) {
    return 0u;
  }
  let t = e / P.n_used;
  let m = ids[P.ids_off + t * P.ids_stride + (e - t * P.n_used)] - P.id_base;
  return select(NONE, m, m < P.n_mats);
}

fn x_base(e: u32) -> u32 {
  let t = e / P.n_used;
  return P.x_off + t * P.x_stride + (e - t * P.n_used) * P.x_slot;
}

fn y_base(e: u32) -> u32 {
  let t = e / P.n_used;
  return P.y_off + t * P.y_stride + (e - t * P.n_used) * P.y_slot;
}

// x[base + col .. + 3], zero past the row end (float types only).
fn load_x(base: u32, col: u32) -> vec4f {
  let i = base + col;
  if (TAIL && col + 4u > P.n_cols) {
    var v = vec4f(0.0);
    for (var k = 0u; k < 4u; k++) {
      if (col + k < P.n_cols) {
        v[k] = X[i + k];
      }
    }
    return v;
  }
  return vec4f(X[i], X[i + 1u], X[i + 2u], X[i + 3u]);
}

// Piece p of block blk of the row at byte rb; weights past the row end are
// zeroed (float types only).
fn load_w(rb: u32, blk: u32, p: u32) -> Piece {
  var pc = deq(rb + blk * QB, p);
  if (TAIL) {
    let col = blk * QK + vec4u(0u, 1u, 2u, 3u);
    let o = xoff(p);
    pc.a = select(vec4f(0.0), pc.a, col + o.x < vec4u(P.n_cols));
    pc.b = select(vec4f(0.0), pc.b, col + o.y < vec4u(P.n_cols));
  }
  return pc;
}

fn store_y(i: u32, v: f32) {
  if (P.accumulate != 0u) {
    Y[i] = Y[i] + v;
  } else {
    Y[i] = v;
  }
}

var<workgroup> red: array<f32, WG_MV * ROWS>;

@compute @workgroup_size(WG_MV)
fn matvec(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_rg = (P.n_rows + ROWS - 1u) / ROWS;
  let lin = wid.x + wid.y * nwg.x;
  let rg = lin % n_rg;
  let e = lin / n_rg;
  var m = NONE;
  if (e < n_entries()) {
    m = entry_mat(e);
  }
  let r0 = rg * ROWS;
  var acc: array<f32, MAX_ROWS>;
  if (m != NONE) {
    let xb = x_base(e);
    let wb = P.w_off + m * P.mat_stride + r0 * P.row_bytes;
    let np = n_pieces();
    for (var g = lid; g < np; g += WG_MV) {
      let blk = g / NP;
      let p = g % NP;
      let o = xoff(p) + blk * QK;
      let xa = load_x(xb, o.x);
      let xc = load_x(xb, o.y);
      for (var r = 0u; r < ROWS; r++) {
        if (r0 + r < P.n_rows) {
          let pc = load_w(wb + r * P.row_bytes, blk, p);
          acc[r] += dot(pc.a, xa) + dot(pc.b, xc);
        }
      }
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    red[r * WG_MV + lid] = acc[r];
  }
  for (var s = WG_MV / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      for (var r = 0u; r < ROWS; r++) {
        red[r * WG_MV + lid] += red[r * WG_MV + lid + s];
      }
    }
  }
  if (lid == 0u && m != NONE) {
    let yb = y_base(e) + r0;
    for (var r = 0u; r < ROWS; r++) {
      if (r0 + r < P.n_rows) {
        store_y(yb + r, red[r * WG_MV]);
      }
    }
  }
}

// Workgroup tiles of the tiled kernel, [column k][quad]: four rows (ws) or
// four entries (xs) per vec4.
var<workgroup> ws: array<vec4f, 8u * KP * BM / 4u>;
var<workgroup> xs: array<vec4f, 8u * KP * BN / 4u>;
var<workgroup> tile_entries: array<u32, BN>;

@compute @workgroup_size(BM * BN / 16u)
fn tiled(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_threads = BM * BN / 16u;
  let n_rt = (P.n_rows + BM - 1u) / BM;
  let lin = wid.x + wid.y * nwg.x;
  let rt = lin % n_rt;
  let ti = lin / n_rt;
  var m = 0u;
  var start = 0u;
  var len = 0u;
  if (P.n_mats == 0u) {
    start = ti * BN;
    if (start >= n_entries()) {
      return;
    }
    len = min(BN, n_entries() - start);
  } else {
    if (ti >= route[0]) {
      return;
    }
    start = route[P.tiles_off + 2u * ti];
    let ml = route[P.tiles_off + 2u * ti + 1u];
    m = ml & 0xffffu;
    len = ml >> 16u;
  }
  for (var i = lid; i < BN; i += n_threads) {
    var e = NONE;
    if (i < len) {
      e = select(route[P.sorted_off + start + i], start + i, P.n_mats == 0u);
    }
    tile_entries[i] = e;
  }

  let r0 = rt * BM;
  let wb = P.w_off + m * P.mat_stride;
  let np = n_pieces();
  let tr = lid % (BM / 4u);
  let te = lid / (BM / 4u);
  var acc: array<vec4f, 4>;
  for (var g0 = 0u; g0 < np; g0 += KP) {
    workgroupBarrier();
    for (var i = lid; i < BM * KP; i += n_threads) {
      let kp = i % KP;
      let r = i / KP;
      let g = g0 + kp;
      var pc = Piece(vec4f(0.0), vec4f(0.0));
      if (r0 + r < P.n_rows && g < np) {
        pc = load_w(wb + (r0 + r) * P.row_bytes, g / NP, g % NP);
      }
      let q = (8u * kp) * (BM / 4u) + r / 4u;
      let c = r % 4u;
      for (var k = 0u; k < 4u; k++) {
        ws[q + k * (BM / 4u)][c] = pc.a[k];
        ws[q + (k + 4u) * (BM / 4u)][c] = pc.b[k];
      }
    }
    for (var i = lid; i < BN * KP; i += n_threads) {
      let kp = i % KP;
      let n = i / KP;
      let g = g0 + kp;
      let e = tile_entries[n];
      var xa = vec4f(0.0);
      var xc = vec4f(0.0);
      if (e != NONE && g < np) {
        let o = xoff(g % NP) + (g / NP) * QK;
        let xb = x_base(e);
        xa = load_x(xb, o.x);
        xc = load_x(xb, o.y);
      }
      let q = (8u * kp) * (BN / 4u) + n / 4u;
      let c = n % 4u;
      for (var k = 0u; k < 4u; k++) {
        xs[q + k * (BN / 4u)][c] = xa[k];
        xs[q + (k + 4u) * (BN / 4u)][c] = xc[k];
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < 8u * KP; k++) {
      let w = ws[k * (BM / 4u) + tr];
      let x = xs[k * (BN / 4u) + te];
      acc[0] += w * x.x;
      acc[1] += w * x.y;
      acc[2] += w * x.z;
      acc[3] += w * x.w;
    }
  }
  for (var j = 0u; j < 4u; j++) {
    let e = tile_entries[4u * te + j];
    if (e != NONE) {
      let yb = y_base(e);
      for (var c = 0u; c < 4u; c++) {
        let r = r0 + 4u * tr + c;
        if (r < P.n_rows) {
          store_y(yb + r, acc[j][c]);
        }
      }
    }
  }
}
