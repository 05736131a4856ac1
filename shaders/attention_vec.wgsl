// attention_vec: the attention of attention.wgsl (same parameters, same step
// words, same results up to the order of the sums) for adapters where every
// storage load costs the same whatever its width and a workgroup's
// invocations run as lanes of one CPU vector (llvmpipe): queries, keys,
// values and outputs are read and written as vec4s, and one workgroup takes
// G query heads that share a kv head, so each cached row is loaded once for
// G heads and each invocation's loads feed G dot products.
//
// One workgroup per (group of G heads of one kv head, token). The visible
// keys are walked in tiles of WG_SIZE, one key per invocation, with an
// online (running-max) softmax:
//   1. invocation i scores key tile + i against the G queries (held in
//      workgroup memory) into ps[h][i];
//   2. invocation h < G takes head h's tile maximum, the new running max and
//      the factor alpha that rescales what was accumulated before;
//   3. invocation i turns its scores into e^(s − m);
//   4. each invocation accumulates, for the vec4s of one head's value it
//      owns, alpha · acc + Σ_j p_j v_j and the same sum of p_j (its own copy of
//      the head's denominator).
// The queries live in each invocation's registers (on llvmpipe a private
// array indexed by a loop counter is one vector load; workgroup memory is
// loaded lane by lane).
// Requires D_K and D_V multiples of 4 and every offset and stride of
// Params a multiple of 4 (elements): the caller checks; Params' offsets and
// strides are in f32 elements as in attention.wgsl.
//
// Bindings (inputs → outputs → params): as attention.wgsl, with q, k, v, out
// bound as vec4 arrays.
// Overrides: WG_SIZE, D_K, D_V, G (divides WG_SIZE, ≤ GMAX, G · D_K / 4 ≤ QREG,
// D_V / 4 ≤ ACC_MAX · WG_SIZE / G).
//
// Dispatch: [nHead / G, T].

struct Params {
  group: u32, // nHead / nHeadKv
  qOffset: u32,
  qStride: u32,
  qHeadStride: u32,
  kOffset: u32,
  kRowStride: u32,
  kHeadStride: u32,
  vOffset: u32,
  vRowStride: u32,
  vHeadStride: u32,
  oOffset: u32,
  oStride: u32,
  oHeadStride: u32,
  window: u32, // 0 = off
  hasSinks: u32,
  sinksOffset: u32,
  scale: f32,
  softcap: f32, // 0 = off
  block: u32, // unused here: this kernel takes every token
}

override WG_SIZE: u32 = 64;
override D_K: u32 = 128;
override D_V: u32 = 128;
override G: u32 = 8;

// Invocation-private limits: heads scored per key, query vec4s held in
// registers (G · D_K / 4), value vec4s owned (D_V / 4 / (WG_SIZE / G)).
const GMAX: u32 = 8u;
const QREG: u32 = 256u;
const ACC_MAX: u32 = 16u;

@group(0) @binding(0) var<storage, read> q: array<vec4f>;
@group(0) @binding(1) var<storage, read> k: array<vec4f>;
@group(0) @binding(2) var<storage, read> v: array<vec4f>;
@group(0) @binding(3) var<storage, read> sinks: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4f>;
@group(0) @binding(5) var<storage, read> step: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

var<workgroup> ps: array<f32, G * WG_SIZE>;
var<workgroup> mrun: array<f32, G>; // running max per head
var<workgroup> alpha: array<f32, G>; // this tile's rescale factor per head

// Below any score; finite so that differences with it stay finite (e^(−big) = 0).
const NEG_BIG: f32 = -3.0e38;

