/**
 * The transforms against their definitions: exact geometry, the crop
 * sampler's bounds, the colour formulas, normalisation, and the pipelines'
 * determinism.
 */

import { decodeImage, type RgbImage } from "../data/decode.ts";
import {
  applyView,
  mecViews,
  probeEvalView,
  probeTrainView,
  ViewScratch,
} from "../data/pipelines.ts";
import {
  adjustHue,
  centerCropBox,
  colorJitter,
  colorJitterParams,
  type FloatImage,
  gaussianBlur,
  grayscale,
  hflip,
  IMAGENET_NORMALIZE,
  randomResizedCropBox,
  resizedCrop,
  resizeShorterSize,
  roundHalfEven,
  solarize,
  toTensor,
} from "../data/transforms.ts";
import { Generator } from "../nn/random.ts";
import { assert } from "./assert.ts";
import { assertClose } from "./check.ts";

const PHOTO = decodeImage(
  Deno.readFileSync(
    new URL("./fixtures/photo/coffee-500x375.jpg", import.meta.url),
  ),
);

function floatImage(width: number, height: number): FloatImage {
  return { width, height, data: new Float32Array(width * height * 3) };
}

function randomFloatImage(gen: Generator, width: number, height: number) {
  const image = floatImage(width, height);
  gen.fillUniform(image.data, 0, 255);
  return image;
}

function whole(image: RgbImage) {
  return { top: 0, left: 0, width: image.width, height: image.height };
}

Deno.test("resizedCrop() to the same size is the identity", () => {
  const out = resizedCrop(
    PHOTO,
    { box: whole(PHOTO), resizeWidth: 500, resizeHeight: 375 },
    floatImage(500, 375),
  );
  assert.deepEqual(Array.from(out.data), Array.from(PHOTO.data));
});

Deno.test("resizedCrop() with flip is exactly the mirror image", () => {
  const box = { top: 40, left: 70, width: 301, height: 257 };
  for (const size of [224, 97, 400]) {
    const spec = { box, resizeWidth: size, resizeHeight: size };
    const plain = resizedCrop(PHOTO, spec, floatImage(size, size));
    const flipped = resizedCrop(
      PHOTO,
      { ...spec, flip: true },
      floatImage(size, size),
    );
    assert.deepEqual(Array.from(hflip(plain).data), Array.from(flipped.data));
  }
});

Deno.test("hflip() twice is the identity", () => {
  const image = randomFloatImage(new Generator(1), 7, 5);
  const before = Array.from(image.data);
  assert.deepEqual(Array.from(hflip(hflip(image)).data), before);
});

Deno.test("resizedCrop() keeps a constant image constant and a crop's values", () => {
  const flat: RgbImage = {
    width: 50,
    height: 40,
    data: new Uint8Array(50 * 40 * 3).fill(77),
  };
  for (const size of [8, 33, 120]) {
    const out = resizedCrop(
      flat,
      {
        box: { top: 3, left: 5, width: 41, height: 30 },
        resizeWidth: size,
        resizeHeight: size,
      },
      floatImage(size, size),
    );
    assertClose(
      out.data,
      new Float32Array(out.data.length).fill(77),
      "constant",
      {
        rtol: 1e-6,
        atol: 0,
      },
    );
  }
});

Deno.test("randomResizedCropBox() respects the scale and ratio bounds over many draws", () => {
  const gen = new Generator(7);
  const scale = [0.2, 1] as const;
  const ratio = [3 / 4, 4 / 3] as const;
  for (const [w, h] of [[500, 375], [375, 500], [224, 224], [1000, 120]]) {
    let fallbacks = 0;
    for (let n = 0; n < 2000; n++) {
      const box = randomResizedCropBox(gen, w, h, { scale, ratio });
      assert.ok(box.left >= 0 && box.top >= 0, JSON.stringify(box));
      assert.ok(box.left + box.width <= w && box.top + box.height <= h);
      const area = (box.width * box.height) / (w * h);
      const aspect = box.width / box.height;
      // Rounding the sides to whole pixels moves area and ratio by up to a
      // pixel's worth: one pixel over the side length each way.
      const slack = 1 / Math.min(box.width, box.height);
      const central = box.left === Math.floor((w - box.width) / 2) &&
        box.top === Math.floor((h - box.height) / 2) &&
        (box.width === w || box.height === h);
      if (
        area >= scale[0] * (1 - 2 * slack) && area <= 1 &&
        aspect >= ratio[0] * (1 - 2 * slack) &&
        aspect <= ratio[1] * (1 + 2 * slack)
      ) continue;
      assert.ok(
        central,
        `box ${JSON.stringify(box)} of ${w}x${h} is out of bounds`,
      );
      fallbacks++;
    }
    if (w / h <= ratio[1]) assert.equal(fallbacks, 0, `${w}x${h}`);
  }
});

