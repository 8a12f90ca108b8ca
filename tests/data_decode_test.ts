/**
 * The JPEG decoder against Go's reference decodes (image/testdata, BSD
 * licensed, see tests/fixtures/go-image/LICENSE): every colour model and
 * chroma subsampling, progressive files against their baseline twins, and
 * damaged files reported as DecodeError. With the default decoder
 * (TurboJPEG where installed); data_decode_pil_test.ts tests both decoders
 * against PIL.
 */

import {
  DecodeError,
  decodeImage,
  jpegSize,
  MAX_IMAGE_PIXELS,
  pngSize,
  sniffFormat,
} from "../data/decode.ts";
import { assert } from "./assert.ts";

const FIXTURES = new URL("./fixtures/go-image/", import.meta.url);

function read(name: string): Uint8Array {
  return Deno.readFileSync(new URL(name, FIXTURES));
}

function maxDifference(a: Uint8Array, b: Uint8Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
  }
  return worst;
}

// Go's own image tests allow 8 levels per channel between a JPEG and the
// PNG that Go's decoder wrote for it: IDCT and upsampling rounding differ
// between decoders.
const TOLERANCE = 8;

const REFERENCES: [string, string][] = [
  ["video-001.jpeg", "video-001.png"],
  ["video-001.progressive.jpeg", "video-001.png"],
  ["video-001.cmyk.jpeg", "video-001.cmyk.png"],
  ["video-005.gray.jpeg", "video-005.gray.png"],
  [
    "video-001.progressive.truncated.jpeg",
    "video-001.progressive.truncated.png",
  ],
];

for (const [jpeg, png] of REFERENCES) {
  Deno.test(`decodeImage() of ${jpeg} is within ±${TOLERANCE} of ${png}`, () => {
    const actual = decodeImage(read(jpeg));
    const expected = decodeImage(read(png));
    assert.equal(actual.width, expected.width);
    assert.equal(actual.height, expected.height);
    assert.equal(actual.data.length, actual.width * actual.height * 3);
    const diff = maxDifference(actual.data, expected.data);
    assert.ok(diff <= TOLERANCE, `${jpeg}: max difference ${diff}`);
  });
}

// Go repeats the samples of a subsampled component where libjpeg, and so
// PIL and this decoder, filter them ("fancy" upsampling): in these two
// files Go's pixels differ from libjpeg's by up to 30 and 94 levels at
// colour edges, so only the mean difference is bounded against Go here.
// Their pixels are tested against PIL's in data_decode_pil_test.ts.
const SAMPLES_REPEATED_BY_GO: [string, string, number][] = [
  ["video-001.221212.jpeg", "video-001.221212.png", 1.5],
  ["video-001.rgb.jpeg", "video-001.rgb.png", 5],
];

for (const [jpeg, png, mean] of SAMPLES_REPEATED_BY_GO) {
  Deno.test(`decodeImage() of ${jpeg} is within a mean ${mean} of ${png}`, () => {
    const actual = decodeImage(read(jpeg));
    const expected = decodeImage(read(png));
    assert.equal(actual.width, expected.width);
    assert.equal(actual.height, expected.height);
    let sum = 0;
    for (let i = 0; i < actual.data.length; i++) {
      sum += Math.abs(actual.data[i] - expected.data[i]);
    }
    const diff = sum / actual.data.length;
    assert.ok(diff <= mean, `${jpeg}: mean difference ${diff}`);
  });
}

const TWINS = [
  "video-001.q50.410",
  "video-001.q50.411",
  "video-001.q50.420",
  "video-001.q50.422",
  "video-001.q50.440",
  "video-001.q50.444",
  "video-005.gray.q50",
];

Deno.test("decodeImage() decodes each progressive file exactly as its baseline twin", () => {
  for (const name of TWINS) {
    const baseline = decodeImage(read(`${name}.jpeg`));
    const progressive = decodeImage(read(`${name}.progressive.jpeg`));
    assert.equal(progressive.width, 150, name);
    assert.equal(progressive.height, 103, name);
    assert.equal(maxDifference(progressive.data, baseline.data), 0, name);
  }
});

