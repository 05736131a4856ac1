// attention_vec: the attention of attention.wgsl (same parameters, same step
// words, same results up to the order of the sums) for adapters where every
// storage load costs the same whatever its width, is made lane by lane, and
// a workgroup of 8 invocations is one CPU vector (llvmpipe): queries, keys,
// values and outputs are read and written as vec4s, and one workgroup takes
// G query heads that share a kv head, so each cached row is loaded once for
// G heads.
//
// One workgroup of 8 invocations per (group of G heads of one kv head,
// token). Invocation i walks keys kStart + i, + 8, … alone with its own
// online (running-max) softmax for the G heads — scores, maxima,
// denominators and the G · D_V accumulators in its registers, no barrier
// in the walk. At the end the 8 partial results are combined in workgroup
// memory (rescaled to the heads' common maxima, sinks added to the
// denominators), GH heads at a time.
// Requires D_K and D_V multiples of 4 and every offset and stride of
// Params a multiple of 4 (elements): the caller checks; Params' offsets and
// strides are in f32 elements as in attention.wgsl.
//
// Bindings (inputs → outputs → params): as attention.wgsl, with q, k, v, out
// bound as vec4 arrays.
// Override: G (1, 2, 4 or 8). The entry point is generated for G, D_K and
// D_V with its loops over heads and vec4s unrolled (src/gpu/ops/attention.ts
// attendVecWgsl): llvmpipe keeps an array indexed in a loop in memory that it
// reads lane by lane.
//
// Dispatch: [nHead / G, T].

//#include attention_params

override G: u32 = 8;

@group(0) @binding(0) var<storage, read> q: array<vec4f>;
@group(0) @binding(1) var<storage, read> k: array<vec4f>;
@group(0) @binding(2) var<storage, read> v: array<vec4f>;
@group(0) @binding(3) var<storage, read> sinks: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4f>;
@group(0) @binding(5) var<storage, read> step: array<u32>;
@group(0) @binding(6) var<storage, read> params: Params;

// each invocation's running max and denominator per head, for the combination
var<workgroup> mm: array<f32, G * 8u>;
var<workgroup> ll: array<f32, G * 8u>;

// Below any score; finite so that differences with it stay finite (e^(−big) = 0).
const NEG_BIG: f32 = -3.0e38;

{{ATTEND_VEC}}
