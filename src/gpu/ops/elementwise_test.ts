import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import {
  addId,
  compareArrays,
  geglu,
  gelu,
  makeRng,
  randomArray,
  silu,
  swiglu,
  swigluOai,
} from "./cpu_ref.ts";
import {
  bindFrom,
  prepareAdd,
  prepareAddBias,
  prepareAddId,
  prepareCopy,
  prepareGeglu,
  prepareGelu,
  prepareScale,
  prepareSilu,
  prepareSwiglu,
} from "./elementwise.ts";
import { type Op, recordOps } from "./op.ts";
import { gpuTest } from "../../../dev/gpu.ts";

const f = Math.fround;

gpuTest({
  name: "elementwise: add, bias, scale, copy, silu, gelu, swiglu (+oai), geglu match the CPU",
  async fn(g) {
    const rng = makeRng(5);
    const T = 3, n = 70;
    // Inputs live at an offset inside padded rows, as in a fused projection output.
    const stride = 75, off = 2;
    const dense = (a: Float32Array) => {
      const out = new Float32Array(T * n);
      for (let t = 0; t < T; t++) {
        out.set(a.subarray(off + t * stride, off + t * stride + n), t * n);
      }
      return out;
    };
    const mk = (label: string, scale: number) => {
      const data = randomArray(off + T * stride, rng, scale);
      return { data, buf: createBuffer(g, { label, data }), view: { offset: off, stride } };
    };
    const a = mk("a", 12); // wide enough to hit gelu's ±10 branches and the oai clamps
    const b = mk("b", 9);
    const bias = randomArray(n, rng);
    const biasBuf = createBuffer(g, { label: "bias", data: new Float32Array([9, 9, ...bias]) });
    const A = dense(a.data), B = dense(b.data);
    const out = (label: string) => createBuffer(g, { label, size: T * n * 4 });
    const outView = (buffer: GPUBuffer) => ({ buffer, offset: 0, stride: n });
    const av = { buffer: a.buf, ...a.view }, bv = { buffer: b.buf, ...b.view };

    const cases: { name: string; op: Promise<Op>; out: GPUBuffer; want: Float32Array }[] = [];
    const add = (name: string, make: (y: GPUBuffer) => Promise<Op>, want: Float32Array) => {
      const y = out(name);
      cases.push({ name, op: make(y), out: y, want });
    };
    add(
      "add",
      (y) => prepareAdd(g, { a: av, b: bv, out: outView(y), n, label: "add" }),
      A.map((v, i) => f(v + B[i]!)),
    );
    add(
      "bias",
      (y) =>
        prepareAddBias(g, {
          x: av,
          y: outView(y),
          bias: { buffer: biasBuf, offset: 2 },
          n,
          label: "bias",
        }),
      A.map((v, i) => f(v + bias[i % n]!)),
    );
    add(
      "scale",
      (y) => prepareScale(g, { x: av, y: outView(y), scale: 0.37, n, label: "scale" }),
      A.map((v) => f(v * f(0.37))),
    );
    add("copy", (y) => prepareCopy(g, { x: av, y: outView(y), n, label: "copy" }), A);
    add("silu", (y) => prepareSilu(g, { x: av, y: outView(y), n, label: "silu" }), A.map(silu));
    add("gelu", (y) => prepareGelu(g, { x: av, y: outView(y), n, label: "gelu" }), A.map(gelu));
    add(
      "swiglu",
      (y) => prepareSwiglu(g, { gate: av, up: bv, out: outView(y), n, label: "swiglu" }),
      swiglu(A, B),
    );
    add(
      "swiglu_oai",
      (y) =>
        prepareSwiglu(g, {
          gate: av,
          up: bv,
          out: outView(y),
          n,
          oai: { alpha: 1.702, limit: 7 },
          label: "swiglu_oai",
        }),
      swigluOai(A, B, 1.702, 7),
    );
    add(
      "geglu",
      (y) => prepareGeglu(g, { gate: av, up: bv, out: outView(y), n, label: "geglu" }),
      geglu(A, B),
    );
    const ops = await Promise.all(cases.map((c) => c.op));
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const outs = await readback(g, cases.map((c) => c.out));
    cases.forEach((c, i) => {
      // gelu's output is an f16 value: a last-bit difference before rounding can move it by
      // one f16 step (2^-11 relative).
      const rtol = c.name.includes("gelu") || c.name === "geglu" ? 1e-3 : 4e-6;
      const r = compareArrays(new Float32Array(outs[i]!), c.want, 1e-6, rtol);
      assert.ok(r.ok, `${c.name}: ${r.message}`);
    });
    // The variants differ where they should (a kernel that ignored `oai` would pass for
    // small inputs otherwise).
    assert.ok(!compareArrays(swiglu(A, B), swigluOai(A, B, 1.702, 7), 1e-3).ok);
  },
});