Deno.test("decodeImage() gives a grey JPEG three equal channels", () => {
  const { data } = decodeImage(read("video-005.gray.jpeg"));
  for (let i = 0; i < data.length; i += 3) {
    assert.ok(data[i] === data[i + 1] && data[i] === data[i + 2]);
  }
});

Deno.test("decodeImage() reports a truncated JPEG instead of decoding grey blocks", () => {
  const whole = read("video-001.jpeg");
  for (const keep of [0.9, 0.5, 0.1]) {
    const cut = whole.subarray(0, Math.floor(whole.length * keep));
    assert.throws(
      () => decodeImage(cut),
      (e: unknown) => e instanceof DecodeError && /truncated/.test(e.message),
    );
  }
});

Deno.test("decodeImage() reports files that are not images", () => {
  const cases: [Uint8Array, RegExp][] = [
    [new TextEncoder().encode("hello, world"), /not a JPEG or PNG/],
    [new Uint8Array(0), /not a JPEG or PNG/],
    [read("video-001.png").subarray(0, 200), /undecodable PNG/],
  ];
  for (const [bytes, pattern] of cases) {
    assert.throws(
      () => decodeImage(bytes),
      (e: unknown) => e instanceof DecodeError && pattern.test(e.message),
    );
  }
});

Deno.test("sniffFormat() goes by the signature, not the name", () => {
  assert.equal(sniffFormat(read("video-001.jpeg")), "jpeg");
  assert.equal(sniffFormat(read("video-001.png")), "png");
  assert.equal(sniffFormat(new Uint8Array([1, 2, 3])), null);
});

Deno.test("decodeImage() decodes the 500x375 photograph fixture", () => {
  const photo = Deno.readFileSync(
    new URL("./fixtures/photo/coffee-500x375.jpg", import.meta.url),
  );
  const image = decodeImage(photo);
  assert.equal(image.width, 500);
  assert.equal(image.height, 375);
  // A real photograph: its pixels span most of the range.
  let low = 255, high = 0;
  for (const v of image.data) {
    low = Math.min(low, v);
    high = Math.max(high, v);
  }
  assert.ok(low < 30 && high > 225, `range ${low}..${high}`);
});

Deno.test("jpegSize() and pngSize() read the sizes the headers announce", () => {
  for (const name of ["video-001.jpeg", "video-001.progressive.jpeg"]) {
    const image = decodeImage(read(name));
    assert.deepEqual(jpegSize(read(name)), {
      width: image.width,
      height: image.height,
    });
  }
  const png = decodeImage(read("video-001.png"));
  assert.deepEqual(pngSize(read("video-001.png")), {
    width: png.width,
    height: png.height,
  });
  assert.equal(jpegSize(new Uint8Array([0xff, 0xd8, 0xff])), null);
  assert.equal(pngSize(new Uint8Array(10)), null);
});

/** A copy of a fixture whose header claims `width` x `height` pixels. */
function lying(name: string, width: number, height: number): Uint8Array {
  const bytes = read(name).slice();
  if (sniffFormat(bytes) === "png") {
    new DataView(bytes.buffer).setUint32(16, width);
    new DataView(bytes.buffer).setUint32(20, height);
    return bytes;
  }
  for (let pos = 2; pos + 9 < bytes.length;) {
    if (bytes[pos + 1] >= 0xc0 && bytes[pos + 1] <= 0xc2) {
      bytes.set([height >> 8, height & 255, width >> 8, width & 255], pos + 5);
      return bytes;
    }
    pos += 2 + ((bytes[pos + 2] << 8) | bytes[pos + 3]);
  }
  throw new Error("no frame header");
}

Deno.test("decodeImage() refuses a header over the pixel budget before decoding", () => {
  // A 9,999 x 9,999 claim made jpeg-js take 1.6 GB and 4 s; refused from the
  // header it costs nothing.
  for (const name of ["video-001.q50.420.jpeg", "video-001.png"]) {
    const t0 = performance.now();
    assert.throws(
      () => decodeImage(lying(name, 9999, 9999)),
      (e: unknown) =>
        e instanceof DecodeError &&
        /^(JPEG|PNG) of 9999x9999 pixels is over the budget of 50 megapixels$/
          .test(e.message),
    );
    assert.ok(performance.now() - t0 < 500, "refused without decoding");
  }
  assert.equal(MAX_IMAGE_PIXELS, 50_000_000);
});
