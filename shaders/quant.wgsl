// quant: the dequantisers of every ggml weight type the matrix kernels read,
// as a library of sections. A section may `//#include NAME` shaders/lib/NAME.wgsl
// or a generated table (src/gpu/shaders.ts expands them when the kernel is
// compiled). This file is not a kernel: `src/gpu/ops/quant_wgsl.ts`
// cuts the common part and one `//#type NAME` section out of it and splices
// them into a kernel template (matmul.wgsl, get_rows.wgsl) at its QUANT
// placeholder.
//
// Every section defines the same names, so kernels are written once:
//   const QK: u32     elements per block (8 for the float types, whose "block"
//                     is 8 consecutive elements)
//   const QB: u32     bytes per block
//   const NP: u32     pieces per block; a piece is 8 weights
//   const TAIL: bool  rows may end inside a block (float types only); the
//                     kernel then masks elements at or past n_cols
//   fn xoff(p) -> vec2u            element offsets, within the block, of the
//                                  4 weights in .a and of the 4 in .b
//   fn deq(b, p) -> Piece          piece p of the block starting at byte b
// and optionally, for kernels where one invocation reads every piece of a
// block in turn (matmul.wgsl's matvec_rows):
//   const PH: u32                  pieces per group, a divisor of NP
//   struct Head                    what the pieces of a group share (scales)
//   fn head(b, g) -> Head          group g of the block at byte b, read once
//   fn deq_h(b, h, p) -> Piece     as deq(b, p), given h = head(b, p / PH)
// A section without them gets ones that read nothing and call deq
// (src/gpu/ops/quant_wgsl.ts appends them).
//
// Dequantised values follow ggml's to_float (ggml-quants.c) in f32. Blocks
// start at any byte address the type's size allows: types whose block size is
// a multiple of 4 (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, F32) are read with aligned
// word loads; the others (18-, 22-, 34-, 110-, 210-byte blocks, MXFP4's 17,
// F16/BF16 rows of odd length) with `ld32`, which reads any byte address.
//
// The kernel must declare `W: array<u32>` (the raw ggml bytes).

struct Piece {
  a: vec4f,
  b: vec4f,
}

// The u32 at any byte address (little-endian). The second word may lie past
// the binding; robust access returns some value, and it is shifted out when
// the address is aligned.
fn ld32(b: u32) -> u32 {
  let i = b >> 2u;
  let s = (b & 3u) << 3u;
  return (W[i] >> s) | ((W[i + 1u] << 1u) << (31u - s));
}

// ld32 for addresses that are often word-aligned (blocks of 210 or 34
// bytes start at every other even address): one load when aligned.
fn ld32e(b: u32) -> u32 {
  if ((b & 3u) == 0u) {
    return W[b >> 2u];
  }
  return ld32(b);
}

// The byte at address b.
fn ld8(b: u32) -> u32 {
  return (W[b >> 2u] >> ((b & 3u) << 3u)) & 0xffu;
}

// The f16 at an even byte address, as f32.
fn ldh(b: u32) -> f32 {
  return unpack2x16float(W[b >> 2u] >> ((b & 2u) << 3u)).x;
}

// The four bytes of q, low first.
fn bytes4(q: u32) -> vec4u {
  return (vec4u(q) >> vec4u(0u, 8u, 16u, 24u)) & vec4u(0xffu);
}

// The four bytes of q as signed int8, in f32.
fn sbytes4(q: u32) -> vec4f {
  return vec4f((bitcast<vec4i>(vec4u(q) << vec4u(24u, 16u, 8u, 0u))) >> vec4u(24u));
}

// The low nibbles of the four bytes of q.
fn nib_lo(q: u32) -> vec4u {
  return (vec4u(q) >> vec4u(0u, 8u, 16u, 24u)) & vec4u(0xfu);
}

// The high nibbles of the four bytes of q.
fn nib_hi(q: u32) -> vec4u {
  return (vec4u(q) >> vec4u(4u, 12u, 20u, 28u)) & vec4u(0xfu);
}

