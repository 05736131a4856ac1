// wg_reduce: reductions over one workgroup of WG_SIZE invocations, by a fixed
// tree (so results do not depend on scheduling). The including shader
// declares `override WG_SIZE: u32`, a power of two. Every invocation calls a
// reduction in uniform control flow, and every invocation gets the result.

// An index that names nothing; it never wins an arg-max.
const NONE: u32 = 0xffffffffu;

var<workgroup> redV: array<f32, WG_SIZE>;
var<workgroup> redI: array<u32, WG_SIZE>;

// A candidate of an arg-max: its value and index (NONE: no candidate).
struct Best {
  v: f32,
  i: u32,
}

// Whether (va, ia) ranks before (vb, ib): larger value, then lower index; NONE last.
fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
  if (ia == NONE) {
    return false;
  }
  return ib == NONE || va > vb || (va == vb && ia < ib);
}

// The largest v over the workgroup.
fn wg_max(lid: u32, v: f32) -> f32 {
  redV[lid] = v;
  workgroupBarrier();
  for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      redV[lid] = max(redV[lid], redV[lid + s]);
    }
    workgroupBarrier();
  }
  let r = redV[0];
  workgroupBarrier();
  return r;
}

// The sum of v over the workgroup.
fn wg_sum(lid: u32, v: f32) -> f32 {
  redV[lid] = v;
  workgroupBarrier();
  for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      redV[lid] += redV[lid + s];
    }
    workgroupBarrier();
  }
  let r = redV[0];
  workgroupBarrier();
  return r;
}

// The best of the candidates (v, i) the invocations offer, ranked by
// `better`; i = NONE when no invocation offered one.
fn wg_argmax(lid: u32, v: f32, i: u32) -> Best {
  redV[lid] = v;
  redI[lid] = i;
  workgroupBarrier();
  for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
    if (lid < s && better(redV[lid + s], redI[lid + s], redV[lid], redI[lid])) {
      redV[lid] = redV[lid + s];
      redI[lid] = redI[lid + s];
    }
    workgroupBarrier();
  }
  let r = Best(redV[0], redI[0]);
  workgroupBarrier();
  return r;
}