@compute @workgroup_size(WG_SIZE)
fn attend_vec(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let NK = D_K / 4u;
  let NV = D_V / 4u;
  let IPH = WG_SIZE / G; // invocations per head in the value pass
  let NA = (NV + IPH - 1u) / IPH; // value vec4s an invocation owns, ≤ ACC_MAX
  let h0 = wid.x * G; // first query head of this workgroup
  let t = wid.y;
  let kEnd = step[4u + 2u * t] + 1u;
  let base = step[5u + 2u * t];
  var kStart = 0u;
  if (params.window > 0u && kEnd > params.window) {
    kStart = kEnd - params.window;
  }
  let kvh = h0 / params.group;
  let kb = (params.kOffset + kvh * params.kHeadStride + base * params.kRowStride) / 4u;
  let vb = (params.vOffset + kvh * params.vHeadStride + base * params.vRowStride) / 4u;
  let kRow = params.kRowStride / 4u;
  let vRow = params.vRowStride / 4u;

  // the G queries, in registers: every invocation scores its keys against all of them
  let qb = (params.qOffset + t * params.qStride + h0 * params.qHeadStride) / 4u;
  let qHead = params.qHeadStride / 4u;
  var qr: array<vec4f, QREG>;
  for (var h = 0u; h < G; h++) {
    for (var c = 0u; c < NK; c++) {
      qr[h * NK + c] = q[qb + h * qHead + c];
    }
  }
  if (lid < G) {
    mrun[lid] = NEG_BIG;
  }

  // value pass: head vh, vec4s vc0 + a · IPH (one head per group of IPH invocations)
  let vh = lid / IPH;
  let vc0 = lid % IPH;
  var acc: array<vec4f, ACC_MAX>;
  for (var a = 0u; a < ACC_MAX; a++) {
    acc[a] = vec4f(0.0);
  }
  var lsum = 0.0; // head vh's denominator, relative to its running max
  workgroupBarrier();

  for (var tile = kStart; tile < kEnd; tile += WG_SIZE) {
    // 1. scores of key tile + lid (past the end: row kEnd − 1 again, masked)
    let key = tile + lid;
    let row = kb + min(key, kEnd - 1u) * kRow;
    var dots: array<f32, GMAX>;
    for (var h = 0u; h < GMAX; h++) {
      dots[h] = 0.0;
    }
    for (var c = 0u; c < NK; c++) {
      let kv = k[row + c];
      for (var h = 0u; h < G; h++) {
        dots[h] += dot(qr[h * NK + c], kv);
      }
    }
    for (var h = 0u; h < G; h++) {
      var s = dots[h];
      if (params.softcap > 0.0) {
        s = params.softcap * tanh(s / params.softcap);
      }
      dots[h] = select(NEG_BIG, s * params.scale, key < kEnd);
      ps[h * WG_SIZE + lid] = dots[h];
    }
    workgroupBarrier();
    // 2. running max and rescale factor, a head per invocation
    if (lid < G) {
      var tmax = NEG_BIG;
      for (var j = 0u; j < WG_SIZE; j++) {
        tmax = max(tmax, ps[lid * WG_SIZE + j]);
      }
      let m = mrun[lid];
      let mNew = max(m, tmax);
      alpha[lid] = exp(m - mNew);
      mrun[lid] = mNew;
    }
    workgroupBarrier();
    // 3. probabilities relative to the new max
    for (var h = 0u; h < G; h++) {
      ps[h * WG_SIZE + lid] = select(0.0, exp(dots[h] - mrun[h]), key < kEnd);
    }
    workgroupBarrier();
    // 4. values: one probability load serves the NA vec4s of the head
    let nk = min(WG_SIZE, kEnd - tile);
    let al = alpha[vh];
    for (var a = 0u; a < NA; a++) {
      acc[a] *= al;
    }
    lsum *= al;
    var vr = vb + tile * vRow + vc0;
    for (var j = 0u; j < nk; j++) {
      let p = ps[vh * WG_SIZE + j];
      lsum += p;
      for (var a = 0u; a < NA; a++) {
        if (vc0 + a * IPH < NV) {
          acc[a] += p * v[vr + a * IPH];
        }
      }
      vr += vRow;
    }
    // ps and alpha are rewritten by the next tile
    workgroupBarrier();
  }

  var sum = lsum;
  var corr = 1.0;
  if (params.hasSinks != 0u) {
    let m = mrun[vh];
    let sink = sinks[params.sinksOffset + h0 + vh];
    let mAll = max(m, sink);
    corr = exp(m - mAll);
    sum = sum * corr + exp(sink - mAll);
  }
  let inv = corr / sum;
  let ob = (params.oOffset + t * params.oStride + (h0 + vh) * params.oHeadStride) / 4u;
  for (var a = 0u; a < NA; a++) {
    let c = vc0 + a * IPH;
    if (c < NV) {
      out[ob + c] = acc[a] * inv;
    }
  }
}