// Piece p of a 32-block whose 16 quant bytes hold element j in the low nibble
// of byte j and element j + 16 in the high nibble (Q4_0, Q4_1, Q5_*, IQ4_NL,
// MXFP4): bytes 4p..4p+3.
fn xoff_nibbles(p: u32) -> vec2u {
  return vec2u(4u * p, 16u + 4u * p);
}

// For matmul.wgsl's generated matvec_rows1 (src/gpu/ops/matmul.ts q6kBlocks):
// the word at a 2-byte-aligned address from the aligned words lo and hi
// around it (u: the address is not 4-aligned), and four int8 bytes in f32.
fn q6_fw(lo: u32, hi: u32, u: bool) -> u32 {
  return select(lo, (lo >> 16u) | (hi << 16u), u);
}

// The 4 words at byte 4·ws + 2·h of the 8 words p, q (ws = e0 + 2·e1 < 4,
// h = eh): a 16-byte run of a 2-byte-aligned block from the two aligned
// vectors around it.
fn q6_run(p: vec4u, q: vec4u, e0: bool, e1: bool, eh: bool) -> vec4u {
  let tl = select(p, vec4u(p.yzw, q.x), e0);
  let th = select(q.xyz, q.yzw, e0);
  let u = select(tl, vec4u(tl.zw, th.xy), e1);
  let u4 = select(th.x, th.z, e1);
  return select(u, (u >> vec4u(16u)) | (vec4u(u.yzw, u4) << vec4u(16u)), eh);
}

// The 4 words at byte c of the binding from the aligned vectors p, q around
// it (p = W4[c >> 4], q the next), any byte address.
fn w4_run(p: vec4u, q: vec4u, c: u32) -> vec4u {
  let e0 = (c & 4u) != 0u;
  let e1 = (c & 8u) != 0u;
  let tl = select(p, vec4u(p.yzw, q.x), e0);
  let th = select(q.xyz, q.yzw, e0);
  let u = select(tl, vec4u(tl.zw, th.xy), e1);
  let u4 = select(th.x, th.z, e1);
  let s = (c & 3u) << 3u;
  return select(u, (u >> vec4u(s)) | (vec4u(u.yzw, u4) << vec4u(32u - s)), s != 0u);
}

fn q6_sb(v: vec4u) -> vec4f {
  return vec4f(bitcast<vec4i>(v << vec4u(24u)) >> vec4u(24u));
}

//#type f32
const QK = 8u;
const QB = 32u;
const NP = 1u;
const TAIL = true;

fn xoff(p: u32) -> vec2u {
  return vec2u(0u, 4u);
}

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  return Piece(
    bitcast<vec4f>(vec4u(W[i], W[i + 1u], W[i + 2u], W[i + 3u])),
    bitcast<vec4f>(vec4u(W[i + 4u], W[i + 5u], W[i + 6u], W[i + 7u])),
  );
}

//#type f16
const QK = 8u;
const QB = 16u;
const NP = 1u;
const TAIL = true;

fn xoff(p: u32) -> vec2u {
  return vec2u(0u, 4u);
}

fn deq(b: u32, p: u32) -> Piece {
  return Piece(
    vec4f(unpack2x16float(ld32(b)), unpack2x16float(ld32(b + 4u))),
    vec4f(unpack2x16float(ld32(b + 8u)), unpack2x16float(ld32(b + 12u))),
  );
}

// Rows of an even length start word-aligned: ld32e reads one word a value.
const PH = 1u;

struct Head {
  unused: u32,
}

fn head(b: u32, g: u32) -> Head {
  return Head(0u);
}

fn deq_h(b: u32, h: Head, p: u32) -> Piece {
  return Piece(
    vec4f(unpack2x16float(ld32e(b)), unpack2x16float(ld32e(b + 4u))),
    vec4f(unpack2x16float(ld32e(b + 8u)), unpack2x16float(ld32e(b + 12u))),
  );
}

//#type bf16
const QK = 8u;
const QB = 16u;
const NP = 1u;
const TAIL = true;

fn xoff(p: u32) -> vec2u {
  return vec2u(0u, 4u);
}

fn bf16x2(q: u32) -> vec2f {
  return bitcast<vec2f>(vec2u(q << 16u, q & 0xffff0000u));
}

