// expert_bias: add each chosen expert's bias row, read from the pool slot
// that holds the expert (GPT-OSS's `ffn_*_exps.bias`, which stream with
// their expert):
//   y[t, k, i] += bias[biasOffset + (slots[t, k] − idBase) · biasStride + i]
// for the slots this arena holds (idBase ≤ slot < idBase + nSlots); rows of
// other slots are left alone, so one op per arena covers a batch.
//
// Bindings (inputs → outputs → params):
//   @binding(0) bias:   array<f32>  the arena's bias part [nSlots, biasStride]  read
//   @binding(1) slots:  array<u32>  [T, slotsStride] from slotsOffset           read
//   @binding(2) y:      array<f32>  [T, yStride] from yOffset, rows k of n      read_write
//                                   yRowStride apart
//   @binding(3) params: read-only storage, struct Params below
//
// Dispatch: [ceil(k · n / WG_SIZE), T].

struct Params {
  n: u32, // bias row length
  k: u32, // chosen experts per token
  idBase: u32,
  nSlots: u32,
  biasOffset: u32,
  biasStride: u32,
  slotsOffset: u32,
  slotsStride: u32,
  yOffset: u32,
  yStride: u32,
  yRowStride: u32,
}

override WG_SIZE: u32 = 64;

@group(0) @binding(0) var<storage, read> bias: array<f32>;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> params: Params;

@compute @workgroup_size(WG_SIZE)
fn add_slot_bias(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wid.x * WG_SIZE + lid;
  let t = wid.y;
  if (j >= params.k * params.n) {
    return;
  }
  let r = j / params.n;
  let i = j % params.n;
  let slot = slots[params.slotsOffset + t * params.slotsStride + r];
  if (slot < params.idBase || slot - params.idBase >= params.nSlots) {
    return;
  }
  let at = params.yOffset + t * params.yStride + r * params.yRowStride + i;
  y[at] = y[at] + bias[params.biasOffset + (slot - params.idBase) * params.biasStride + i];
}
