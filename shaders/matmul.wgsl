// matmul: y[e, r] (+)= sum_c W[mat(e), r, c] * x[e, c] for a weight matrix in
// any ggml type, dequantised in registers, accumulated in f32.
//
// An "entry" e is one (token t, slot s) pair, e = t * n_used + s, t < T with T
// read from the step buffer. A plain matmul has n_used = 1 and one matrix
// (n_mats = 0 in params). ggml's mul_mat_id (routed experts) has n_used slots
// per token, each naming a matrix of the stack in ids[t, s]; a matrix outside
// [id_base, id_base + n_mats) is skipped, leaving its y untouched.
//
// Variants (text substitution, weight and activation types only):
//   QUANT  (in double braces, below) the common part and one type section
//          of quant.wgsl: QK, QB, NP, TAIL, xoff, deq; see there
//   X_LIB  x_f32 (X an array of f32) or x_vec4 (of vec4f: x offsets and
//          strides multiples of 4), shaders/lib/; both give x1(i), x4(i)
//   MATVEC_ROWS1  the matvec_rows1 entry point, generated for ROWS rows
//          (src/gpu/ops/matmul.ts rowsMatvecWgsl), or empty
// Overrides (tunables):
//   WG_MV  matvec: invocations per workgroup, a power of two (default 64)
//   ROWS   matvec: rows per workgroup, 1..8 (default 2)
//   TT     matvec: tokens per workgroup of a plain matmul, 1..8 (default 1);
//          mul_mat_id takes one entry per workgroup
//   BM     tiled: rows per workgroup, a multiple of TM (default 64)
//   BN     tiled: entries per workgroup, a multiple of TN (default 32)
//   TM, TN tiled: rows and entries per invocation, 4 or 8 (default 4, 4);
//          (BM / TM) * (BN / TN) invocations
//
// Bindings (inputs -> outputs -> params):
//   @binding(0) W:     array<u32>  raw ggml bytes of the stack        read
//   @binding(1) X:     array<f32>  activations (array<vec4f>: x_vec4)  read_write*
//   @binding(2) ids:   array<u32>  [T, n_used] matrix ids (mul_mat_id) read_write*
//   @binding(3) route: array<u32>  tiles sorted by matrix, written by
//                                  matmul_route.wgsl (tiled mul_mat_id), or
//                                  the stack's entry list (params.list)  read
//   @binding(4) step:  array<u32>  the step buffer; [1] = T             read
//   @binding(5) Y:     array<f32>  outputs                             read_write
//   @binding(6) params: Params (shaders/lib/matmul_params.wgsl)      read
//   * never written; read_write so that x, ids and y may be views of one
//     buffer (WebGPU forbids read-only and writable bindings of one buffer
//     in a dispatch).
//
// Entry points and dispatch (linear workgroup index wid.x + wid.y * nwg.x):
//   matvec  decode: one workgroup per (ROWS rows, TT tokens) of a plain
//           matmul or (ROWS rows, entry) of mul_mat_id; the invocations
//           stride over the row's 8-weight pieces, dequantise each once for
//           the TT tokens and tree-reduce in workgroup memory.
//           ceil(n_rows / ROWS) * ceil(T / TT) (plain) or
//           ceil(n_rows / ROWS) * T * n_used (mul_mat_id) workgroups.
//   matvec_rows  the same products without workgroup memory: each invocation
//           owns ROWS whole rows of one entry (TT tokens, plain); for CPU
//           adapters. ceil(n_rows / (ROWS * WG_MV)) * ceil(T / TT) (plain)
//           or ceil(n_rows / (ROWS * WG_MV)) * T * n_used (mul_mat_id).
//   tiled   prefill: one workgroup per (BM rows, BN entries) with the
//           dequantised weights and the x values of KP = 4 pieces (32
//           columns, in piece order) at a time in workgroup memory; each
//           invocation accumulates TM rows x TN entries. Plain:
//           ceil(n_rows / BM) * ceil(T / BN) workgroups; mul_mat_id:
//           ceil(n_rows / BM) times the route's tile bound, tiles past
//           route[0] return at once.

{{QUANT}}

//#include matmul_params

override WG_MV: u32 = 64;
override ROWS: u32 = 2;
override TT: u32 = 1;
override BM: u32 = 64;
override BN: u32 = 32;
override TM: u32 = 4;
override TN: u32 = 4;