Deno.test("randomResizedCropBox() falls back to the central crop clamped to the ratio", () => {
  // No 0.9..1 area crop of a 1000x100 image has a ratio near 1.
  const box = randomResizedCropBox(new Generator(3), 1000, 100, {
    scale: [0.9, 1],
    ratio: [0.75, 4 / 3],
  });
  assert.deepEqual(box, { top: 0, left: 433, width: 133, height: 100 });
});

Deno.test("Resize and CenterCrop sizes and boxes round as torchvision does", () => {
  assert.deepEqual(resizeShorterSize(500, 375, 256), {
    width: 341,
    height: 256,
  });
  assert.deepEqual(resizeShorterSize(375, 500, 256), {
    width: 256,
    height: 341,
  });
  assert.deepEqual(centerCropBox(341, 256, 224), {
    top: 16,
    left: 58,
    width: 224,
    height: 224,
  });
  // (225 - 224) / 2 = 0.5 rounds to the even 0, as Python's round.
  assert.deepEqual(centerCropBox(225, 225, 224), {
    top: 0,
    left: 0,
    width: 224,
    height: 224,
  });
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(-0.5), -0);
  assert.equal(roundHalfEven(1.2), 1);
});

Deno.test("grayscale() is ITU-R 601-2 luma in every channel", () => {
  const image = randomFloatImage(new Generator(2), 9, 4);
  const before = Float32Array.from(image.data);
  grayscale(image);
  const expected = new Float32Array(before.length);
  for (let i = 0; i < before.length; i += 3) {
    const l = (299 * before[i] + 587 * before[i + 1] + 114 * before[i + 2]) /
      1000;
    expected.fill(l, i, i + 3);
  }
  assertClose(image.data, expected, "grayscale", { rtol: 1e-6, atol: 0 });
});

Deno.test("solarize() inverts exactly the values at or above 128", () => {
  const image = floatImage(256, 1);
  for (let v = 0; v < 256; v++) image.data.fill(v, 3 * v, 3 * v + 3);
  solarize(image);
  for (let v = 0; v < 256; v++) {
    assert.equal(image.data[3 * v], v < 128 ? v : 255 - v);
  }
});

Deno.test("toTensor() scales to [0, 1] in CHW and normalises per channel", () => {
  const image = floatImage(2, 1);
  image.data.set([0, 128, 255, 51, 102, 204]);
  assertClose(toTensor(image), [
    0,
    51 / 255,
    128 / 255,
    102 / 255,
    1,
    204 / 255,
  ], "CHW");
  const { mean, std } = IMAGENET_NORMALIZE;
  const expected = [0, 51, 128, 102, 255, 204].map((v, i) => {
    const c = Math.floor(i / 2);
    return (v / 255 - mean[c]) / std[c];
  });
  const out = new Float32Array(10);
  toTensor(image, out, 4, IMAGENET_NORMALIZE);
  assertClose(out.subarray(4), expected, "normalised");
  assert.deepEqual(Array.from(out.subarray(0, 4)), [0, 0, 0, 0]);
  // Solarize folded into the same pass.
  assertClose(
    toTensor(image, undefined, 0, undefined, 128),
    [0, 51 / 255, 127 / 255, 102 / 255, 0, 51 / 255],
    "solarized",
  );
});

