/**
 * The fast view path against the slow ones: applyView's WebAssembly
 * kernels bit for bit against the transforms run one by one in TypeScript,
 * and the resampling and the blur against plain float64 loops written
 * from PIL's definitions.
 */

import { decodeImage, type RgbImage } from "../data/decode.ts";
import {
  applyView,
  drawView,
  mecViews,
  probeEvalView,
  probeTrainView,
  type ViewRecipe,
  ViewScratch,
} from "../data/pipelines.ts";
import {
  boxRadiusForSigma,
  colorJitter,
  type FloatImage,
  gaussianBlur,
  grayscale,
  resizedCrop,
  toTensor,
} from "../data/transforms.ts";
import { pretrainViews } from "../tools/views.ts";
import { Generator } from "../nn/random.ts";
import { assert } from "./assert.ts";
import { assertClose } from "./check.ts";

const PHOTO = decodeImage(
  Deno.readFileSync(
    new URL("./fixtures/photo/coffee-500x375.jpg", import.meta.url),
  ),
);

/** The same view through each transform in turn, from the same draws. */
function viewSteps(
  image: RgbImage,
  recipe: ViewRecipe,
  gen: Generator,
): Float32Array {
  const draw = drawView(image, recipe, gen);
  const size = recipe.size;
  const work: FloatImage = {
    width: size,
    height: size,
    data: new Float32Array(size * size * 3),
  };
  resizedCrop(image, draw.crop, work);
  if (draw.jitter !== null) colorJitter(work, draw.jitter);
  if (draw.grey) grayscale(work);
  if (draw.sigma !== null) gaussianBlur(work, draw.sigma);
  return toTensor(
    work,
    undefined,
    0,
    recipe.normalize ?? undefined,
    draw.solarize ? 128 : undefined,
  );
}

/** Indices where two arrays differ as float32 bit patterns. */
function differences(a: Float32Array, b: Float32Array): number[] {
  const bad: number[] = [];
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) bad.push(i);
  return bad;
}

Deno.test("applyView() is bit-identical to the transforms one by one", () => {
  const small: RgbImage = { width: 40, height: 31, data: new Uint8Array(3720) };
  const noise = new Generator(8);
  for (let i = 0; i < small.data.length; i++) {
    small.data[i] = noise.integer(0, 256);
  }
  // A blur wider than MEC's (box radius 2 and more) goes through
  // gaussianBlur on the kernels' memory.
  const wide = { ...mecViews(64)[0], blur: { p: 1, sigma: [2.3, 4] as const } };
  // Small images first, so the kernels' memory grows on the way.
  const cases: [string, RgbImage, ViewRecipe[]][] = [
    ["small 9", small, mecViews(9)],
    ["small 24", small, pretrainViews(24)],
    ["photo 224", PHOTO, [...mecViews(224), probeTrainView(224)]],
    ["photo eval", PHOTO, [probeEvalView(224)]],
    ["photo wide blur", PHOTO, [wide]],
  ];
  let blurred = 0;
  let plain = 0;
  const scratch = new ViewScratch();
  const typescript = new ViewScratch({ wasm: false });
  assert.ok(scratch.kernels !== null, "WebAssembly SIMD is available");
  assert.equal(typescript.kernels, null);
  for (const [what, image, recipes] of cases) {
    for (const [v, recipe] of recipes.entries()) {
      const size = recipe.size;
      const out = new Float32Array(2 * 3 * size * size);
      for (let key = 0; key < 30; key++) {
        applyView(
          image,
          recipe,
          new Generator(1, v, key),
          out,
          3 * size * size,
          scratch,
        );
        const fast = out.subarray(3 * size * size);
        const steps = viewSteps(image, recipe, new Generator(1, v, key));
        const bad = differences(fast, steps);
        assert.equal(
          bad.length,
          0,
          `${what} view ${v} key ${key}: ${bad.length} values differ`,
        );
        // The TypeScript path (no WebAssembly) is the steps themselves.
        const ts = new Float32Array(3 * size * size);
        applyView(image, recipe, new Generator(1, v, key), ts, 0, typescript);
        assert.equal(differences(ts, steps).length, 0, `${what} TypeScript`);
        if (drawView(image, recipe, new Generator(1, v, key)).sigma !== null) {
          blurred++;
        } else plain++;
      }
    }
  }
  // Both paths were exercised: with and without the blur.
  assert.ok(blurred > 60 && plain > 60, `${blurred} blurred, ${plain} not`);
});

/**
 * PIL's Gaussian blur in float64, straight from its definition: per axis,
 * three passes of a box of radius r + a (2r + 1 taps of weight
 * 1 / (2(r + a) + 1) and one more each side of weight a / (2(r + a) + 1)),
 * the image's edge pixels repeated beyond it.
 */