const MAX_ROWS = 8u;
const MAX_TT = 8u;
const KP = 4u;
const MAX_TN = 8u;
const MAX_TM = 8u;
const NONE = 0xffffffffu;

@group(0) @binding(0) var<storage, read> W: array<u32>;
//#include {{X_LIB}}
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read> route: array<u32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
@group(0) @binding(6) var<storage, read> params: Params;

fn n_entries() -> u32 {
  return step[1] * params.n_used;
}

fn n_pieces() -> u32 {
  return ((params.n_cols + QK - 1u) / QK) * NP;
}

// The matrix of entry e, or NONE when its id is outside this stack.
fn entry_mat(e: u32) -> u32 {
  if (params.n_mats == 0u) {
    return 0u;
  }
  let t = e / params.n_used;
  let m = ids[params.ids_off + t * params.ids_stride + (e - t * params.n_used)] - params.id_base;
  return select(NONE, m, m < params.n_mats);
}

// Entry i of a one-entry-a-workgroup mul_mat_id dispatch, NONE past the
// entries: i itself, or with params.list the i-th of this stack's list.
fn entry_at(i: u32) -> u32 {
  if (params.list != 0u) {
    return select(NONE, route[1u + min(i, arrayLength(&route) - 2u)], i < route[0]);
  }
  return i;
}

fn x_base(e: u32) -> u32 {
  let t = e / params.n_used;
  return params.x_off + t * params.x_stride + (e - t * params.n_used) * params.x_slot;
}

fn y_base(e: u32) -> u32 {
  let t = e / params.n_used;
  return params.y_off + t * params.y_stride + (e - t * params.n_used) * params.y_slot;
}

// x[base + col .. + 3], zero past the row end (float types only).
fn load_x(base: u32, col: u32) -> vec4f {
  let i = base + col;
  if (TAIL && col + 4u > params.n_cols) {
    var v = vec4f(0.0);
    for (var k = 0u; k < 4u; k++) {
      if (col + k < params.n_cols) {
        v[k] = x1(i + k);
      }
    }
    return v;
  }
  return x4(i);
}

// Piece p of block blk of the row at byte rb; weights past the row end are
// zeroed (float types only).
fn load_w(rb: u32, blk: u32, p: u32) -> Piece {
  return mask_tail(deq(rb + blk * QB, p), blk, p);
}

// pc, piece p of block blk, with the weights past the row end zeroed (float
// types only).
fn mask_tail(piece: Piece, blk: u32, p: u32) -> Piece {
  var pc = piece;
  if (TAIL) {
    let col = blk * QK + vec4u(0u, 1u, 2u, 3u);
    let o = xoff(p);
    pc.a = select(vec4f(0.0), pc.a, col + o.x < vec4u(params.n_cols));
    pc.b = select(vec4f(0.0), pc.b, col + o.y < vec4u(params.n_cols));
  }
  return pc;
}

fn store_y(i: u32, v: f32) {
  if (params.accumulate != 0u) {
    Y[i] = Y[i] + v;
  } else {
    Y[i] = v;
  }
}

var<workgroup> red: array<f32, WG_MV * ROWS * TT>;

