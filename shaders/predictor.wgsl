// predictor: the shadow predictor's MLP on the GPU (inference and training
// share this kernel): a batched, strided f32 matrix product with bias and
// an epilogue.
//
// gemm: C[z, m, n] = epi(Σ_k A[z, m, k] · B[z, k, n] + bias[z · biasZ + n] (+ C))
// Every operand is addressed through element strides, so one kernel covers
// x·Wᵀ, dY·W, dYᵀ·X and per-layer stacks (z):
//   A[z, m, k] = a[aOff + z·aZ + m·aM + k·aK]
//   B[z, k, n] = b[bOff + z·bZ + k·bK + n·bN]
//   C[z, m, n] = c[cOff + z·cZ + m·cM + n·cN]
// Epilogue 0: none; 1: ReLU; 2: zero where mask[maskOff + z·cZ + m·cM + n·cN]
// ≤ 0 (ReLU backward: the mask is the activation, laid out like C).
// M is params.M, or step[1] · mPerToken when mPerToken > 0 (rows per token of
// the batch being recorded: the step buffer's token count).
//
// Bindings (inputs → outputs → params):
//   @binding(0) a:      array<f32>   read
//   @binding(1) b:      array<f32>   read
//   @binding(2) bias:   array<f32>   read (unused unless hasBias)
//   @binding(3) mask:   array<f32>   read (unused unless epilogue = 2)
//   @binding(4) step:   array<u32>   read: [1] = tokens in the batch
//   @binding(5) c:      array<f32>   read_write
//   @binding(6) params: struct GemmParams below
// Overrides: WG_M, WG_N (invocations per workgroup along m and n); each
// invocation computes a 4 × 4 tile of C.
// Dispatch: [ceil(N / (4·WG_N)), ceil(M / (4·WG_M)), Z].
//
// The top-k over expert scores is in predictor_topk.wgsl.

struct GemmParams {
  M: u32,
  N: u32,
  K: u32,
  mPerToken: u32,
  aOff: u32,
  aZ: u32,
  aM: u32,
  aK: u32,
  bOff: u32,
  bZ: u32,
  bK: u32,
  bN: u32,
  cOff: u32,
  cZ: u32,
  cM: u32,
  cN: u32,
  hasBias: u32,
  biasOff: u32,
  biasZ: u32,
  epilogue: u32,
  maskOff: u32,
  accumulate: u32,
}

override WG_M: u32 = 8;
override WG_N: u32 = 8;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(6) var<storage, read> params: GemmParams;

@compute @workgroup_size(WG_N, WG_M)
fn gemm(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  var M = params.M;
  if (params.mPerToken > 0u) {
    M = step[1] * params.mPerToken;
  }
  let N = params.N;
  let m0 = (wid.y * WG_M + lid.y) * 4u;
  let n0 = (wid.x * WG_N + lid.x) * 4u;
  if (m0 >= M || n0 >= N) {
    return;
  }
  let z = wid.z;
  // Rows and columns past the end read the last one (clamped) and are not written.
  var aRow: array<u32, 4>;
  var bCol: array<u32, 4>;
  for (var i = 0u; i < 4u; i++) {
    aRow[i] = params.aOff + z * params.aZ + min(m0 + i, M - 1u) * params.aM;
    bCol[i] = params.bOff + z * params.bZ + min(n0 + i, N - 1u) * params.bN;
  }
  var acc: array<f32, 16>;
  for (var k = 0u; k < params.K; k++) {
    let ak = k * params.aK;
    let bk = k * params.bK;
    let a0 = a[aRow[0] + ak];
    let a1 = a[aRow[1] + ak];
    let a2 = a[aRow[2] + ak];
    let a3 = a[aRow[3] + ak];
    let bv = vec4f(b[bCol[0] + bk], b[bCol[1] + bk], b[bCol[2] + bk], b[bCol[3] + bk]);
    let r0 = a0 * bv;
    let r1 = a1 * bv;
    let r2 = a2 * bv;
    let r3 = a3 * bv;
    acc[0] += r0.x; acc[1] += r0.y; acc[2] += r0.z; acc[3] += r0.w;
    acc[4] += r1.x; acc[5] += r1.y; acc[6] += r1.z; acc[7] += r1.w;
    acc[8] += r2.x; acc[9] += r2.y; acc[10] += r2.z; acc[11] += r2.w;
    acc[12] += r3.x; acc[13] += r3.y; acc[14] += r3.z; acc[15] += r3.w;
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + i;
    if (m >= M) {
      break;
    }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + j;
      if (n >= N) {
        break;
      }
      let rel = z * params.cZ + m * params.cM + n * params.cN;
      let ci = params.cOff + rel;
      var v = acc[i * 4u + j];
      if (params.hasBias != 0u) {
        v += bias[params.biasOff + z * params.biasZ + n];
      }
      if (params.accumulate != 0u) {
        v += c[ci];
      }
      if (params.epilogue == 1u) {
        v = max(v, 0.0);
      } else if (params.epilogue == 2u) {
        v = select(0.0, v, mask[params.maskOff + rel] > 0.0);
      }
      c[ci] = v;
    }
  }
}