function blurReference(image: FloatImage, sigma: number): Float64Array {
  const { width: w, height: h } = image;
  const radius = boxRadiusForSigma(sigma);
  const r = Math.floor(radius);
  const wInner = 1 / (2 * radius + 1);
  const wEdge = (radius - r) * wInner;
  let cur = Float64Array.from(image.data);
  const at = (x: number, n: number) => Math.min(Math.max(x, 0), n - 1);
  for (let pass = 0; pass < 6; pass++) {
    const next = new Float64Array(cur.length);
    const horizontal = pass < 3;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          const get = (d: number) =>
            horizontal
              ? cur[(y * w + at(x + d, w)) * 3 + c]
              : cur[(at(y + d, h) * w + x) * 3 + c];
          let sum = 0;
          for (let d = -r; d <= r; d++) sum += wInner * get(d);
          sum += wEdge * (get(-r - 1) + get(r + 1));
          next[(y * w + x) * 3 + c] = sum;
        }
      }
    }
    cur = next;
  }
  return cur;
}

Deno.test("gaussianBlur() matches PIL's three extended boxes computed in float64", () => {
  const gen = new Generator(21);
  for (const sigma of [0.1, 0.9, 1.7, 2, 3.7]) {
    const image: FloatImage = {
      width: 23,
      height: 17,
      data: new Float32Array(23 * 17 * 3),
    };
    gen.fillUniform(image.data, 0, 255);
    const expected = blurReference(image, sigma);
    gaussianBlur(image, sigma);
    // Six passes, each rounding values up to 255 to float32 (a relative
    // 6e-8): well under 1e-3 of a level.
    assertClose(image.data, expected, `sigma ${sigma}`, {
      atol: 1e-3,
      rtol: 0,
    });
  }
});

/**
 * PIL's antialiased bilinear resampling in float64, from its definition:
 * output pixel o of a shrink by s = in / out is centred at (o + 0.5) s and
 * takes the input pixels i within max(s, 1) of it with weights
 * max(0, 1 - |i + 0.5 - centre| / max(s, 1)), normalised to sum 1;
 * horizontal first, then vertical.
 */
function resizeReference(
  src: RgbImage,
  box: { top: number; left: number; width: number; height: number },
  outW: number,
  outH: number,
): Float64Array {
  const weights = (inSize: number, outSize: number) =>
    Array.from({ length: outSize }, (_, o) => {
      const s = inSize / outSize;
      const support = Math.max(s, 1);
      const centre = (o + 0.5) * s;
      const taps: [number, number][] = [];
      const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
      const hi = Math.min(Math.trunc(centre + support + 0.5), inSize);
      for (let i = lo; i < hi; i++) {
        taps.push([i, Math.max(0, 1 - Math.abs(i + 0.5 - centre) / support)]);
      }
      const total = taps.reduce((t, [, w]) => t + w, 0);
      return taps.map(([i, w]) => [i, w / total] as [number, number]);
    });
  const cols = weights(box.width, outW);
  const rows = weights(box.height, outH);
  const mid = new Float64Array(box.height * outW * 3);
  for (let y = 0; y < box.height; y++) {
    for (let x = 0; x < outW; x++) {
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (const [i, w] of cols[x]) {
          sum += w *
            src.data[((box.top + y) * src.width + box.left + i) * 3 + c];
        }
        mid[(y * outW + x) * 3 + c] = sum;
      }
    }
  }
  const out = new Float64Array(outH * outW * 3);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (const [i, w] of rows[y]) sum += w * mid[(i * outW + x) * 3 + c];
        out[(y * outW + x) * 3 + c] = sum;
      }
    }
  }
  return out;
}

Deno.test("resizedCrop() matches PIL's antialiased bilinear resampling computed in float64", () => {
  const boxes = [
    { top: 0, left: 0, width: 500, height: 375 }, // shrink by 2.2 and 1.7
    { top: 40, left: 70, width: 301, height: 257 },
    { top: 100, left: 200, width: 90, height: 60 }, // enlarge
    { top: 5, left: 7, width: 1, height: 1 },
    { top: 10, left: 10, width: 449, height: 224 }, // five taps, one tap
  ];
  for (const box of boxes) {
    for (const [w, h] of [[224, 224], [97, 131]]) {
      const out: FloatImage = {
        width: w,
        height: h,
        data: new Float32Array(w * h * 3),
      };
      resizedCrop(PHOTO, { box, resizeWidth: w, resizeHeight: h }, out);
      // Float32 weights and sums: a relative 1e-6 of values up to 255.
      assertClose(
        out.data,
        resizeReference(PHOTO, box, w, h),
        `${JSON.stringify(box)} to ${w}x${h}`,
        { atol: 1e-3, rtol: 0 },
      );
    }
  }
});

Deno.test("pretrainViews() takes --min-scale into both crops and keeps the rest of the recipe", () => {
  const base = pretrainViews(28);
  const wide = pretrainViews(28, 0.08);
  assert.equal(wide.length, 2);
  for (const [i, v] of wide.entries()) {
    assert.ok(v.crop.kind === "random-resized");
    assert.deepEqual(v.crop.scale, [0.08, 1]);
    assert.deepEqual(
      { ...v, crop: null },
      { ...base[i], crop: null },
      "only the crop changes",
    );
  }
  const b = base[0].crop;
  assert.ok(b.kind === "random-resized");
  assert.deepEqual(b.scale, [0.2, 1]);
  const large = pretrainViews(224, 0.5)[1].crop;
  assert.ok(large.kind === "random-resized");
  assert.deepEqual(large.scale, [0.5, 1]);
});