@compute @workgroup_size(WG_MV)
fn matvec(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_rg = (params.n_rows + ROWS - 1u) / ROWS;
  let lin = wid.x + wid.y * nwg.x;
  let rg = lin % n_rg;
  // A plain matmul takes TT consecutive tokens a workgroup, mul_mat_id one entry.
  let per = select(1u, TT, params.n_mats == 0u);
  let e0 = select(entry_at(lin / n_rg), (lin / n_rg) * per, params.n_mats == 0u);
  let n_e = n_entries();
  var m = NONE;
  var ne = 0u;
  if (e0 < n_e) {
    m = entry_mat(e0);
    ne = select(0u, min(per, n_e - e0), m != NONE);
  }
  let r0 = rg * ROWS;
  var acc: array<f32, MAX_ROWS * MAX_TT>;
  if (ne > 0u) {
    let xb = x_base(e0);
    let wb = params.w_off + m * params.mat_stride + r0 * params.row_bytes;
    let np = n_pieces();
    for (var g = lid; g < np; g += WG_MV) {
      let blk = g / NP;
      let p = g % NP;
      let o = xoff(p) + blk * QK;
      var xv: array<vec4f, 2u * MAX_TT>;
      for (var k = 0u; k < TT; k++) {
        if (k < ne) {
          xv[2u * k] = load_x(xb + k * params.x_stride, o.x);
          xv[2u * k + 1u] = load_x(xb + k * params.x_stride, o.y);
        }
      }
      for (var r = 0u; r < ROWS; r++) {
        if (r0 + r < params.n_rows) {
          let pc = load_w(wb + r * params.row_bytes, blk, p);
          for (var k = 0u; k < TT; k++) {
            if (k < ne) {
              acc[r * MAX_TT + k] += dot(pc.a, xv[2u * k]) + dot(pc.b, xv[2u * k + 1u]);
            }
          }
        }
      }
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    for (var k = 0u; k < TT; k++) {
      red[(r * TT + k) * WG_MV + lid] = acc[r * MAX_TT + k];
    }
  }
  for (var s = WG_MV / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      for (var i = 0u; i < ROWS * TT; i++) {
        red[i * WG_MV + lid] += red[i * WG_MV + lid + s];
      }
    }
  }
  if (lid == 0u) {
    for (var k = 0u; k < TT; k++) {
      if (k < ne) {
        let yb = y_base(e0) + k * params.y_stride + r0;
        for (var r = 0u; r < ROWS; r++) {
          if (r0 + r < params.n_rows) {
            store_y(yb + r, red[(r * TT + k) * WG_MV]);
          }
        }
      }
    }
  }
}

// matvec_rows: the matvec without workgroup memory or barriers: each
// invocation owns ROWS rows of one entry (TT tokens of a plain matmul) and
// walks their whole length, so the x values it loads are the same for every
// invocation of the workgroup, the scales of a group of PH pieces are read
// once (quant.wgsl's head / deq_h), and there is nothing to reduce. Meant
// for CPU adapters (llvmpipe), where a workgroup's invocations are the lanes
// of one SIMD vector and a barrier is a coroutine switch.
@compute @workgroup_size(WG_MV)
fn matvec_rows(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_rg = (params.n_rows + ROWS * WG_MV - 1u) / (ROWS * WG_MV);
  let lin = wid.x + wid.y * nwg.x;
  let rg = lin % n_rg;
  let per = select(1u, TT, params.n_mats == 0u);
  let e0 = select(entry_at(lin / n_rg), (lin / n_rg) * per, params.n_mats == 0u);
  let n_e = n_entries();
  if (e0 >= n_e) {
    return;
  }
  let m = entry_mat(e0);
  if (m == NONE) {
    return;
  }
  let ne = min(per, n_e - e0);
  let r0 = (rg * WG_MV + lid) * ROWS;
  if (r0 >= params.n_rows) {
    return;
  }
  let nr = min(ROWS, params.n_rows - r0);
  var acc: array<f32, MAX_ROWS * MAX_TT>;
  let xb = x_base(e0);
  let wb = params.w_off + m * params.mat_stride + r0 * params.row_bytes;
  let nb = (params.n_cols + QK - 1u) / QK;
  var hd: array<Head, MAX_ROWS>;
  for (var blk = 0u; blk < nb; blk++) {
    for (var p = 0u; p < NP; p++) {
      // What the rows' next PH pieces share (scales), read once.
      if (p % PH == 0u) {
        for (var r = 0u; r < ROWS; r++) {
          if (r < nr) {
            hd[r] = head(wb + r * params.row_bytes + blk * QB, p / PH);
          }
        }
      }
      let o = xoff(p) + blk * QK;
      var xv: array<vec4f, 2u * MAX_TT>;
      for (var k = 0u; k < TT; k++) {
        if (k < ne) {
          xv[2u * k] = load_x(xb + k * params.x_stride, o.x);
          xv[2u * k + 1u] = load_x(xb + k * params.x_stride, o.y);
        }
      }
      for (var r = 0u; r < ROWS; r++) {
        if (r < nr) {
          let pc = mask_tail(deq_h(wb + r * params.row_bytes + blk * QB, hd[r], p), blk, p);
          for (var k = 0u; k < TT; k++) {
            if (k < ne) {
              acc[r * MAX_TT + k] += dot(pc.a, xv[2u * k]) + dot(pc.b, xv[2u * k + 1u]);
            }
          }
        }
      }
    }
  }
  for (var k = 0u; k < ne; k++) {
    let yb = y_base(e0) + k * params.y_stride + r0;
    for (var r = 0u; r < nr; r++) {
      store_y(yb + r, acc[r * MAX_TT + k]);
    }
  }
}

