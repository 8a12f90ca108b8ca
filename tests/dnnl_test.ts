import { runWith } from "./subprocess.ts";
import type { ConvDesc } from "../nn/backend.ts";
import { convShape as shape } from "./conv_desc.ts";
import { CpuBackend, CpuBuffer } from "../cpu/backend.ts";
import { tryDnnl } from "../cpu/dnnl.ts";
import { DnnlConvolutions } from "../cpu/dnnl_conv.ts";
import { Layouts } from "../cpu/layout.ts";
import { Generator } from "../mod.ts";
import { assert } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { conv2dRef, type ConvRefDesc } from "./reference.ts";

const lib = tryDnnl();
/** Appended to test names when oneDNN is missing, so the skip is visible. */
const skipped = lib === null
  ? " (skipped: oneDNN, libdnnl.so.2, is not installed)"
  : "";

/** Shapes chosen to exercise oneDNN's padding, blocking and layouts. */
const SHAPES: [string, ConvDesc][] = [
  ["3x3, batch 1, odd sizes", shape(1, 3, [7, 9], 4, [3, 3], [1, 1], [1, 1])],
  ["3x3 stride 2", shape(2, 5, [7, 9], 6, [3, 3], [2, 2], [1, 1])],
  ["7x7 stride 2 (the stem)", shape(2, 3, [11, 13], 4, [7, 7], [2, 2], [3, 3])],
  ["1x1", shape(3, 5, [7, 9], 4, [1, 1], [1, 1], [0, 0])],
  // oneDNN's right padding is -1 here (the last input row is never read).
  ["1x1 stride 2", shape(2, 5, [8, 10], 6, [1, 1], [2, 2], [0, 0])],
  ["1x3 stride (1, 2)", shape(2, 3, [7, 9], 5, [1, 3], [1, 2], [0, 1])],
  ["3x1 stride (2, 1)", shape(3, 5, [9, 7], 4, [3, 1], [2, 1], [2, 0])],
  ["5x5 stride 3", shape(3, 3, [8, 7], 4, [5, 5], [3, 3], [2, 2])],
  // Channel counts that fill oneDNN's 8- and 16-wide blocks.
  [
    "3x3 stride 2, 16>8 channels",
    shape(2, 16, [7, 7], 8, [3, 3], [2, 2], [1, 1]),
  ],
  ["1x1, 16>32 channels", shape(1, 16, [5, 6], 32, [1, 1], [1, 1], [0, 0])],
];

function refDesc(d: ConvDesc): ConvRefDesc {
  return {
    n: d.n,
    c: d.c,
    h: d.h,
    w: d.w,
    k: d.k,
    r: d.r,
    s: d.s,
    stride: [d.strideH, d.strideW],
    pad: [d.padH, d.padW],
  };
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * The float64 gradients of <conv(x, w), dy>: the convolution is linear in
 * each argument, so dx[i] = <conv(e_i, w), dy> and dw[j] = <conv(x, e_j), dy>
 * exactly, with e_i a unit tensor.
 */
function gradientsRef(
  x: Float64Array,
  w: Float64Array,
  dy: Float64Array,
  d: ConvRefDesc,
): { dx: Float64Array; dw: Float64Array } {
  const unit = (length: number, i: number) => {
    const e = new Float64Array(length);
    e[i] = 1;
    return e;
  };
  const dx = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    dx[i] = dot(conv2dRef(unit(x.length, i), w, null, d), dy);
  }
  const dw = new Float64Array(w.length);
  for (let j = 0; j < w.length; j++) {
    dw[j] = dot(conv2dRef(x, unit(w.length, j), null, d), dy);
  }
  return { dx, dw };
}

/** Scratch that is NaN on every call, so stale or unwritten reads show. */
function poisonedScratch(): (length: number) => Float32Array {
  let buffer = new Float32Array(0);
  return (length) => {
    if (buffer.length < length) buffer = new Float32Array(length);
    buffer.fill(NaN);
    return buffer;
  };
}

/** Float32 sums of up to a few hundred products of values in [-1, 1]. */
const TOLERANCE = { rtol: 1e-5, atol: 2e-5 };

const gen = new Generator(11);
for (const [what, d] of SHAPES) {
  const rd = refDesc(d);
  const x = randomValues(gen, d.n * d.c * d.h * d.w);
  const w = randomValues(gen, d.k * d.c * d.r * d.s);
  const dy = randomValues(gen, d.n * d.k * d.oh * d.ow);
  const [x32, w32, dy32] = [x, w, dy].map((a) => Float32Array.from(a));

  Deno.test({
    name: `oneDNN convolutions match the float64 reference: ${what}${skipped}`,
    ignore: lib === null,
    fn() {
      const convs = new DnnlConvolutions(
        lib!,
        poisonedScratch(),
        new Layouts(lib!),
      );
      // Outputs may come back in a blocked layout: `.data` reads them plain.
      const buf = (a: Float32Array) => new CpuBuffer(a);
      const [xb, wb, dyb] = [x32, w32, dy32].map(buf);
      const y = buf(new Float32Array(dy.length).fill(NaN));
      convs.forward(xb, wb, y, d);
      const yRef = conv2dRef(x, w, null, rd);
      assertClose(y.data, yRef, `${what} forward`, TOLERANCE);

      const { dx: dxRef, dw: dwRef } = gradientsRef(x, w, dy, rd);
      // The references satisfy <conv(x, w), dy> = <x, dx> = <w, dw>.
      const energy = dot(yRef, dy);
      const scale = Math.abs(energy) + 1;
      assert.ok(Math.abs(dot(x, dxRef) - energy) < 1e-9 * scale);
      assert.ok(Math.abs(dot(w, dwRef) - energy) < 1e-9 * scale);

      const dx = buf(new Float32Array(x.length).fill(NaN));
      convs.backwardData(dyb, wb, dx, d);
      assertClose(dx.data, dxRef, `${what} backward data`, TOLERANCE);
      const dw = buf(new Float32Array(w.length).fill(NaN));
      convs.backwardFilter(xb, dyb, dw, d);
      assert.equal(dw.layout, null, "the weights' gradient is OIHW");
      assertClose(dw.raw, dwRef, `${what} backward filter`, TOLERANCE);
      // A second call reuses the cached primitives and memory objects.
      const again = buf(new Float32Array(dy.length).fill(NaN));
      convs.forward(xb, wb, again, d);
      assertClose(again.data, yRef, `${what} forward, second call`, TOLERANCE);
    },
  });
}

