// sample: token selection on the GPU, so the next token's embedding can read
// the chosen id without a readback. Two entry points share the bindings below.
//
// argmax: for the selected rows of logits [T, n], the index of the largest
// logit (the first of equal ones, as ggml_argmax; NaN never wins; a row with
// no comparable value gives 0), written to tokens[outOffset + r], and the
// logit itself to values[valueOffset + r] when hasValue. Rows: mode 0 = row 0
// only, 1 = the batch's last row (nTokens − 1 from the step buffer), 2 = every
// row t of the batch (r = t). Dispatch: one workgroup per output row ([1] for
// modes 0 and 1, [T] for 2). history and scratch are not touched.
//
// sample: llama.cpp's sampler chain on one row (mode 0 or 1), in one
// workgroup, one dispatch: penalties → top-k → top-p → min-p → temperature →
// softmax → draw. Dispatch [1].
//   1. scratch[0, n) = the row's logits (NaN → −inf, +inf → FLT_MAX, −0 → +0),
//      then the penalties for every token in the last min(count, lastN)
//      history entries (repeat: logit·r if ≤ 0, else logit·(1/r); then
//      − (c·freq + presence)), each distinct token once.
//   2. M = max, a = its first index. Greedy (temperature ≤ 0) or M = −inf:
//      the token is a (= argmax of the penalised logits), probability 1.
//   3. Tokens are ranked by the 56-bit key (orderable bits of the logit,
//      0xffffff − id): larger logit first, lower id first among equal ones,
//      so every cut below is a key threshold ("keep iff key ≥ cut").
//   4. top-k (0 < k < n): the cut is found by a radix descent over the key in
//      4-bit digits (8 for the logit, 6 for the id, only reached on ties):
//      each pass histograms the tokens that share the prefix found so far
//      (per-thread private counts and weights, combined by a fixed tree, so
//      the sums do not depend on scheduling) and picks the bucket holding the
//      k-th token; it stops as soon as the bucket is a single token or ends
//      exactly at k. Measured on a 152k vocabulary: 5 passes (k = 40, 2000).
//      Each pass reads the whole list; a token's weight is computed only when
//      it shares the prefix. The k kept ids are then compacted into
//      scratch[n, n + k) in id order (per-thread contiguous chunks + a scan),
//      and everything after works on that list.
//   5. top-p (p < 1): Z = Σ exp(l − M) over the list; the same descent with
//      weights exp(l − M) finds the last token (in rank order) whose mass
//      before it is < p·Z (the first token is always kept), as llama.cpp's
//      "cumulative sum ≥ p, including the token that crosses" (6–7 passes
//      over a 152k vocabulary, 5 over a top-k list of 40).
//   6. min-p: keep logit ≥ M + log(minP) (a key threshold too).
//   7. Draw: q = exp((l − M)·invTemp) for the list tokens above both cuts,
//      0 otherwise. The list is split into WG_SIZE contiguous chunks; each
//      thread sums its chunk in order, thread 0 adds the chunk sums in order
//      (total), takes u = hash(seed, position) ∈ [0, 1) (24 bits), goal =
//      u·total, and walks the chunks and then the chosen chunk's tokens in id
//      order to the first token with q > 0 whose running sum exceeds goal
//      (the last token with q > 0 if rounding leaves none). The CPU reference
//      (src/generate/sampler_cpu.ts) does the same sums in the same order.
//   8. tokens[outOffset] = id, values[valueOffset] = q/total (if hasValue),
//      and the id is appended to the history ring for the next step.
// Work over the vocabulary: one pass for the copy, one for the max, ≤ 14
// (5–7 measured) per descent, two for the compaction, one each for Z and the
// draw: with llama.cpp's defaults (top-k 40) 9 passes over n, the rest over 40.
// All in one workgroup: simple and exact; a multi-workgroup histogram pass
// would be the next step if the sampler ever shows in a GPU profile.
// RNG: position = step[0] + max(step[1], 1) − 1 (the position of the row's
// token); h = pcg(pcg(seed) + position) (PCG-RXS-M-XS hash); u = (h >> 8)·2^−24.
//
// Bindings (inputs → outputs → params):
//   @binding(0) logits:  array<f32>  [T, n]: offset + t*stride + i           read
//   @binding(1) step:    array<u32>  step buffer: [0] pos0, [1] nTokens      read
//   @binding(2) history: array<u32>  [0] tokens appended so far (count),
//                                    [1 + j % histCap] the j-th token        read, appended (sample)
//   @binding(3) tokens:  array<u32>  token ids, from outOffset               written
//   @binding(4) values:  array<f32>  argmax: the chosen logits; sample: the
//                                    chosen token's probability, from valueOffset  written (if hasValue)
//   @binding(5) scratch: array<u32>  [2n]: penalised logits (f32 bits), then
//                                    the candidate list                      scratch (sample)
//   @binding(6) params: struct Params below, read-only storage (not a
//     uniform: lavapipe re-optimises a shader at every dispatch when its
//     loops depend on uniform-buffer values, ~16 ms per dispatch for this one)