gpuTest({
  name: "elementwise: in place (y += bias, swiglu over the gate) and fixedTokens",
  async fn(g) {
    const rng = makeRng(6);
    const T = 4, n = 33;
    const x = randomArray(T * n, rng), u = randomArray(T * n, rng), bias = randomArray(n, rng);
    const xb = createBuffer(g, { label: "x", data: x });
    const ub = createBuffer(g, { label: "u", data: u });
    const gb = createBuffer(g, { label: "g", data: x });
    const view = (buffer: GPUBuffer) => ({ buffer, offset: 0, stride: n });
    const ops = [
      await prepareAddBias(g, {
        y: view(xb),
        bias: createBuffer(g, { label: "b", data: bias }),
        n,
        label: "bias",
      }),
      await prepareSwiglu(g, {
        gate: view(gb),
        up: view(ub),
        out: view(gb),
        n,
        label: "sw",
        fixedTokens: 1,
      }),
    ];
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const [gotX, gotG] = (await readback(g, [xb, gb])).map((b) => new Float32Array(b));
    assert.ok(compareArrays(gotX!, x.map((v, i) => f(v + bias[i % n]!)), 1e-6, 1e-6).ok);
    const wantG = x.slice();
    wantG.set(swiglu(x.subarray(0, n), u.subarray(0, n)));
    const r = compareArrays(gotG!, wantG, 1e-6, 4e-6);
    assert.ok(r.ok, r.message);
  },
});

gpuTest({
  name: "elementwise: add_id adds each expert's own bias row (GPT-OSS expert biases)",
  async fn(g) {
    const rng = makeRng(14);
    const T = 3, k = 2, n = 70, nExpert = 5;
    const x = randomArray(T * k * n, rng), bias = randomArray(nExpert * n, rng);
    const ids = Uint32Array.from({ length: T * k }, () => Math.floor(rng() * nExpert));
    const y = createBuffer(g, { label: "y", size: x.byteLength });
    const op = await prepareAddId(g, {
      x: { buffer: createBuffer(g, { label: "x", data: x }), offset: 0, stride: k * n },
      y: { buffer: y, offset: 0, stride: k * n },
      bias: createBuffer(g, { label: "bias", data: bias }),
      ids: { buffer: createBuffer(g, { label: "ids", data: ids }), offset: 0, stride: k },
      k,
      n,
      label: "add_id",
    });
    const enc = g.device.createCommandEncoder();
    recordOps(enc, [op], T);
    g.submit(enc);
    const got = new Float32Array((await readback(g, [y]))[0]!);
    assert.deepEqual(got, addId(x, bias, ids, n));
  },
});

gpuTest({
  name: "elementwise: bindFrom binds from an aligned base and refuses ranges past the buffer",
  fn(g) {
    const align = g.limits.minStorageBufferOffsetAlignment;
    const buf = createBuffer(g, { label: "big", size: 4 * align });
    const at = bindFrom(g, buf, align / 4 + 3);
    assert.equal(at.offset, 3);
    assert.ok("buffer" in at.binding && at.binding.offset === align);
    assert.throws(() => bindFrom(g, buf, 0, align + 1), /outside buffer "big"/);
  },
});