fn deq(b: u32, p: u32) -> Piece {
  return Piece(
    vec4f(bf16x2(ld32(b)), bf16x2(ld32(b + 4u))),
    vec4f(bf16x2(ld32(b + 8u)), bf16x2(ld32(b + 12u))),
  );
}

//#type q4_0
// Block: d f16, qs[16]. x = (q - 8) * d.
const QK = 32u;
const QB = 18u;
const NP = 4u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b);
  let q = ld32(b + 2u + 4u * p);
  return Piece((vec4f(nib_lo(q)) - 8.0) * d, (vec4f(nib_hi(q)) - 8.0) * d);
}

//#type q4_1
// Block: d f16, m f16, qs[16]. x = q * d + m.
const QK = 32u;
const QB = 20u;
const NP = 4u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let dm = unpack2x16float(W[b >> 2u]);
  let q = W[(b >> 2u) + 1u + p];
  return Piece(vec4f(nib_lo(q)) * dm.x + dm.y, vec4f(nib_hi(q)) * dm.x + dm.y);
}

//#type q5_0
// Block: d f16, qh u32 (fifth bits: bit j for element j), qs[16]. x = (q - 16) * d.
const QK = 32u;
const QB = 22u;
const NP = 4u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b);
  let qh = ld32(b + 2u);
  let q = ld32(b + 6u + 4u * p);
  let sh = vec4u(0u, 1u, 2u, 3u) + 4u * p;
  let ha = ((vec4u(qh) >> sh) & vec4u(1u)) << vec4u(4u);
  let hb = ((vec4u(qh) >> (sh + 16u)) & vec4u(1u)) << vec4u(4u);
  return Piece((vec4f(nib_lo(q) | ha) - 16.0) * d, (vec4f(nib_hi(q) | hb) - 16.0) * d);
}

//#type q5_1
// Block: d f16, m f16, qh u32, qs[16]. x = q * d + m.
const QK = 32u;
const QB = 24u;
const NP = 4u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  let dm = unpack2x16float(W[i]);
  let qh = W[i + 1u];
  let q = W[i + 2u + p];
  let sh = vec4u(0u, 1u, 2u, 3u) + 4u * p;
  let ha = ((vec4u(qh) >> sh) & vec4u(1u)) << vec4u(4u);
  let hb = ((vec4u(qh) >> (sh + 16u)) & vec4u(1u)) << vec4u(4u);
  return Piece(vec4f(nib_lo(q) | ha) * dm.x + dm.y, vec4f(nib_hi(q) | hb) * dm.x + dm.y);
}

//#type q8_0
// Block: d f16, qs int8[32]. x = q * d.
const QK = 32u;
const QB = 34u;
const NP = 4u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return vec2u(8u * p, 8u * p + 4u);
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b);
  let o = b + 2u + 8u * p;
  return Piece(sbytes4(ld32(o)) * d, sbytes4(ld32(o + 4u)) * d);
}

const PH = 4u;

struct Head {
  d: f32,
}

fn head(b: u32, g: u32) -> Head {
  return Head(ldh(b));
}

fn deq_h(b: u32, hd: Head, p: u32) -> Piece {
  let o = b + 2u + 8u * p;
  return Piece(sbytes4(ld32e(o)) * hd.d, sbytes4(ld32e(o + 4u)) * hd.d);
}

//#type iq4_nl
// Block: d f16, qs[16] of indices into a non-linear table. x = d * kvalue.
const QK = 32u;
const QB = 18u;
const NP = 4u;
const TAIL = false;

//#include kvalues4

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b);
  let q = ld32(b + 2u + 4u * p);
  return Piece(kv4(nib_lo(q)) * d, kv4(nib_hi(q)) * d);
}

//#type mxfp4
// Block: e E8M0 scale byte, qs[16] of E2M1 codes. x = kvalue * 2^(e - 128),
// the table (src/gguf/dequant.ts's KVALUES_FP4) holding twice the E2M1 values
// as ggml's does.
const QK = 32u;
const QB = 17u;
const NP = 4u;
const TAIL = false;

//#include kvalues4

