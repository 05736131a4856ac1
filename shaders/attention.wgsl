// attention: causal multi-head attention of a batch of queries against a
// layer's KV cache, with grouped-query heads, an optional sliding window,
// attention sinks and logit soft-capping. One workgroup per (head, token)
// walks the visible keys in tiles of KPT · WG_SIZE (each invocation scores KPT
// keys per tile) with an online (running-max) softmax, so any cache length
// works without scratch memory:
//   s_j = scale · cap(q · k_j)           cap(x) = softcap · tanh(x / softcap), or x
//   out = Σ_j e^(s_j − m) v_j / (Σ_j e^(s_j − m) + e^(sink − m)),  m = max(s, sink)
// Token t (at position qPos, the step buffer's [4 + 2t]) sees key j of its
// sequence iff j ≤ qPos and, with a window W > 0, qPos − j < W; its
// sequence's keys start at cache row [5 + 2t] (several sequences share a
// cache in regions: continuous batching). Query head h reads kv head h / group.
//
// Bindings (inputs → outputs → params):
//   @binding(0) q:      array<f32>  [T, nHead, D_K]: qOffset + t*qStride + h*qHeadStride + d   read
//   @binding(1) k:      array<f32>  cache [nCtx, nHeadKv, D_K]:
//                                   kOffset + j*kRowStride + kvh*kHeadStride + d               read
//   @binding(2) v:      array<f32>  cache [nCtx, nHeadKv, D_V], likewise with v*               read
//                                   (may be the K buffer: MLA's V is a prefix of its K rows)
//   @binding(3) sinks:  array<f32>  [nHead] from sinksOffset; unused when hasSinks = 0        read
//   @binding(4) out:    array<f32>  [T, nHead, D_V]: oOffset + t*oStride + h*oHeadStride + d  written
//   @binding(5) step:   array<u32>  the step buffer: [1] tokens, per token [4 + 2t], [5 + 2t] read
//   @binding(6) params: read-only storage, struct Params below
// Overrides: WG_SIZE (a power of two), D_K, D_V (head widths).
//
// Dispatch: [nHead, T], or [nHead, T mod block] after attend_tiled.

//#include attention_params

override WG_SIZE: u32 = 64;
override D_K: u32 = 128;
override D_V: u32 = 128;

// Keys scored per invocation per tile: more keys per round of barriers.
const KPT: u32 = 4u;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> sinks: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> step: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

var<workgroup> qs: array<f32, D_K>;
var<workgroup> acc: array<f32, D_V>;
var<workgroup> ps: array<f32, KPT * WG_SIZE>;
//#include wg_reduce

// Token t's position, and the cache row where its sequence's keys start.
fn tok_pos(t: u32) -> u32 {
  return step[4u + 2u * t];
}
fn tok_base(t: u32) -> u32 {
  return step[5u + 2u * t];
}

// Below any score; finite so that differences with it stay finite (e^(−big) = 0).
const NEG_BIG: f32 = -3.0e38;