struct Params {
  n: u32,
  offset: u32,
  stride: u32,
  mode: u32,
  outOffset: u32,
  hasValue: u32,
  valueOffset: u32,
  histCap: u32, // sample only, from here on
  greedy: u32,
  invTemp: f32,
  topK: u32, // 0 = off
  topP: f32, // >= 1 = off
  useMinP: u32,
  logMinP: f32,
  penalize: u32,
  penaltyLastN: u32,
  repeatPenalty: f32,
  invRepeatPenalty: f32,
  frequencyPenalty: f32,
  presencePenalty: f32,
  seed: u32,
  negInf: f32, // -inf, which WGSL cannot write as a constant
}

override WG_SIZE: u32 = 256;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> step: array<u32>;
@group(0) @binding(2) var<storage, read_write> history: array<u32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(4) var<storage, read_write> values: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

const FLT_MAX: f32 = 3.40282347e38;
const ID_MASK: u32 = 0xffffffu;

//#include wg_reduce

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
  let best = wg_argmax(lid, bv, bi);
  if (lid == 0u) {
    let r = select(0u, wid.x, params.mode == 2u);
    var index = best.i;
    var value = best.v;
    if (index == NONE) {
      index = 0u;
      value = logits[base];
    }
    tokens[params.outOffset + r] = index;
    if (params.hasValue != 0u) {
      values[params.valueOffset + r] = value;
    }
  }
}

// ------------------------------------------------------------------ sample

// Per-bucket weights of the radix descent: [WG_SIZE / 2 rows][16 buckets].
var<workgroup> redW: array<f32, WG_SIZE * 8u>;
var<workgroup> cntA: array<atomic<u32>, 16>;
// Per-thread chunk sums (draw, Z) and counts (compaction).
var<workgroup> part: array<f32, WG_SIZE>;
var<workgroup> partU: array<u32, WG_SIZE>;
var<workgroup> sMax: f32;
var<workgroup> sArg: u32;
var<workgroup> sLen: u32;
var<workgroup> sCompact: u32;
var<workgroup> sCut: vec2u;
var<workgroup> sAcc: f32;
var<workgroup> sDone: u32;
var<workgroup> sTotal: f32;

// NaN → −inf, +inf → FLT_MAX, −0 → +0, by the bits (float compares may assume no NaN).
fn sanitize(v: f32) -> f32 {
  let b = bitcast<u32>(v);
  let mag = b & 0x7fffffffu;
  if (mag > 0x7f800000u) {
    return params.negInf;
  }
  if (mag == 0u) {
    return 0.0;
  }
  if (b == 0x7f800000u) {
    return FLT_MAX;
  }
  return v;
}

