// router: MoE routing on the GPU, as llama.cpp's build_moe_ffn computes it.
// Per token: logits (+ logit bias) → probabilities (softmax over all experts,
// sigmoid, or the raw logits for "top-k then softmax") → selection scores
// (probabilities + selection bias exp_probs_b) → optional group limit (keep the
// nGroupUsed groups with the largest sum of their top-2 scores, mask the rest)
// → top-K by score, best first, ties to the lower expert id → weights from the
// unbiased probabilities of the chosen experts (softmax over them for
// gating 2), optionally renormalised to sum 1 (sum clamped ≥ 2^-14), times
// scale unless it is 0 or 1.
// Residency: slot = table[layer, id]; a slot < 0 is a miss: the counter
// misses[0] is incremented atomically, misses[1] is set to 1 (it stays set
// across the passes of a decode window until the CPU clears it), the record
// (layer, token, expert) is written at misses[4 + 3i] if it fits, and the
// slot becomes NONE
// (0xffffffff): outside every arena, so mul_mat_id skips the pair and leaves
// its output row as it was (the expert-group passes rely on this).
// Without a table, slot = id. NaN scores are never chosen; a token with no
// choosable expert gets expert 0.
//
// Bindings (inputs → outputs → params):
//   @binding(0) logits:    array<f32>  [T, nExpert]: logitsOffset + t*logitsStride + e   read
//   @binding(1) logitBias: array<f32>  [nExpert] from logitBiasOffset (if hasLogitBias)  read
//   @binding(2) selBias:   array<f32>  [nExpert] from selBiasOffset (if hasSelBias)      read
//   @binding(3) residency: array<i32>  [nLayer, nExpert] from residencyOffset
//                                      (if hasResidency)                                read
//   @binding(4) ids:       array<u32>  [T, K]: idsOffset + t*idsStride + r               written
//   @binding(5) weights:   array<f32>  [T, K]: wOffset + t*wStride + r                   written
//   @binding(6) slots:     array<u32>  [T, K]: slotsOffset + t*slotsStride + r (if hasSlots) written
//   @binding(7) misses:    array<atomic<u32>>  [0] miss count, [1] any miss, [2..3] 0, then (layer, token,
//                                      expert) triples (if hasResidency)               written
//   @binding(8) params: read-only storage, struct Params below
// Overrides: WG_SIZE (a power of two), N_EXPERT, K (experts chosen).
//
// Dispatch: [T]; one workgroup per token.

struct Params {
  gating: u32, // 0 softmax, 1 sigmoid, 2 top-k then softmax
  normalize: u32,
  scale: f32,
  hasLogitBias: u32,
  logitBiasOffset: u32,
  hasSelBias: u32,
  selBiasOffset: u32,
  nGroup: u32, // group limit when nGroup > 1
  nGroupUsed: u32,
  hasResidency: u32,
  layer: u32,
  residencyOffset: u32,
  logitsOffset: u32,
  logitsStride: u32,
  idsOffset: u32,
  idsStride: u32,
  wOffset: u32,
  wStride: u32,
  hasSlots: u32,
  slotsOffset: u32,
  slotsStride: u32,
}

override WG_SIZE: u32 = 64;
override N_EXPERT: u32 = 8;
override K: u32 = 2;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> logitBias: array<f32>;
@group(0) @binding(2) var<storage, read> selBias: array<f32>;
@group(0) @binding(3) var<storage, read> residency: array<i32>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> slots: array<u32>;
@group(0) @binding(7) var<storage, read_write> misses: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read> params: Params;

//#include wg_reduce

const NEG_BIG: f32 = -3.0e38;
const MISS_HEADER: u32 = 4u;

var<workgroup> prob: array<f32, N_EXPERT>;
var<workgroup> sel: array<f32, N_EXPERT>;
var<workgroup> flag: array<u32, N_EXPERT>; // per group: kept; then per expert: taken
var<workgroup> chosen: array<u32, K>;
var<workgroup> w: array<f32, K>;