@compute @workgroup_size(WG_SIZE)
fn attend(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  // after attend_tiled's whole blocks of params.block tokens: the tokens past them
  var t = wid.y;
  if (params.block > 0u) {
    t += step[1] / params.block * params.block;
  }
  let kEnd = tok_pos(t) + 1u;
  var kStart = 0u;
  if (params.window > 0u && kEnd > params.window) {
    kStart = kEnd - params.window;
  }
  let kvh = h / params.group;
  let qb = params.qOffset + t * params.qStride + h * params.qHeadStride;
  let kb = params.kOffset + kvh * params.kHeadStride + tok_base(t) * params.kRowStride;
  let vb = params.vOffset + kvh * params.vHeadStride + tok_base(t) * params.vRowStride;

  for (var d = lid; d < D_K; d += WG_SIZE) {
    qs[d] = q[qb + d];
  }
  for (var d = lid; d < D_V; d += WG_SIZE) {
    acc[d] = 0.0;
  }
  workgroupBarrier();

  var m = NEG_BIG; // running max, the same in every invocation
  var l = 0.0; // this invocation's share of the denominator, relative to m
  // A tile is KPT · WG_SIZE keys: invocation lid scores keys tile + lid + i·WG_SIZE.
  let tileKeys = KPT * WG_SIZE;
  for (var tile = kStart; tile < kEnd; tile += tileKeys) {
    // Each invocation scores KPT keys in one pass over q (one workgroup-memory read of q[d]
    // serves KPT keys). Keys past the end read row kEnd − 1 again and are masked below.
    var rows: array<u32, KPT>;
    var dots: array<f32, KPT>;
    for (var i = 0u; i < KPT; i++) {
      let key = min(tile + lid + i * WG_SIZE, kEnd - 1u);
      rows[i] = kb + key * params.kRowStride;
      dots[i] = 0.0;
    }
    for (var d = 0u; d < D_K; d++) {
      let qd = qs[d];
      for (var i = 0u; i < KPT; i++) {
        dots[i] += qd * k[rows[i] + d];
      }
    }
    var s: array<f32, KPT>;
    var tmax = NEG_BIG;
    for (var i = 0u; i < KPT; i++) {
      var dot = dots[i];
      if (params.softcap > 0.0) {
        dot = params.softcap * tanh(dot / params.softcap);
      }
      s[i] = NEG_BIG;
      if (tile + lid + i * WG_SIZE < kEnd) {
        s[i] = dot * params.scale;
        tmax = max(tmax, s[i]);
      }
    }
    let mNew = max(m, wg_max(lid, tmax));
    let alpha = exp(m - mNew);
    l *= alpha;
    for (var i = 0u; i < KPT; i++) {
      var p = 0.0;
      if (tile + lid + i * WG_SIZE < kEnd) {
        p = exp(s[i] - mNew);
      }
      l += p;
      ps[lid + i * WG_SIZE] = p;
    }
    workgroupBarrier();
    let nk = min(tileKeys, kEnd - tile);
    for (var d = lid; d < D_V; d += WG_SIZE) {
      var a = acc[d] * alpha;
      var vr = vb + tile * params.vRowStride + d;
      for (var j = 0u; j < nk; j++) {
        a += ps[j] * v[vr];
        vr += params.vRowStride;
      }
      acc[d] = a;
    }
    m = mNew;
    // ps is rewritten by the next tile.
    workgroupBarrier();
  }

  var sum = wg_sum(lid, l);
  var corr = 1.0;
  if (params.hasSinks != 0u) {
    let sink = sinks[params.sinksOffset + h];
    let mAll = max(m, sink);
    corr = exp(m - mAll);
    sum = sum * corr + exp(sink - mAll);
  }
  let inv = corr / sum;
  let ob = params.oOffset + t * params.oStride + h * params.oHeadStride;
  for (var d = lid; d < D_V; d += WG_SIZE) {
    out[ob + d] = acc[d] * inv;
  }
}

// ---------------------------------------------------------------------------
// attend_heads: the same attention with G query heads per workgroup, for
// heads that share a kv head (MLA's 64+ heads all read one latent row).
// Each cached row is read once per workgroup, so once per G heads rather
// than once per head; scores for the G heads come from one pass over the row.
// Dispatch: [nHead / G, T]. G divides nHead / nHeadKv. Per invocation, KPT2
// keys per tile and ceil(D_V / WG_SIZE) output elements of each head live
// in registers (KPT2 · G ≤ 64 and G · ceil(D_V / WG_SIZE) ≤ 64).
// Workgroup memory: G · D_K (queries) + G · KPT2 · WG_SIZE (scores) + 2 · G.
// ---------------------------------------------------------------------------

override G: u32 = 8;
const KPT2: u32 = 2u;
const REG_MAX: u32 = 64u;

var<workgroup> gq: array<f32, G * D_K>;
var<workgroup> gp: array<f32, G * KPT2 * WG_SIZE>;
var<workgroup> galpha: array<f32, G>;
var<workgroup> ginv: array<f32, G>;