// The logit's bits mapped so that unsigned order is float order (−0 never occurs).
fn ordKey(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b >> 31u) != 0u);
}

fn keyGE(k: vec2u, c: vec2u) -> bool {
  return k.x > c.x || (k.x == c.x && k.y >= c.y);
}

fn workAt(id: u32) -> f32 {
  return bitcast<f32>(scratch[id]);
}

// The j-th candidate: the compacted top-k list, or every token.
fn listId(j: u32) -> u32 {
  if (sCompact != 0u) {
    return scratch[params.n + j];
  }
  return j;
}

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// Radix descent over the ranking key of the m listed tokens: the key of the
// last token to keep, where a token is kept while the weight of the tokens
// ranked before it is < limit (weights 1 = top-k, exp(l − M) = top-p). The
// first token is always kept.
fn descend(useMass: bool, limit: f32, m: u32, lid: u32, maxLogit: f32) -> vec2u {
  if (lid == 0u) {
    sCut = vec2u(0u, 0u);
    sAcc = 0.0;
    sDone = 0u;
    for (var d = 0u; d < 16u; d++) {
      atomicStore(&cntA[d], 0u);
    }
  }
  let halfWg = WG_SIZE / 2u;
  for (var level = 0u; level < 14u; level++) {
    if (workgroupUniformLoad(&sDone) != 0u) {
      break;
    }
    let p = sCut;
    let hiBits = min(level, 8u) * 4u;
    let loBits = (max(level, 8u) - 8u) * 4u;
    let mHi = select(0u, 0xffffffffu << ((32u - hiBits) & 31u), hiBits > 0u);
    let mLo = select(0u, (ID_MASK << ((24u - loBits) & 31u)) & ID_MASK, loBits > 0u);
    // Zeroed by hand: a declaration inside a loop is not re-zeroed every iteration on all backends.
    var w: array<f32, 16>;
    var c: array<u32, 16>;
    for (var d = 0u; d < 16u; d++) {
      w[d] = 0.0;
      c[d] = 0u;
    }
    for (var j = lid; j < m; j += WG_SIZE) {
      let id = listId(j);
      let l = workAt(id);
      let kh = ordKey(l);
      let kl = ID_MASK - id;
      if ((kh & mHi) == p.x && (kl & mLo) == p.y) {
        var d: u32;
        if (level < 8u) {
          d = (kh >> (28u - 4u * level)) & 15u;
        } else {
          d = (kl >> (20u - 4u * (level - 8u))) & 15u;
        }
        if (useMass) {
          w[d] += exp(l - maxLogit);
        } else {
          w[d] += 1.0;
        }
        c[d] += 1u;
      }
    }
    for (var d = 0u; d < 16u; d++) {
      if (c[d] != 0u) {
        atomicAdd(&cntA[d], c[d]);
      }
    }
    if (lid >= halfWg) {
      for (var d = 0u; d < 16u; d++) {
        redW[(lid - halfWg) * 16u + d] = w[d];
      }
    }
    workgroupBarrier();
    if (lid < halfWg) {
      for (var d = 0u; d < 16u; d++) {
        redW[lid * 16u + d] += w[d];
      }
    }
    workgroupBarrier();
    for (var s = halfWg / 2u; s > 0u; s >>= 1u) {
      for (var e = lid; e < s * 16u; e += WG_SIZE) {
        redW[e] += redW[e + s * 16u];
      }
      workgroupBarrier();
    }
    if (lid == 0u) {
      var acc = sAcc;
      var pre = p;
      var found = false;
      var done = level == 13u;
      for (var dd = 0u; dd < 16u; dd++) {
        let d = 15u - dd;
        let cd = atomicLoad(&cntA[d]);
        if (cd == 0u) {
          continue;
        }
        var wd = f32(cd);
        if (useMass) {
          wd = redW[d];
        }
        if (acc + wd >= limit) {
          if (level < 8u) {
            pre.x |= d << (28u - 4u * level);
          } else {
            pre.y |= d << (20u - 4u * (level - 8u));
          }
          // A single token, or (counting) the bucket ends exactly at the limit.
          if (cd == 1u || (!useMass && acc + wd == limit)) {
            done = true;
          }
          found = true;
          break;
        }
        acc += wd;
      }
      // Rounding left the whole region under the limit: keep all of it.
      if (!found) {
        done = true;
      }
      for (var d = 0u; d < 16u; d++) {
        atomicStore(&cntA[d], 0u);
      }
      sCut = pre;
      sAcc = acc;
      sDone = select(0u, 1u, done);
    }
  }
  return workgroupUniformLoad(&sCut);
}

