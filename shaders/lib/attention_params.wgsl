// attention_params: the params of attention.wgsl and attention_vec.wgsl, one
// struct for both. src/gpu/ops/attention.ts writes it; offsets and strides are
// in f32 elements (attention_vec needs them in whole vec4s).

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
  block: u32, // 0, or the block size of the attend_tiled dispatch before this one: start after its blocks (attention_vec: unused)
}