fn xoff(p: u32) -> vec2u {
  return xoff_nibbles(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let e = ld8(b);
  // 2^(e-128); e < 2 gives an f32 subnormal, which a GPU may flush to zero.
  let d = bitcast<f32>(select((e - 1u) << 23u, 0x00200000u << e, e < 2u));
  let q = ld32(b + 1u + 4u * p);
  return Piece(fp4x4(nib_lo(q)) * d, fp4x4(nib_hi(q)) * d);
}

const PH = 4u;

struct Head {
  d: f32,
}

fn head(b: u32, g: u32) -> Head {
  let e = ld8(b);
  return Head(bitcast<f32>(select((e - 1u) << 23u, 0x00200000u << e, e < 2u)));
}

// The doubled E2M1 values of four codes computed, not looked up (a lookup
// is a gather per lane on a CPU adapter): magnitude code k = 2e + m (2-bit
// exponent, mantissa bit) is m for e = 0, 2^e (1 + m/2) otherwise, whose f32
// bits are (127 + e) << 23 | m << 22 = (254 + k) << 22; 1.0 is 254 << 22;
// the sign is bit 3.
fn fp4x4_alu(c: vec4u) -> vec4f {
  let k = c & vec4u(7u);
  let mag = select((k + vec4u(254u)) << vec4u(22u), (k * vec4u(254u)) << vec4u(22u), k < vec4u(2u));
  return bitcast<vec4f>(mag | ((c & vec4u(8u)) << vec4u(28u)));
}

fn deq_h(b: u32, hd: Head, p: u32) -> Piece {
  let q = ld32(b + 1u + 4u * p);
  return Piece(fp4x4_alu(nib_lo(q)) * hd.d, fp4x4_alu(nib_hi(q)) * hd.d);
}

//#type q2_k
// Super-block: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d f16, dmin f16.
// Element 128n + 32j + 16k + l = d*sc * ((qs[32n + 16k + l] >> 2j) & 3) - dmin*m,
// with sub-block 8n + 2j + k. Piece p: qs word w = p/2, shifts 4(p%2) and +2.
const QK = 256u;
const QB = 84u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let w = p >> 1u;
  let a = 128u * (w >> 3u) + 64u * (p & 1u) + 16u * ((w >> 2u) & 1u) + 4u * (w & 3u);
  return vec2u(a, a + 32u);
}

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  let w = p >> 1u;
  let j = 2u * (p & 1u);
  let sub = 8u * (w >> 3u) + 2u * j + ((w >> 2u) & 1u);
  let dm = unpack2x16float(W[i + 20u]);
  let sa = (W[i + (sub >> 2u)] >> ((sub & 3u) << 3u)) & 0xffu;
  let sb = (W[i + ((sub + 2u) >> 2u)] >> (((sub + 2u) & 3u) << 3u)) & 0xffu;
  let q = bytes4(W[i + 4u + w]);
  let qa = vec4f((q >> vec4u(2u * j)) & vec4u(3u));
  let qb = vec4f((q >> vec4u(2u * j + 2u)) & vec4u(3u));
  return Piece(
    dm.x * f32(sa & 0xfu) * qa - dm.y * f32(sa >> 4u),
    dm.x * f32(sb & 0xfu) * qb - dm.y * f32(sb >> 4u),
  );
}

//#type q3_k
// Super-block: hmask[32], qs[64], scales[12] (16 six-bit scales), d f16.
// Element 128n + 32j + 16k + l = d*(sc - 32) * (((qs[32n + 16k + l] >> 2j) & 3)
// - (hmask[16k + l] bit 4n + j ? 0 : 4)), with sub-block 8n + 2j + k.
const QK = 256u;
const QB = 110u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let w = p >> 1u;
  let a = 128u * (w >> 3u) + 64u * (p & 1u) + 16u * ((w >> 2u) & 1u) + 4u * (w & 3u);
  return vec2u(a, a + 32u);
}