// Weight of the j-th listed token: kind 0 = exp(l − M) (Z for top-p),
// kind 1 = the draw weight exp((l − M)·invTemp) above the cut, else 0.
fn weight(kind: u32, j: u32, maxLogit: f32, cut: vec2u) -> f32 {
  let id = listId(j);
  let l = workAt(id);
  if (kind == 0u) {
    return exp(l - maxLogit);
  }
  if (keyGE(vec2u(ordKey(l), ID_MASK - id), cut)) {
    return exp((l - maxLogit) * params.invTemp);
  }
  return 0.0;
}

// Sums weights over the list: per-thread contiguous chunks in order into
// part[], then the chunk sums in order. The same association as the CPU reference.
fn chunkSum(kind: u32, m: u32, lid: u32, maxLogit: f32, cut: vec2u) -> f32 {
  let ch = (m + WG_SIZE - 1u) / WG_SIZE;
  let s0 = min(lid * ch, m);
  let s1 = min(s0 + ch, m);
  var s = 0.0;
  for (var j = s0; j < s1; j++) {
    s += weight(kind, j, maxLogit, cut);
  }
  part[lid] = s;
  workgroupBarrier();
  if (lid == 0u) {
    var t = 0.0;
    for (var i = 0u; i < WG_SIZE; i++) {
      t += part[i];
    }
    sTotal = t;
  }
  return workgroupUniformLoad(&sTotal);
}

fn finish(id: u32, prob: f32) {
  tokens[params.outOffset] = id;
  if (params.hasValue != 0u) {
    values[params.valueOffset] = prob;
  }
  let count = history[0];
  history[1u + count % params.histCap] = id;
  history[0] = count + 1u;
}

