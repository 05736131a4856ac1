// kvalues4: the 16-entry value tables of IQ4_NL/IQ4_XS and MXFP4, looked up
// in the table buffer QT (a WGSL constant array indexed at run time is copied
// per lookup by some compilers: 15x slower decode on llvmpipe).

// kv4(n): the IQ4 non-linear values of the four nibbles n.
fn kv4(n: vec4u) -> vec4f {
  let o = vec4u(QT_KVALUES_IQ4) + n;
  return bitcast<vec4f>(vec4u(QT[o.x], QT[o.y], QT[o.z], QT[o.w]));
}

// fp4x4(n): the doubled E2M1 values of the four nibbles n.
fn fp4x4(n: vec4u) -> vec4f {
  let o = vec4u(QT_KVALUES_FP4) + n;
  return bitcast<vec4f>(vec4u(QT[o.x], QT[o.y], QT[o.z], QT[o.w]));
}
