// x_f32: matmul.wgsl's activations X as f32 words (any offset and stride).

@group(0) @binding(1) var<storage, read_write> X: array<f32>;

// X[i].
fn x1(i: u32) -> f32 {
  return X[i];
}

// X[i .. i + 3].
fn x4(i: u32) -> vec4f {
  return vec4f(X[i], X[i + 1u], X[i + 2u], X[i + 3u]);
}