@compute @workgroup_size(WG_SIZE)
fn sample(@builtin(local_invocation_index) lid: u32) {
  let n = params.n;
  var row = 0u;
  if (params.mode == 1u) {
    row = max(step[1], 1u) - 1u;
  }
  let base = params.offset + row * params.stride;

  // 1. Penalised logits.
  for (var i = lid; i < n; i += WG_SIZE) {
    scratch[i] = bitcast<u32>(sanitize(logits[base + i]));
  }
  if (params.penalize != 0u) {
    storageBarrier();
    let count = history[0];
    let cap = params.histCap;
    let window = min(count, params.penaltyLastN);
    for (var j = lid; j < window; j += WG_SIZE) {
      let t = history[1u + (count - 1u - j) % cap];
      var c = 0u;
      var isFirst = true;
      for (var k = 0u; k < window; k++) {
        if (history[1u + (count - 1u - k) % cap] == t) {
          if (k < j) {
            isFirst = false;
            break;
          }
          c += 1u;
        }
      }
      if (isFirst && t < n) {
        var l = workAt(t);
        if (l <= 0.0) {
          l = l * params.repeatPenalty;
        } else {
          l = l * params.invRepeatPenalty;
        }
        l = l - (f32(c) * params.frequencyPenalty + params.presencePenalty);
        scratch[t] = bitcast<u32>(sanitize(l));
      }
    }
  }
  storageBarrier();

  // 2. Max and its first index.
  var bv = 0.0;
  var bi = NONE;
  for (var i = lid; i < n; i += WG_SIZE) {
    let v = workAt(i);
    if (bi == NONE || v > bv) {
      bv = v;
      bi = i;
    }
  }
  let best = wg_argmax(lid, bv, bi);
  if (lid == 0u) {
    sMax = best.v;
    sArg = select(best.i, 0u, best.i == NONE);
    sLen = n;
    sCompact = 0u;
  }
  let maxLogit = workgroupUniformLoad(&sMax);
  if (params.greedy != 0u || maxLogit < -FLT_MAX) {
    if (lid == 0u) {
      finish(sArg, 1.0);
    }
    return;
  }

  // 4. top-k: cut, then the kept ids in id order into scratch[n, n + k).
  let k = params.topK;
  if (k > 0u && k < n) {
    let cut = descend(false, f32(k), n, lid, maxLogit);
    let ch = (n + WG_SIZE - 1u) / WG_SIZE;
    let s0 = min(lid * ch, n);
    let s1 = min(s0 + ch, n);
    var c = 0u;
    for (var i = s0; i < s1; i++) {
      if (keyGE(vec2u(ordKey(workAt(i)), ID_MASK - i), cut)) {
        c += 1u;
      }
    }
    partU[lid] = c;
    workgroupBarrier();
    if (lid == 0u) {
      var acc = 0u;
      for (var t = 0u; t < WG_SIZE; t++) {
        let v = partU[t];
        partU[t] = acc;
        acc += v;
      }
      sLen = acc;
    }
    workgroupBarrier();
    var o = partU[lid];
    for (var i = s0; i < s1; i++) {
      if (keyGE(vec2u(ordKey(workAt(i)), ID_MASK - i), cut)) {
        scratch[n + o] = i;
        o += 1u;
      }
    }
    storageBarrier();
    if (lid == 0u) {
      sCompact = 1u;
    }
  }
  let m = workgroupUniformLoad(&sLen);

  // 5. top-p.
  var cutP = vec2u(0u, 0u);
  if (params.topP < 1.0) {
    let z = chunkSum(0u, m, lid, maxLogit, cutP);
    cutP = descend(true, params.topP * z, m, lid, maxLogit);
  }
  // 6. min-p.
  var cutMin = vec2u(0u, 0u);
  if (params.useMinP != 0u) {
    cutMin = vec2u(ordKey(sanitize(maxLogit + params.logMinP)), 0u);
  }
  var cut = cutP;
  if (keyGE(cutMin, cutP)) {
    cut = cutMin;
  }

  // 7. Draw.
  let total = chunkSum(1u, m, lid, maxLogit, cut);
  if (lid == 0u) {
    let pos = step[0] + max(step[1], 1u) - 1u;
    let h = pcg(pcg(params.seed) + pos);
    let u = f32(h >> 8u) * (1.0 / 16777216.0);
    let goal = u * total;
    let ch = (m + WG_SIZE - 1u) / WG_SIZE;
    var pick = NONE;
    var pickQ = 0.0;
    var excl = 0.0;
    for (var t = 0u; t < WG_SIZE && pick == NONE; t++) {
      let next = excl + part[t];
      if (part[t] > 0.0 && next > goal) {
        var r = 0.0;
        for (var j = t * ch; j < min(t * ch + ch, m); j++) {
          let q = weight(1u, j, maxLogit, cut);
          r += q;
          if (q > 0.0 && excl + r > goal) {
            pick = j;
            pickQ = q;
            break;
          }
        }
      }
      excl = next;
    }
    if (pick == NONE) {
      for (var j = m; j > 0u; j--) {
        let q = weight(1u, j - 1u, maxLogit, cut);
        if (q > 0.0) {
          pick = j - 1u;
          pickQ = q;
          break;
        }
      }
    }
    finish(listId(pick), pickQ / total);
  }
}
