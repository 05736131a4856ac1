// predictor_topk: the K best experts of each group of nExpert scores, best
// first (higher score, then lower id; NaN never chosen), for the predictors'
// output. Groups are g = row · depth + d with rows token-major [token, layer]:
// group g holds the scores, predicted from layer l = row mod nLayer, of layer
// l + 1 + d. A group whose layer is past the last one is written as NONE
// unless crossToken is set (it then predicts the next token's layer
// l + 1 + d − nLayer). One invocation per group: K passes over the scores,
// each taking the best one ranked after the previous pick, so nothing but the
// last pick is kept.
//
// Bindings (inputs → outputs → params):
//   @binding(0) scores: array<f32>  [G, nExpert] from scoresOff          read
//   @binding(1) step:   array<u32>  [1] = tokens in the batch            read
//   @binding(2) ids:    array<u32>  [G, K] from idsOff                   read_write
//   @binding(3) params: struct Params below
// Overrides: WG_SIZE, K.
// Dispatch: ceil(G / WG_SIZE) workgroups, split across y when large
// (linear index wid.x + wid.y · nwg.x).

struct Params {
  nExpert: u32,
  depth: u32,
  nLayer: u32,
  groups: u32, // used when groupsPerToken = 0
  groupsPerToken: u32, // > 0: G = step[1] · groupsPerToken
  scoresOff: u32,
  idsOff: u32,
  crossToken: u32,
}

override WG_SIZE: u32 = 64;
override K: u32 = 2;

const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> scores: array<f32>;
@group(0) @binding(1) var<storage, read> step: array<u32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read> params: Params;

// Whether (v, e) ranks strictly after (pv, pe): lower score, or equal score and higher id.
fn after(v: f32, e: u32, pv: f32, pe: u32) -> bool {
  return v < pv || (v == pv && e > pe);
}

@compute @workgroup_size(WG_SIZE)
fn topk(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  var G = params.groups;
  if (params.groupsPerToken > 0u) {
    G = step[1] * params.groupsPerToken;
  }
  let g = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
  if (g >= G) {
    return;
  }
  let out = params.idsOff + g * K;
  let row = g / params.depth;
  let d = g % params.depth;
  let layer = row % params.nLayer;
  if (params.crossToken == 0u && layer + 1u + d >= params.nLayer) {
    for (var r = 0u; r < K; r++) {
      ids[out + r] = NONE;
    }
    return;
  }
  let base = params.scoresOff + g * params.nExpert;
  var pv = 0.0;
  var pe = NONE;
  for (var r = 0u; r < K; r++) {
    var bv = 0.0;
    var be = NONE;
    // After a pass that found nothing (all NaN), the rest stay NONE.
    if (r == 0u || pe != NONE) {
      for (var e = 0u; e < params.nExpert; e++) {
        let v = scores[base + e];
        // NaN fails every comparison: never taken.
        let eligible = r == 0u || after(v, e, pv, pe);
        if (eligible && v == v && (be == NONE || v > bv)) {
          bv = v;
          be = e;
        }
      }
    }
    ids[out + r] = be;
    pv = bv;
    pe = be;
  }
}
