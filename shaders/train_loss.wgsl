// train_loss: softmax cross-entropy of the shadow predictor's expert scores
// against the experts the model chose, its gradient, and the metrics the
// trainer prints. One group = one (row, lookahead) pair: nExpert logits and
// up to KT target experts (NONE pads; a group with none is skipped: zero
// gradient, zero metrics). The target distribution is uniform over the
// group's targets, so
//   loss = −(1/n) Σ_targets log softmax(logits)[e]
//   dlogits = (softmax(logits) − target) · gradScale
// and hits = how many targets rank among the KT best logits (higher logit,
// then lower id: the order of predictor_topk.wgsl).
//
// Bindings (inputs → outputs → params):
//   @binding(0) logits:  array<f32>  [G, nExpert] from logitsOff      read
//   @binding(1) targets: array<u32>  [G, KT] from targetsOff          read
//   @binding(2) grad:    array<f32>  [G, nExpert] from gradOff        read_write
//                                     (written when writeGrad = 1)
//   @binding(3) metrics: array<f32>  [G, 3] from metricsOff: loss, hits, targets
//                                                                     read_write
//   @binding(4) params: uniform, struct Params below
// Overrides: WG_SIZE, KT (targets per group: the model's experts per token).
// Dispatch: ceil(G / WG_SIZE) workgroups, split across y when large
// (linear index wid.x + wid.y · nwg.x).

struct Params {
  groups: u32,
  nExpert: u32,
  logitsOff: u32,
  targetsOff: u32,
  gradOff: u32,
  metricsOff: u32,
  gradScale: f32,
  writeGrad: u32,
}

override WG_SIZE: u32 = 64;
override KT: u32 = 2;

const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(WG_SIZE)
fn softmax_ce(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let g = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
  if (g >= params.groups) {
    return;
  }
  let nE = params.nExpert;
  let lb = params.logitsOff + g * nE;
  let tb = params.targetsOff + g * KT;
  var n = 0u;
  for (var r = 0u; r < KT; r++) {
    if (targets[tb + r] != NONE) {
      n++;
    }
  }
  let mb = params.metricsOff + g * 3u;
  let gb = params.gradOff + g * nE;
  if (n == 0u) {
    metrics[mb] = 0.0;
    metrics[mb + 1u] = 0.0;
    metrics[mb + 2u] = 0.0;
    if (params.writeGrad != 0u) {
      for (var e = 0u; e < nE; e++) {
        grad[gb + e] = 0.0;
      }
    }
    return;
  }
  var mx = -3.4e38;
  for (var e = 0u; e < nE; e++) {
    mx = max(mx, logits[lb + e]);
  }
  var sum = 0.0;
  for (var e = 0u; e < nE; e++) {
    sum += exp(logits[lb + e] - mx);
  }
  let logSum = log(sum) + mx;
  let t = 1.0 / f32(n);
  var loss = 0.0;
  var hits = 0.0;
  for (var r = 0u; r < KT; r++) {
    let te = targets[tb + r];
    if (te == NONE) {
      continue;
    }
    let tv = logits[lb + te];
    loss -= t * (tv - logSum);
    var rank = 0u;
    for (var e = 0u; e < nE; e++) {
      let v = logits[lb + e];
      if (v > tv || (v == tv && e < te)) {
        rank++;
      }
    }
    if (rank < KT) {
      hits += 1.0;
    }
  }
  metrics[mb] = loss;
  metrics[mb + 1u] = hits;
  metrics[mb + 2u] = f32(n);
  if (params.writeGrad != 0u) {
    for (var e = 0u; e < nE; e++) {
      var want = 0.0;
      for (var r = 0u; r < KT; r++) {
        if (targets[tb + r] == e) {
          want = t;
        }
      }
      grad[gb + e] = (exp(logits[lb + e] - logSum) - want) * params.gradScale;
    }
  }
}