fn q3_scale(b: u32, s: u32) -> f32 {
  let low = select(ld8(b + 96u + s - 8u) >> 4u, ld8(b + 96u + s) & 0xfu, s < 8u);
  let high = (ld8(b + 104u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
  return f32(i32(low | (high << 4u)) - 32);
}

fn deq(b: u32, p: u32) -> Piece {
  let w = p >> 1u;
  let n = w >> 3u;
  let k = (w >> 2u) & 1u;
  let j = 2u * (p & 1u);
  let sub = 8u * n + 2u * j + k;
  let d = ldh(b + 108u);
  let q = bytes4(ld32(b + 32u + 4u * w));
  let hm = bytes4(ld32(b + 16u * k + 4u * (w & 3u)));
  let ba = 4u * n + j;
  let qa = vec4f((q >> vec4u(2u * j)) & vec4u(3u)) -
    select(vec4f(4.0), vec4f(0.0), ((hm >> vec4u(ba)) & vec4u(1u)) != vec4u(0u));
  let qb = vec4f((q >> vec4u(2u * j + 2u)) & vec4u(3u)) -
    select(vec4f(4.0), vec4f(0.0), ((hm >> vec4u(ba + 1u)) & vec4u(1u)) != vec4u(0u));
  return Piece(d * q3_scale(b, sub) * qa, d * q3_scale(b, sub + 2u) * qb);
}

//#type q4_k
// Super-block: d f16, dmin f16, scales[12] (8 six-bit scales and mins), qs[128].
// Element 64j + l (l < 32): low nibble of qs[32j + l], sub-block 2j; element
// 64j + 32 + l: its high nibble, sub-block 2j + 1. x = d*sc * q - dmin*m.
const QK = 256u;
const QB = 144u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let a = 64u * (p >> 3u) + 4u * (p & 7u);
  return vec2u(a, a + 32u);
}

//#include k_scale_min

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  let j = p >> 3u;
  let m = k_sub_scales(i, j);
  let m1 = m.xy;
  let m2 = m.zw;
  let q = W[i + 4u + p];
  return Piece(m1.x * vec4f(nib_lo(q)) - m1.y, m2.x * vec4f(nib_hi(q)) - m2.y);
}

// Group j: d·scale, dmin·min of the sub-blocks 2j, 2j + 1.
const PH = 8u;

struct Head {
  m: vec4f,
}

fn head(b: u32, j: u32) -> Head {
  return Head(k_sub_scales(b >> 2u, j));
}

fn deq_h(b: u32, hd: Head, p: u32) -> Piece {
  let m = hd.m;
  let q = W[(b >> 2u) + 4u + p];
  return Piece(m.x * vec4f(nib_lo(q)) - m.y, m.z * vec4f(nib_hi(q)) - m.w);
}

//#type q5_k
// Super-block: d f16, dmin f16, scales[12], qh[32], qs[128]. As Q4_K with a
// fifth bit: qh[l] bit 2j for element 64j + l, bit 2j + 1 for 64j + 32 + l.
const QK = 256u;
const QB = 176u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let a = 64u * (p >> 3u) + 4u * (p & 7u);
  return vec2u(a, a + 32u);
}

//#include k_scale_min

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  let j = p >> 3u;
  let m = k_sub_scales(i, j);
  let m1 = m.xy;
  let m2 = m.zw;
  let h = bytes4(W[i + 4u + (p & 7u)]);
  let q = W[i + 12u + p];
  let qa = nib_lo(q) | (((h >> vec4u(2u * j)) & vec4u(1u)) << vec4u(4u));
  let qb = nib_hi(q) | (((h >> vec4u(2u * j + 1u)) & vec4u(1u)) << vec4u(4u));
  return Piece(m1.x * vec4f(qa) - m1.y, m2.x * vec4f(qb) - m2.y);
}

// Group j: d·scale, dmin·min of the sub-blocks 2j, 2j + 1.
const PH = 8u;

struct Head {
  m: vec4f,
}

fn head(b: u32, j: u32) -> Head {
  return Head(k_sub_scales(b >> 2u, j));
}