@compute @workgroup_size(WG_SIZE)
fn route(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x;
  let lb = params.logitsOffset + t * params.logitsStride;

  // Probabilities.
  var localMax = NEG_BIG;
  for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
    var x = logits[lb + e];
    if (params.hasLogitBias != 0u) {
      x += logitBias[params.logitBiasOffset + e];
    }
    prob[e] = x;
    localMax = max(localMax, x);
  }
  if (params.gating == 0u) {
    let mx = wg_max(lid, localMax);
    var localSum = 0.0;
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      let ex = exp(prob[e] - mx);
      prob[e] = ex;
      localSum += ex;
    }
    let inv = 1.0 / wg_sum(lid, localSum);
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      prob[e] *= inv;
    }
  } else if (params.gating == 1u) {
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      prob[e] = 1.0 / (1.0 + exp(min(-prob[e], 88.0)));
    }
  }

  // Selection scores.
  for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
    var s = prob[e];
    if (params.hasSelBias != 0u) {
      s += selBias[params.selBiasOffset + e];
    }
    sel[e] = s;
    flag[e] = 0u;
  }
  workgroupBarrier();

  // Group limit: a group's score is the sum of its two best selection scores.
  if (params.nGroup > 1u) {
    let g = N_EXPERT / params.nGroup;
    for (var gi = lid; gi < params.nGroup; gi += WG_SIZE) {
      var b1 = NEG_BIG;
      var b2 = NEG_BIG;
      for (var e = gi * g; e < gi * g + g; e++) {
        let v = sel[e];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      // Group scores borrow wg_reduce's scratch (nGroup ≤ WG_SIZE).
      redV[gi] = select(b1 + b2, b1, g == 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
      for (var r = 0u; r < params.nGroupUsed; r++) {
        var bv = 0.0;
        var bi = NONE;
        for (var gi = 0u; gi < params.nGroup; gi++) {
          if (flag[gi] == 0u && better(redV[gi], gi, bv, bi)) {
            bv = redV[gi];
            bi = gi;
          }
        }
        if (bi != NONE) {
          flag[bi] = 1u;
        }
      }
    }
    workgroupBarrier();
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      if (flag[e / g] == 0u) {
        sel[e] = NEG_BIG;
      }
    }
    workgroupBarrier();
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      flag[e] = 0u;
    }
    workgroupBarrier();
  }

  // Top-K: K rounds of a workgroup arg-max over the experts not taken yet.
  for (var r = 0u; r < K; r++) {
    var bv = 0.0;
    var bi = NONE;
    for (var e = lid; e < N_EXPERT; e += WG_SIZE) {
      if (flag[e] == 0u && better(sel[e], e, bv, bi)) {
        bv = sel[e];
        bi = e;
      }
    }
    let best = wg_argmax(lid, bv, bi);
    if (lid == 0u) {
      var c = best.i;
      if (c == NONE) {
        c = 0u;
      }
      chosen[r] = c;
      flag[c] = 1u;
    }
    workgroupBarrier();
  }

  if (lid != 0u) {
    return;
  }

  // Weights, from the unbiased probabilities.
  for (var r = 0u; r < K; r++) {
    w[r] = prob[chosen[r]];
  }
  if (params.gating == 2u) {
    var mx = NEG_BIG;
    for (var r = 0u; r < K; r++) {
      mx = max(mx, w[r]);
    }
    var sum = 0.0;
    for (var r = 0u; r < K; r++) {
      w[r] = exp(w[r] - mx);
      sum += w[r];
    }
    let inv = 1.0 / sum;
    for (var r = 0u; r < K; r++) {
      w[r] *= inv;
    }
  }
  if (params.normalize != 0u) {
    var sum = 0.0;
    for (var r = 0u; r < K; r++) {
      sum += w[r];
    }
    sum = max(sum, 6.103515625e-5);
    for (var r = 0u; r < K; r++) {
      w[r] = w[r] / sum;
    }
  }
  if (params.scale != 0.0 && params.scale != 1.0) {
    for (var r = 0u; r < K; r++) {
      w[r] *= params.scale;
    }
  }

  let nMissWords = arrayLength(&misses);
  for (var r = 0u; r < K; r++) {
    let e = chosen[r];
    ids[params.idsOffset + t * params.idsStride + r] = e;
    weights[params.wOffset + t * params.wStride + r] = w[r];
    var slot = e;
    if (params.hasResidency != 0u) {
      let s = residency[params.residencyOffset + params.layer * N_EXPERT + e];
      if (s < 0) {
        let i = atomicAdd(&misses[0], 1u);
        atomicStore(&misses[1], 1u);
        let at = MISS_HEADER + 3u * i;
        if (at + 3u <= nMissWords) {
          atomicStore(&misses[at], params.layer);
          atomicStore(&misses[at + 1u], t);
          atomicStore(&misses[at + 2u], e);
        }
        slot = NONE;
      } else {
        slot = u32(s);
      }
    }
    if (params.hasSlots != 0u) {
      slots[params.slotsOffset + t * params.slotsStride + r] = slot;
    }
  }
}