@compute @workgroup_size(WG_SIZE)
fn attend_heads(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h0 = wid.x * G;
  let t = wid.y;
  let kEnd = tok_pos(t) + 1u;
  var kStart = 0u;
  if (params.window > 0u && kEnd > params.window) {
    kStart = kEnd - params.window;
  }
  let kvh = h0 / params.group;
  let kb = params.kOffset + kvh * params.kHeadStride + tok_base(t) * params.kRowStride;
  let vb = params.vOffset + kvh * params.vHeadStride + tok_base(t) * params.vRowStride;
  let qb = params.qOffset + t * params.qStride;
  for (var i = lid; i < G * D_K; i += WG_SIZE) {
    let g = i / D_K;
    gq[i] = q[qb + (h0 + g) * params.qHeadStride + i % D_K];
  }
  let vpt = (D_V + WG_SIZE - 1u) / WG_SIZE;
  var acc: array<f32, REG_MAX>;
  for (var i = 0u; i < G * vpt; i++) {
    acc[i] = 0.0;
  }
  workgroupBarrier();

  // Head lid's running max and denominator (invocations lid < G only).
  var m = NEG_BIG;
  var l = 0.0;
  let tileKeys = KPT2 * WG_SIZE;
  for (var tile = kStart; tile < kEnd; tile += tileKeys) {
    // Scores: each row this invocation reads is dotted with all G queries.
    var rows: array<u32, KPT2>;
    var dots: array<f32, REG_MAX>;
    for (var i = 0u; i < KPT2; i++) {
      let key = min(tile + lid + i * WG_SIZE, kEnd - 1u);
      rows[i] = kb + key * params.kRowStride;
      for (var g = 0u; g < G; g++) {
        dots[i * G + g] = 0.0;
      }
    }
    for (var d = 0u; d < D_K; d++) {
      for (var i = 0u; i < KPT2; i++) {
        let kd = k[rows[i] + d];
        for (var g = 0u; g < G; g++) {
          dots[i * G + g] += gq[g * D_K + d] * kd;
        }
      }
    }
    for (var i = 0u; i < KPT2; i++) {
      let j = lid + i * WG_SIZE;
      let valid = tile + j < kEnd;
      for (var g = 0u; g < G; g++) {
        var dot = dots[i * G + g];
        if (params.softcap > 0.0) {
          dot = params.softcap * tanh(dot / params.softcap);
        }
        gp[g * tileKeys + j] = select(NEG_BIG, dot * params.scale, valid);
      }
    }
    workgroupBarrier();
    let nk = min(tileKeys, kEnd - tile);
    // Online softmax per head: invocation g turns head g's scores into probabilities.
    if (lid < G) {
      let row = lid * tileKeys;
      var tmax = NEG_BIG;
      for (var j = 0u; j < nk; j++) {
        tmax = max(tmax, gp[row + j]);
      }
      let mNew = max(m, tmax);
      let alpha = exp(m - mNew);
      var sum = l * alpha;
      for (var j = 0u; j < nk; j++) {
        let p = exp(gp[row + j] - mNew);
        gp[row + j] = p;
        sum += p;
      }
      m = mNew;
      l = sum;
      galpha[lid] = alpha;
    }
    workgroupBarrier();
    // Values: each element of the tile's rows is read once and added into all G heads.
    for (var i = 0u; i < vpt; i++) {
      let d = lid + i * WG_SIZE;
      if (d < D_V) {
        for (var g = 0u; g < G; g++) {
          acc[g * vpt + i] *= galpha[g];
        }
        var vr = vb + tile * params.vRowStride + d;
        for (var j = 0u; j < nk; j++) {
          let vd = v[vr];
          for (var g = 0u; g < G; g++) {
            acc[g * vpt + i] += gp[g * tileKeys + j] * vd;
          }
          vr += params.vRowStride;
        }
      }
    }
    // gp and galpha are rewritten by the next tile.
    workgroupBarrier();
  }

  if (lid < G) {
    var sum = l;
    var corr = 1.0;
    if (params.hasSinks != 0u) {
      let sink = sinks[params.sinksOffset + h0 + lid];
      let mAll = max(m, sink);
      corr = exp(m - mAll);
      sum = sum * corr + exp(sink - mAll);
    }
    ginv[lid] = corr / sum;
  }
  workgroupBarrier();
  let ob = params.oOffset + t * params.oStride;
  for (var i = 0u; i < vpt; i++) {
    let d = lid + i * WG_SIZE;
    if (d < D_V) {
      for (var g = 0u; g < G; g++) {
        out[ob + (h0 + g) * params.oHeadStride + d] = acc[g * vpt + i] * ginv[g];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// attend_tiled: the same attention for a block of QB query tokens of one head
// per workgroup (prefill over a long cache). The workgroup walks the keys its
// tokens see in tiles of WG_SIZE: invocation lid scores key tile + lid against
// all the block's queries (one read of the key row for QB queries), then each
// query's scores become probabilities (online softmax per query), then
// invocation lid adds the tile's value rows into its output elements of every
// query (one read of each value for QB queries). Queries are handled four at a
// time as vec4s (query 4·qv + c in component c of group qv): one
// workgroup-memory read serves four multiply-adds.
// Dispatch: [nHead, whole blocks of QB]: whole blocks only (constant-trip
// loops that unroll, scores in registers), from token 0 or, with
// params.block = B, from ⌊T / B⌋ · B (after a dispatch of larger blocks of B);
// `attend` with params.block = the smallest QB takes the tokens after the
// last block (decode, T = 1, is all remainder). Separate dispatches: naga 29
// panics on one entry point holding both kernels.
// QB: a multiple of 4 dividing WG_SIZE, ≤ TQ_MAX; per invocation QB scores
// and QB · ⌈D_V / WG_SIZE⌉ output elements live in registers (≤ REG_MAX).
// Workgroup memory: QB · D_K (queries) + QB · WG_SIZE (scores) + 4 · WG_SIZE
// (partial maxima and sums) + QB (per-query factors) floats.
// ---------------------------------------------------------------------------

override QB: u32 = 16;
const TQ_MAX: u32 = 32u;

var<workgroup> tq: array<vec4f, QB / 4u * D_K>; // [d · QB/4 + qv]
var<workgroup> ts: array<vec4f, QB / 4u * WG_SIZE>; // [key · QB/4 + qv]: scores, then probabilities
var<workgroup> tred: array<vec4f, WG_SIZE>; // one partial max or sum per invocation
var<workgroup> trow: array<vec4f, QB / 4u>; // per query: rescale factor, then 1 / denominator

// Scores of key `key` (past kEnd: row kEnd − 1 again, masked) against the block's queries
// (query qi at position qPos0 + qi) into ts[lid · QB/4 + qv]; masked → NEG_BIG.
fn tile_scores(key: u32, kEnd: u32, qPos0: u32, kb: u32, lid: u32) {
  let qvs = QB / 4u;
  let row = kb + min(key, kEnd - 1u) * params.kRowStride;
  var dots: array<vec4f, TQ_MAX / 4u>;
  for (var qv = 0u; qv < qvs; qv++) {
    dots[qv] = vec4f(0.0);
  }
  for (var d = 0u; d < D_K; d++) {
    let kd = k[row + d];
    for (var qv = 0u; qv < qvs; qv++) {
      dots[qv] += tq[d * qvs + qv] * kd;
    }
  }
  for (var qv = 0u; qv < qvs; qv++) {
    let qi = vec4u(4u * qv) + vec4u(0u, 1u, 2u, 3u);
    let p = vec4u(qPos0) + qi;
    let kv = vec4u(key);
    var valid = kv <= p;
    if (params.window > 0u) {
      valid = valid & (p - kv < vec4u(params.window));
    }
    var dot = dots[qv];
    if (params.softcap > 0.0) {
      dot = params.softcap * tanh(dot / params.softcap);
    }
    ts[lid * qvs + qv] = select(vec4f(NEG_BIG), dot * params.scale, valid);
  }
}

// acc[qv · vpt + i] = alpha · acc + Σ_j p_j · v_j[lid + i · WG_SIZE] over the tile's nk value
// rows from element vRow0, for every query group qv (probabilities in ts, alphas in trow).
fn tile_values(acc: ptr<function, array<vec4f, REG_MAX / 4u>>, vRow0: u32, nk: u32, lid: u32) {
  let qvs = QB / 4u;
  let vpt = (D_V + WG_SIZE - 1u) / WG_SIZE;
  for (var i = 0u; i < vpt; i++) {
    let d = lid + i * WG_SIZE;
    if (d < D_V) {
      for (var qv = 0u; qv < qvs; qv++) {
        (*acc)[qv * vpt + i] *= trow[qv];
      }
      var vr = vRow0 + d;
      for (var j = 0u; j < nk; j++) {
        let vd = v[vr];
        for (var qv = 0u; qv < qvs; qv++) {
          (*acc)[qv * vpt + i] += ts[j * qvs + qv] * vd;
        }
        vr += params.vRowStride;
      }
    }
  }
}

@compute @workgroup_size(WG_SIZE)
fn attend_tiled(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  // after the whole blocks of params.block tokens a dispatch of larger blocks took (0: none)
  var t0 = wid.y * QB;
  if (params.block > 0u) {
    t0 += step[1] / params.block * params.block;
  }
  let qvs = QB / 4u;
  // a block is QB consecutive positions of one sequence (a batch of one sequence)
  let qPos0 = tok_pos(t0);
  // keys of the block: from the first token's window start to the last token's own key
  let kEnd = qPos0 + QB;
  var kStart = 0u;
  if (params.window > 0u && qPos0 + 1u > params.window) {
    kStart = qPos0 + 1u - params.window;
  }
  let kvh = h / params.group;
  let kb = params.kOffset + kvh * params.kHeadStride + tok_base(t0) * params.kRowStride;
  let vb = params.vOffset + kvh * params.vHeadStride + tok_base(t0) * params.vRowStride;
  for (var i = lid; i < QB * D_K; i += WG_SIZE) {
    let qi = i / D_K;
    let d = i % D_K;
    tq[d * qvs + qi / 4u][qi % 4u] =
      q[params.qOffset + (t0 + qi) * params.qStride + h * params.qHeadStride + d];
  }
  let vpt = (D_V + WG_SIZE - 1u) / WG_SIZE;
  var tacc: array<vec4f, REG_MAX / 4u>; // [qv · vpt + i]: element lid + i · WG_SIZE of group qv
  for (var i = 0u; i < qvs * vpt; i++) {
    tacc[i] = vec4f(0.0);
  }
  // Softmax role: invocation (group sq, part sp) owns keys sp · QB/4 … + QB/4 − 1 of group sq.
  let parts = WG_SIZE / qvs;
  let sq = lid % qvs;
  let sp = lid / qvs;
  var m = vec4f(NEG_BIG); // group sq's running maxima (the same in all its parts)
  var l = vec4f(0.0); // this invocation's share of group sq's denominators, relative to m
  workgroupBarrier();

  for (var tile = kStart; tile < kEnd; tile += WG_SIZE) {
    tile_scores(tile + lid, kEnd, qPos0, kb, lid);
    workgroupBarrier();
    // The tile's maxima: each part's over its keys, then over the parts.
    var pm = vec4f(NEG_BIG);
    for (var jj = 0u; jj < qvs; jj++) {
      pm = max(pm, ts[(sp * qvs + jj) * qvs + sq]);
    }
    tred[lid] = pm;
    workgroupBarrier();
    var tmax = vec4f(NEG_BIG);
    for (var pp = 0u; pp < parts; pp++) {
      tmax = max(tmax, tred[pp * qvs + sq]);
    }
    let mNew = max(m, tmax);
    let alpha = exp(m - mNew);
    // This part's keys become probabilities (masked keys 0).
    l *= alpha;
    for (var jj = 0u; jj < qvs; jj++) {
      let j = (sp * qvs + jj) * qvs + sq;
      let s = ts[j];
      let p = select(vec4f(0.0), exp(s - mNew), s > vec4f(NEG_BIG));
      l += p;
      ts[j] = p;
    }
    if (sp == 0u) {
      trow[sq] = alpha;
    }
    m = mNew;
    workgroupBarrier();
    // Values: each element of the tile's rows is read once and added into every query.
    let nk = min(WG_SIZE, kEnd - tile);
    tile_values(&tacc, vb + tile * params.vRowStride, nk, lid);
    // ts, tred and trow are rewritten by the next tile.
    workgroupBarrier();
  }

  // Each query's denominator from its parts' shares, the sink, then 1 / denominator.
  tred[lid] = l;
  workgroupBarrier();
  if (sp == 0u) {
    var sum = vec4f(0.0);
    for (var pp = 0u; pp < parts; pp++) {
      sum += tred[pp * qvs + sq];
    }
    var corr = vec4f(1.0);
    if (params.hasSinks != 0u) {
      let sink = vec4f(sinks[params.sinksOffset + h]);
      let mAll = max(m, sink);
      corr = exp(m - mAll);
      sum = sum * corr + exp(sink - mAll);
    }
    trow[sq] = corr / sum;
  }
  workgroupBarrier();
  for (var i = 0u; i < vpt; i++) {
    let d = lid + i * WG_SIZE;
    if (d < D_V) {
      for (var qv = 0u; qv < qvs; qv++) {
        let r = tacc[qv * vpt + i] * trow[qv];
        for (var c = 0u; c < 4u; c++) {
          out[params.oOffset + (t0 + 4u * qv + c) * params.oStride + h * params.oHeadStride + d] =
            r[c];
        }
      }
    }
  }
}