// matvec_rows1: matvec_rows for one entry (TT = 1, and every mul_mat_id
// entry), its ROWS rows unrolled; generated (src/gpu/ops/matmul.ts
// rowsMatvecWgsl), empty in the variants of the tree kernel.
{{MATVEC_ROWS1}}

// Workgroup tiles of the tiled kernel: [row][column quad] (ws) and
// [entry][column quad] (xs), rows padded to TS vec4s so that invocations
// reading different rows at one column hit different banks.
const TS = 2u * KP + 1u;
var<workgroup> ws: array<vec4f, BM * TS>;
var<workgroup> xs: array<vec4f, BN * TS>;
var<workgroup> tile_entries: array<u32, BN>;

@compute @workgroup_size((BM / TM) * (BN / TN))
fn tiled(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let n_threads = (BM / TM) * (BN / TN);
  let n_rt = (params.n_rows + BM - 1u) / BM;
  let lin = wid.x + wid.y * nwg.x;
  let rt = lin % n_rt;
  let ti = lin / n_rt;
  var m = 0u;
  var start = 0u;
  var len = 0u;
  if (params.n_mats == 0u) {
    start = ti * BN;
    if (start >= n_entries()) {
      return;
    }
    len = min(BN, n_entries() - start);
  } else {
    if (ti >= route[0]) {
      return;
    }
    start = route[params.tiles_off + 2u * ti];
    let ml = route[params.tiles_off + 2u * ti + 1u];
    m = ml & 0xffffu;
    len = ml >> 16u;
  }
  for (var i = lid; i < BN; i += n_threads) {
    var e = NONE;
    if (i < len) {
      e = select(route[params.sorted_off + start + i], start + i, params.n_mats == 0u);
    }
    tile_entries[i] = e;
  }

  let r0 = rt * BM;
  let wb = params.w_off + m * params.mat_stride;
  let np = n_pieces();
  // This invocation's TM rows and TN entries.
  let tr = lid % (BM / TM);
  let te = lid / (BM / TM);
  // acc[j * MAX_TM + i]: entry te * TN + j, row tr * TM + i.
  var acc: array<f32, MAX_TN * MAX_TM>;
  for (var g0 = 0u; g0 < np; g0 += KP) {
    workgroupBarrier();
    for (var i = lid; i < BM * KP; i += n_threads) {
      let kp = i % KP;
      let r = i / KP;
      let g = g0 + kp;
      var pc = Piece(vec4f(0.0), vec4f(0.0));
      if (r0 + r < params.n_rows && g < np) {
        pc = load_w(wb + (r0 + r) * params.row_bytes, g / NP, g % NP);
      }
      ws[r * TS + 2u * kp] = pc.a;
      ws[r * TS + 2u * kp + 1u] = pc.b;
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
      xs[n * TS + 2u * kp] = xa;
      xs[n * TS + 2u * kp + 1u] = xc;
    }
    workgroupBarrier();
    for (var kq = 0u; kq < 2u * KP; kq++) {
      var w: array<vec4f, MAX_TM>;
      for (var i = 0u; i < TM; i++) {
        w[i] = ws[(tr * TM + i) * TS + kq];
      }
      for (var j = 0u; j < TN; j++) {
        let x = xs[(te * TN + j) * TS + kq];
        for (var i = 0u; i < TM; i++) {
          acc[j * MAX_TM + i] += dot(w[i], x);
        }
      }
    }
  }
  for (var j = 0u; j < TN; j++) {
    let e = tile_entries[te * TN + j];
    if (e != NONE) {
      let yb = y_base(e);
      for (var i = 0u; i < TM; i++) {
        let r = r0 + tr * TM + i;
        if (r < params.n_rows) {
          store_y(yb + r, acc[j * MAX_TM + i]);
        }
      }
    }
  }
}