fn deq_h(b: u32, hd: Head, p: u32) -> Piece {
  let i = b >> 2u;
  let j = p >> 3u;
  let m = hd.m;
  let h = bytes4(W[i + 4u + (p & 7u)]);
  let q = W[i + 12u + p];
  let qa = nib_lo(q) | (((h >> vec4u(2u * j)) & vec4u(1u)) << vec4u(4u));
  let qb = nib_hi(q) | (((h >> vec4u(2u * j + 1u)) & vec4u(1u)) << vec4u(4u));
  return Piece(m.x * vec4f(qa) - m.y, m.z * vec4f(qb) - m.w);
}

//#type q6_k
// Super-block: ql[128], qh[64], scales int8[16], d f16. In half n (128
// elements), for l < 32: elements l, l+32, l+64, l+96 take the low nibble of
// ql[64n+l], the low of ql[64n+l+32], the high of ql[64n+l], the high of
// ql[64n+l+32], and bits 0-1, 2-3, 4-5, 6-7 of qh[32n+l]; scale index
// 8n + l/16 + 0, 2, 4, 6. x = d*sc * (q6 - 32).
// Piece p: n = p/16, h = (p/8)%2 picks ql[64n + 32h + l0 ..], l0 = 4(p%8).
const QK = 256u;
const QB = 210u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let a = 128u * (p >> 4u) + 32u * ((p >> 3u) & 1u) + 4u * (p & 7u);
  return vec2u(a, a + 64u);
}

fn deq(b: u32, p: u32) -> Piece {
  let n = p >> 4u;
  let h = (p >> 3u) & 1u;
  let l0 = 4u * (p & 7u);
  let d = ldh(b + 208u);
  let ql = ld32(b + 64u * n + 32u * h + l0);
  let qh = bytes4(ld32(b + 128u + 32u * n + l0));
  let sa = b + 192u + 8u * n + (l0 >> 4u) + 2u * h;
  let sc = sbytes4(ld8(sa) | (ld8(sa + 4u) << 8u));
  let qa = vec4i(nib_lo(ql) | (((qh >> vec4u(2u * h)) & vec4u(3u)) << vec4u(4u))) - 32;
  let qb = vec4i(nib_hi(ql) | (((qh >> vec4u(2u * h + 4u)) & vec4u(3u)) << vec4u(4u))) - 32;
  return Piece(d * sc.x * vec4f(qa), d * sc.y * vec4f(qb));
}

// Group g = p / 4 (half n, h, l0 / 16 fixed): d times scales
// 8n + l0/16 + 2h and that + 4.
const PH = 4u;

struct Head {
  dsc: vec2f,
}

fn head(b: u32, g: u32) -> Head {
  let n = g >> 2u;
  let sa = b + 192u + 8u * n + (g & 1u) + ((g >> 1u) & 1u) * 2u;
  let sc = sbytes4(ld8(sa) | (ld8(sa + 4u) << 8u));
  return Head(ldh(b + 208u) * sc.xy);
}

fn deq_h(b: u32, hd: Head, p: u32) -> Piece {
  let n = p >> 4u;
  let h = (p >> 3u) & 1u;
  let l0 = 4u * (p & 7u);
  let ql = ld32e(b + 64u * n + 32u * h + l0);
  let qh = ld32e(b + 128u + 32u * n + l0) >> (2u * h);
  // Whole-word bit work, then one shift, mask and conversion per value.
  let qa = (ql & 0x0f0f0f0fu) | ((qh & 0x03030303u) << 4u);
  let qb = ((ql >> 4u) & 0x0f0f0f0fu) | ((qh & 0x30303030u));
  return Piece(hd.dsc.x * (vec4f(bytes4(qa)) - 32.0), hd.dsc.y * (vec4f(bytes4(qb)) - 32.0));
}

// Sections of the types whose code lives in shaders/lib/ (with the grids and
// tables they include, generated from src/gguf/iq_grids.ts).

//#type iq4_xs
//#include iq4_xs

//#type iq2_xxs
//#include iq2_xxs

//#type iq2_xs
//#include iq2_xs

//#type iq2_s
//#include iq2_s

//#type iq3_xxs
//#include iq3_xxs

//#type iq3_s
//#include iq3_s

//#type iq1_s
//#include iq1_s

//#type iq1_m
//#include iq1_m

//#type tq1_0
//#include tq1_0

//#type tq2_0
//#include tq2_0
