// x_vec4: matmul.wgsl's activations X as vec4s, for views whose offsets and
// strides are multiples of 4 elements in a binding of whole vec4s: one load
// per 4 values (four bounds-checked loads cost a CPU adapter more than the
// arithmetic they feed).

@group(0) @binding(1) var<storage, read_write> X: array<vec4f>;

// X[i].
fn x1(i: u32) -> f32 {
  return X[i >> 2u][i & 3u];
}

// X[i .. i + 3], i a multiple of 4.
fn x4(i: u32) -> vec4f {
  return X[i >> 2u];
}