Deno.test("gaussianBlur() preserves a constant image and the mean of any image", () => {
  for (const sigma of [0.1, 0.7, 1.3, 2, 3.5]) {
    const flat = floatImage(31, 17);
    flat.data.fill(93);
    gaussianBlur(flat, sigma);
    assertClose(
      flat.data,
      new Float32Array(flat.data.length).fill(93),
      `sigma ${sigma}`,
      {
        rtol: 1e-5,
        atol: 0,
      },
    );
  }
  // Away from the edges a blur moves no mass: a single bright pixel in the
  // middle spreads out but keeps its sum, and spreads symmetrically.
  const dot = floatImage(41, 41);
  dot.data.fill(100, (20 * 41 + 20) * 3, (20 * 41 + 20) * 3 + 3);
  gaussianBlur(dot, 2);
  let sum = 0, momentX = 0;
  for (let y = 0; y < 41; y++) {
    for (let x = 0; x < 41; x++) {
      const v = dot.data[(y * 41 + x) * 3];
      sum += v;
      momentX += v * (x - 20) * (x - 20);
    }
  }
  assertClose([sum], [100], "mass", { rtol: 1e-5 });
  // Three extended boxes have exactly the requested variance.
  assertClose([momentX / sum], [4], "variance", { rtol: 1e-4 });
});

Deno.test("colorJitter() with zero strength is the identity", () => {
  const gen = new Generator(4);
  const image = randomFloatImage(gen, 16, 12);
  const before = Array.from(image.data);
  for (let n = 0; n < 10; n++) {
    colorJitter(image, colorJitterParams(gen, {}));
  }
  assert.deepEqual(Array.from(image.data), before);
});

Deno.test("colorJitterParams() draws factors in torchvision's ranges and every order", () => {
  const gen = new Generator(5);
  const orders = new Set<string>();
  for (let n = 0; n < 500; n++) {
    const p = colorJitterParams(gen, {
      brightness: 0.4,
      contrast: 0.4,
      saturation: 0.2,
      hue: 0.1,
    });
    assert.ok(p.brightness >= 0.6 && p.brightness <= 1.4);
    assert.ok(p.contrast >= 0.6 && p.contrast <= 1.4);
    assert.ok(p.saturation >= 0.8 && p.saturation <= 1.2);
    assert.ok(p.hue >= -0.1 && p.hue <= 0.1);
    orders.add(p.order.join(""));
  }
  assert.equal(orders.size, 24);
});

Deno.test("adjustHue() rotates round the colour circle", () => {
  const image = floatImage(3, 1);
  image.data.set([255, 0, 0, 200, 100, 50, 80, 80, 80]);
  adjustHue(image, 1 / 3);
  // Red turns green; a grey pixel has no hue and stays.
  assertClose(image.data.subarray(0, 3), [0, 255, 0], "red", { atol: 1e-5 });
  assertClose(image.data.subarray(6), [80, 80, 80], "grey");
  const again = randomFloatImage(new Generator(6), 10, 10);
  const before = Float32Array.from(again.data);
  adjustHue(again, 0.25);
  adjustHue(again, -0.25);
  assertClose(again.data, before, "there and back", { atol: 1e-4 });
});

Deno.test("applyView() depends only on the generator's keys", () => {
  const [view1, view2] = mecViews(64);
  for (const recipe of [view1, view2, probeTrainView(64), probeEvalView(64)]) {
    const a = new Float32Array(3 * 64 * 64);
    const b = new Float32Array(3 * 64 * 64);
    applyView(PHOTO, recipe, new Generator(9, 2, 5), a, 0, new ViewScratch());
    applyView(PHOTO, recipe, new Generator(9, 2, 5), b, 0, new ViewScratch());
    assert.deepEqual(a, b);
    for (const v of a) assert.ok(Number.isFinite(v));
  }
});

Deno.test("probeEvalView() is Resize(256) then CenterCrop(224) of the photo", () => {
  const out = new Float32Array(3 * 224 * 224);
  applyView(PHOTO, probeEvalView(224), new Generator(0), out, 0);
  // The same through the unfused steps: the whole resize, then the crop.
  const resized = resizedCrop(
    PHOTO,
    { box: whole(PHOTO), resizeWidth: 341, resizeHeight: 256 },
    floatImage(341, 256),
  );
  const cropped = floatImage(224, 224);
  for (let y = 0; y < 224; y++) {
    const from = ((16 + y) * 341 + 58) * 3;
    cropped.data.set(resized.data.subarray(from, from + 224 * 3), y * 224 * 3);
  }
  assertClose(
    out,
    toTensor(cropped, undefined, 0, IMAGENET_NORMALIZE),
    "eval view",
    {
      rtol: 1e-5,
      atol: 1e-6,
    },
  );
});