Deno.test("CpuBackend chooses an implementation per shape and op, and keeps it", () => {
  const be = new CpuBackend();
  const d = shape(2, 16, [9, 9], 8, [3, 3], [2, 2], [1, 1]);
  const x = randomValues(gen, d.n * d.c * d.h * d.w);
  const w = randomValues(gen, d.k * d.c * d.r * d.s);
  const buffer = (a: Float64Array) => {
    const b = be.alloc(a.length);
    be.write(b, Float32Array.from(a));
    return b;
  };
  const [xb, wb, yb] = [
    buffer(x),
    buffer(w),
    be.alloc(d.n * d.k * d.oh * d.ow),
  ];
  assert.equal(be.convImplementation("forward", d), undefined);
  be.conv2dForward({ x: xb, w: wb, y: yb, desc: d });
  const choice = be.convImplementation("forward", d);
  if (lib === null) assert.equal(choice, "im2col");
  else assert.match(choice ?? "", /^(im2col|oneDNN \S+)$/);
  const yRef = conv2dRef(x, w, null, refDesc(d));
  assertClose(be.read(yb), yRef, "forward after choosing", TOLERANCE);
  be.fill({ y: yb, value: NaN });
  be.conv2dForward({ x: xb, w: wb, y: yb, desc: d });
  assert.equal(be.convImplementation("forward", d), choice);
  assertClose(be.read(yb), yRef, "forward with the choice made", TOLERANCE);
  assert.equal(be.convImplementation("backwardData", d), undefined);
});

const backendModule = new URL("../cpu/backend.ts", import.meta.url).href;
/** Runs one forward convolution and prints the implementation it used. */
const chooseOne = `
import { CpuBackend } from "${backendModule}";
const be = new CpuBackend();
const d = { n: 2, c: 16, h: 9, w: 9, k: 8, r: 3, s: 3, strideH: 1,
  strideW: 1, padH: 1, padW: 1, oh: 9, ow: 9 };
try {
  be.conv2dForward({
    x: be.alloc(2592), w: be.alloc(1152), y: be.alloc(1296), desc: d,
  });
} catch (e) { console.error(e.message); Deno.exit(3); }
console.log(be.convImplementation("forward", d));`;

Deno.test("MEC_CONV=im2col keeps oneDNN out of the convolutions", async () => {
  const r = await runWith({ MEC_CONV: "im2col" }, chooseOne);
  assert.equal(r.stdout.trim(), "im2col", r.stderr);
});

Deno.test({
  name: `MEC_CONV=dnnl sends every convolution to oneDNN${skipped}`,
  ignore: lib === null,
  async fn() {
    const r = await runWith({ MEC_CONV: "dnnl" }, chooseOne);
    assert.match(r.stdout.trim(), /^oneDNN \S+$/, r.stderr);
  },
});

Deno.test("a bad MEC_CONV or a missing MEC_DNNL library is one clear error", async () => {
  const bad = await runWith({ MEC_CONV: "fast" }, chooseOne);
  assert.equal(bad.code, 3);
  assert.match(bad.stderr, /MEC_CONV must be auto, im2col or dnnl, got "fast"/);
  const missing = await runWith(
    { MEC_DNNL: "/nonexistent/libdnnl.so.2" },
    chooseOne,
  );
  assert.equal(missing.code, 3);
  assert.match(
    missing.stderr,
    /MEC_DNNL names "\/nonexistent\/libdnnl.so.2", which could not be loaded; install oneDNN 2.x \(Debian\/Ubuntu package libdnnl2: apt-get install libdnnl2\)/,
  );
});

Deno.test({
  name:
    `by default every convolution runs on oneDNN, the same in every run${skipped}`,
  ignore: lib === null,
  async fn() {
    const r = await runWith({}, chooseOne);
    assert.match(r.stdout.trim(), /^oneDNN \S+$/, r.stderr);
  },
});

Deno.test("MEC_CONV=auto chooses an implementation per shape by timing", async () => {
  const r = await runWith({ MEC_CONV: "auto" }, chooseOne);
  assert.match(
    r.stdout.trim(),
    lib === null ? /^im2col$/ : /^(im2col|oneDNN \S+)$/,
    r.stderr,
  );
});
