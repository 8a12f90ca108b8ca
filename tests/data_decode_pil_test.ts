/**
 * Both JPEG decoders against PIL, which torchvision's ImageFolder decodes
 * with (`Image.open(f).convert("RGB")`): the references in
 * tests/fixtures/pil/ were written by Debian's python3-pil 9.4 on
 * libjpeg-turbo 2.1.5 (make_references.py), from real photographs
 * (tests/fixtures/photo/, CC0, and Go's test images): 4:2:0, 4:2:2, 4:4:4,
 * 4:4:0, 4:1:1, 4:1:0, progressive, greyscale, CMYK, YCCK, Adobe RGB, restart
 * markers, odd sizes. TurboJPEG on the same libjpeg-turbo must give PIL's
 * pixels exactly; jpeg-js with libjpeg's upsampling and colour conversion
 * within a few levels. Then hostile files, the library's discovery, and the
 * loader with either decoder.
 */

import { join } from "node:path";
import {
  DecodeError,
  decodeImage,
  DecodeScratch,
  type JpegDecoder,
  resolveJpegDecoder,
} from "../data/decode.ts";
import { imageFolder } from "../data/folder.ts";
import { type Batch, DataLoader, formatEpochSummary } from "../data/loader.ts";
import { mecViews } from "../data/pipelines.ts";
import { turboJpeg, turboJpegMissing } from "../data/turbojpeg.ts";
import { assert } from "./assert.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const ROOT = new URL("../", import.meta.url);

interface Reference {
  mode: string;
  png: string;
}

const references: Record<string, Reference> = JSON.parse(
  Deno.readTextFileSync(new URL("pil/references.json", FIXTURES)),
).files;

function read(path: string): Uint8Array {
  return Deno.readFileSync(new URL(path, FIXTURES));
}

/** Largest and per-channel mean absolute difference of two RGB images. */
function difference(a: Uint8Array, b: Uint8Array): {
  max: number;
  mean: number[];
} {
  let max = 0;
  const sum = [0, 0, 0];
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > max) max = d;
    sum[i % 3] += d;
  }
  return { max, mean: sum.map((s) => s / (a.length / 3)) };
}

const noTurbo = turboJpeg() === null;
if (noTurbo) console.error(`TurboJPEG tests skipped: ${turboJpegMissing()}`);

// jpeg-js's IDCT (poppler's, rounded differently from libjpeg's accurate
// integer one) moves single samples by a level or two, which colour
// conversion and upsampling can add to: the bound, ±4 and a mean of
// at most 0.6 per channel. Measured: at most 4, means at most 0.33. With
// pixels repeated instead of filtered, 4:2:0 files were up to 74 off.
const JPEG_JS_MAX = 4;
const JPEG_JS_MEAN = 0.6;

Deno.test("the PIL references cover every kind of JPEG the issue lists", () => {
  const names = Object.keys(references);
  assert.ok(names.length >= 25, `${names.length} references`);
  for (
    const kind of [
      "420",
      "422",
      "444",
      "440",
      "progressive",
      "gray",
      "cmyk",
      "ycck",
      "restart",
      "rgb",
      "5x3",
    ]
  ) {
    assert.ok(names.some((n) => n.includes(kind)), kind);
  }
  assert.deepEqual(
    new Set(Object.values(references).map((r) => r.mode)),
    new Set(["RGB", "L", "CMYK"]),
  );
});

for (const [file, { png }] of Object.entries(references)) {
  Deno.test({
    name: `TurboJPEG decodes ${file} exactly as PIL`,
    ignore: noTurbo,
    fn: () => {
      const expected = decodeImage(read(`pil/${png}`));
      const actual = decodeImage(read(file), { jpeg: "turbojpeg" });
      assert.equal(actual.width, expected.width);
      assert.equal(actual.height, expected.height);
      const { max } = difference(actual.data, expected.data);
      assert.equal(max, 0, `${file}: max difference ${max}`);
    },
  });

  Deno.test(`jpeg-js decodes ${file} within ±${JPEG_JS_MAX} of PIL, mean ≤ ${JPEG_JS_MEAN}`, () => {
    const expected = decodeImage(read(`pil/${png}`));
    const actual = decodeImage(read(file), { jpeg: "jpeg-js" });
    assert.equal(actual.width, expected.width);
    assert.equal(actual.height, expected.height);
    const { max, mean } = difference(actual.data, expected.data);
    assert.ok(max <= JPEG_JS_MAX, `${file}: max difference ${max}`);
    for (const m of mean) {
      assert.ok(m <= JPEG_JS_MEAN, `${file}: mean difference ${mean}`);
    }
  });
}

const DECODERS: JpegDecoder[] = noTurbo
  ? ["jpeg-js"]
  : ["turbojpeg", "jpeg-js"];

/** A copy of a JPEG whose frame header claims `width` x `height` pixels. */
function claiming(bytes: Uint8Array, width: number, height: number) {
  const out = bytes.slice();
  for (let pos = 2; pos + 9 < out.length;) {
    if (out[pos + 1] >= 0xc0 && out[pos + 1] <= 0xc2) {
      out.set([height >> 8, height & 255, width >> 8, width & 255], pos + 5);
      return out;
    }
    pos += 2 + ((out[pos + 2] << 8) | out[pos + 3]);
  }
  throw new Error("no frame header");
}

const photo = read("photo/coffee-420-333x249.jpg");

Deno.test("both decoders report hostile files as DecodeError without allocating", () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["truncated", photo.subarray(0, photo.length * 0.6), /truncated JPEG/],
    ["zero bytes", new Uint8Array(0), /not a JPEG or PNG/],
    ["JPEG signature only", photo.subarray(0, 3), /truncated JPEG/],
    [
      "65,000 x 65,000 header",
      claiming(photo, 65000, 65000),
      /^JPEG of 65000x65000 pixels is over the budget of 50 megapixels$/,
    ],
  ];
  for (const jpeg of DECODERS) {
    for (const [what, bytes, pattern] of cases) {
      const t0 = performance.now();
      const rss0 = Deno.memoryUsage().rss;
      assert.throws(
        () => decodeImage(bytes, { jpeg }),
        (e: unknown) => e instanceof DecodeError && pattern.test(e.message),
        `${jpeg}: ${what}`,
      );
      // 65,000 x 65,000 RGB would be 12.7 GB: refused from the header.
      assert.ok(performance.now() - t0 < 500, `${jpeg}: ${what} is quick`);
      assert.ok(Deno.memoryUsage().rss - rss0 < 200e6, `${jpeg}: ${what}`);
    }
  }
});

/** A copy of `bytes` with junk before its frame header, which libjpeg skips. */
function junkBeforeFrame(bytes: Uint8Array): Uint8Array {
  for (let pos = 2; pos + 9 < bytes.length;) {
    if (bytes[pos + 1] >= 0xc0 && bytes[pos + 1] <= 0xc2) {
      return Uint8Array.from([
        ...bytes.subarray(0, pos),
        0x00,
        0x11,
        0x22,
        ...bytes.subarray(pos),
      ]);
    }
    pos += 2 + ((bytes[pos + 2] << 8) | bytes[pos + 3]);
  }
  throw new Error("no frame header");
}

Deno.test("a 65,000 x 65,000 header that only libjpeg finds is refused before decoding", () => {
  // The header walk before decoding stops at the junk; libjpeg skips it
  // (with a warning) and reads the claim, which is checked before any
  // pixel is allocated.
  const bytes = junkBeforeFrame(claiming(photo, 65000, 65000));
  for (const jpeg of DECODERS) {
    const t0 = performance.now();
    const rss0 = Deno.memoryUsage().rss;
    assert.throws(
      () => decodeImage(bytes, { jpeg }),
      (e: unknown) =>
        e instanceof DecodeError &&
        (jpeg === "jpeg-js" || /65000x65000 pixels is over/.test(e.message)),
      jpeg,
    );
    assert.ok(performance.now() - t0 < 500, jpeg);
    assert.ok(Deno.memoryUsage().rss - rss0 < 200e6, jpeg);
  }
  // The same junk before an honest header: TurboJPEG decodes it as PIL does.
  if (!noTurbo) {
    const image = decodeImage(junkBeforeFrame(photo), { jpeg: "turbojpeg" });
    const expected = decodeImage(photo, { jpeg: "turbojpeg" });
    assert.deepEqual(image.data, expected.data);
  }
});

Deno.test("jpeg-js's subsampled files agree with PIL as closely as its 4:4:4 file", () => {
  // The same 333x249 crop at 4:4:4, 4:2:2 and 4:2:0: with libjpeg's
  // triangle filter the subsampled ones add almost nothing to the IDCT's
  // differences (measured: 0.156 against 0.145 levels on average).
  const mean = (name: string) => {
    const file = `photo/coffee-${name}-333x249.jpg`;
    const actual = decodeImage(read(file), { jpeg: "jpeg-js" });
    const expected = decodeImage(read(`pil/${references[file].png}`));
    return difference(actual.data, expected.data).mean;
  };
  const full = mean("444");
  for (const name of ["422", "420"]) {
    mean(name).forEach((m, c) => {
      assert.ok(
        m <= 1.25 * full[c],
        `${name} channel ${c}: ${m} vs ${full[c]}`,
      );
    });
  }
});

Deno.test("an Adobe marker saying YCbCr changes nothing, for either decoder", () => {
  // APP14 "Adobe", version 100, no flags, transform 1 (YCbCr), after SOI:
  // libjpeg reads the file as without it. jpeg-js converts colours itself
  // whenever the code is non-zero, so its planes come from a copy with the
  // code cleared; the result must not change.
  const app14 = [0xff, 0xee, 0, 14, 0x41, 0x64, 0x6f, 0x62, 0x65, 0, 100];
  const adobe = Uint8Array.from([
    ...photo.subarray(0, 2),
    ...app14,
    0,
    0,
    0,
    0,
    1,
    ...photo.subarray(2),
  ]);
  for (const jpeg of DECODERS) {
    const plain = decodeImage(photo, { jpeg });
    assert.deepEqual(decodeImage(adobe, { jpeg }).data, plain.data, jpeg);
  }
});

Deno.test("decodeImage() with a scratch gives the same pixels in one reused buffer", () => {
  const scratch = new DecodeScratch();
  const small = read("photo/coffee-420-progressive-167x125.jpg");
  for (const jpeg of DECODERS) {
    const a = decodeImage(photo, { jpeg, scratch });
    assert.deepEqual(a.data, decodeImage(photo, { jpeg }).data, jpeg);
    const b = decodeImage(small, { jpeg, scratch });
    assert.deepEqual(b.data, decodeImage(small, { jpeg }).data, jpeg);
    if (jpeg === "turbojpeg") assert.ok(a.data.buffer === b.data.buffer);
  }
  const big = scratch.take(DecodeScratch.MAX_BYTES + 1);
  assert.ok(big.buffer !== scratch.take(10).buffer, "a huge image is not kept");
});

Deno.test("a PNG named .jpg is decoded as the PNG it is, as PIL does", () => {
  const png = read("pil/photo/coffee-420-5x3.png");
  for (const jpeg of DECODERS) {
    const image = decodeImage(png, { jpeg });
    assert.deepEqual([image.width, image.height], [5, 3]);
  }
});

/** Runs `code` in a fresh Deno (with this repository's config) and env. */
async function run(env: Record<string, string>, code: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

const PROBE = `
import { decodeImage, resolveJpegDecoder } from "./data/decode.ts";
const bytes = Deno.readFileSync("tests/fixtures/photo/coffee-420-5x3.jpg");
const a = decodeImage(bytes);
const b = decodeImage(bytes);
console.log(resolveJpegDecoder(), a.width, a.height, b.data.length);
`;

Deno.test("a missing libturbojpeg falls back to jpeg-js with a one-line note", async () => {
  for (
    const [value, pattern] of [
      ["/nonexistent/libturbojpeg.so.0", /MEC_TURBOJPEG names/],
      ["off", /MEC_TURBOJPEG=off/],
    ] as const
  ) {
    const { code, stdout, stderr } = await run({ MEC_TURBOJPEG: value }, PROBE);
    assert.equal(code, 0, stderr);
    assert.equal(stdout.trim(), "jpeg-js 5 3 45");
    const lines = stderr.trim().split("\n");
    assert.equal(lines.length, 1, stderr);
    assert.match(lines[0], /^note: /);
    assert.match(lines[0], pattern);
    assert.match(lines[0], /jpeg-js/);
  }
  const insist = await run(
    { MEC_TURBOJPEG: "off" },
    `import { resolveJpegDecoder } from "./data/decode.ts";
     try { resolveJpegDecoder("turbojpeg"); } catch (e) { console.log(e.message); }`,
  );
  assert.match(insist.stdout, /MEC_TURBOJPEG=off/);
});

Deno.test("a loader with workers and no libturbojpeg says so once, at its first JPEG", async () => {
  const root = await photoFolder();
  try {
    const { code, stdout, stderr } = await run(
      { MEC_TURBOJPEG: "off" },
      `import { imageFolder } from "./data/folder.ts";
       import { DataLoader } from "./data/loader.ts";
       import { mecViews } from "./data/pipelines.ts";
       const dataset = await imageFolder(${JSON.stringify(root)});
       await using loader = new DataLoader({
         dataset, views: mecViews(16), batchSize: 4, workers: 2,
       });
       let n = 0;
       for await (const batch of loader.epoch(0)) n += batch.indices.length;
       console.log(loader.jpeg, n);`,
    );
    assert.equal(code, 0, stderr);
    assert.equal(stdout.trim(), "jpeg-js 12");
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
    assert.match(stderr, /^note: MEC_TURBOJPEG=off/);
    // Without a JPEG to decode (decoded pixels here), nothing is said.
    const pixels = await run(
      { MEC_TURBOJPEG: "off" },
      `import { ArrayDataset } from "./data/dataset.ts";
       import { DataLoader } from "./data/loader.ts";
       import { mecViews } from "./data/pipelines.ts";
       const dataset = new ArrayDataset({
         pixels: new Uint8Array(8 * 16 * 16), labels: new Array(8).fill(0),
         width: 16, height: 16, channels: 1, classes: ["a"],
       });
       await using loader = new DataLoader({
         dataset, views: mecViews(16), batchSize: 4, workers: 1,
       });
       for await (const batch of loader.epoch(0)) loader.recycle(batch);
       console.log(loader.jpeg);`,
    );
    assert.equal(pixels.code, 0, pixels.stderr);
    assert.equal(pixels.stdout.trim(), "jpeg-js");
    assert.equal(pixels.stderr, "");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: "MEC_TURBOJPEG names the library file to load",
  ignore: noTurbo,
  fn: async () => {
    const path = turboJpeg()!.path;
    const { code, stdout, stderr } = await run({ MEC_TURBOJPEG: path }, PROBE);
    assert.equal(code, 0, stderr);
    assert.equal(stdout.trim(), "turbojpeg 5 3 45");
    assert.equal(stderr, "");
    assert.equal(resolveJpegDecoder(), "turbojpeg");
  },
});

/** A class folder of the photographs, plus the hostile files in "bad". */
async function photoFolder(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "data_decode_pil_test_" });
  const files = Object.keys(references).filter((f) => f.startsWith("photo/"));
  await Deno.mkdir(join(root, "coffee"));
  for (const [i, file] of files.entries()) {
    await Deno.copyFile(
      new URL(file, FIXTURES),
      join(root, "coffee", `${i}.jpg`),
    );
  }
  await Deno.mkdir(join(root, "bad"));
  await Deno.writeFile(
    join(root, "bad", "truncated.jpg"),
    photo.subarray(0, 9000),
  );
  await Deno.writeFile(join(root, "bad", "empty.jpg"), new Uint8Array(0));
  await Deno.writeFile(
    join(root, "bad", "huge.jpg"),
    claiming(photo, 65000, 65000),
  );
  await Deno.copyFile(
    new URL("pil/photo/coffee-420-5x3.png", FIXTURES),
    join(root, "bad", "png.jpg"),
  );
  return root;
}

async function collect(
  options: ConstructorParameters<typeof DataLoader>[0],
): Promise<{ batches: Batch[]; summary: string }> {
  await using loader = new DataLoader(options);
  const batches: Batch[] = [];
  for await (const batch of loader.epoch(0)) batches.push(batch);
  return { batches, summary: formatEpochSummary(loader.lastSummary!) };
}

Deno.test("the loader gives the same batches for 0, 1 and 4 workers with either decoder", async () => {
  const root = await photoFolder();
  try {
    const dataset = await imageFolder(root);
    // Every sample once (no last batch dropped), so each bad file is met.
    const base = {
      dataset,
      views: mecViews(32),
      batchSize: 4,
      seed: 7,
      dropLast: false,
    };
    for (const jpeg of DECODERS) {
      const inline = await collect({ ...base, jpeg, workers: 0 });
      assert.equal(inline.batches.length, Math.ceil(dataset.length / 4));
      // The three unreadable files are named; the PNG named .jpg is read.
      for (const name of ["truncated", "empty", "huge"]) {
        assert.match(inline.summary, new RegExp(`bad/${name}\\.jpg`));
      }
      assert.ok(!inline.summary.includes("png.jpg"), inline.summary);
      assert.match(inline.summary, /over the budget of 50 megapixels/);
      for (const workers of [1, 4]) {
        const pooled = await collect({ ...base, jpeg, workers });
        assert.equal(pooled.summary, inline.summary);
        assert.equal(pooled.batches.length, inline.batches.length);
        pooled.batches.forEach((batch, b) => {
          assert.deepEqual(batch.indices, inline.batches[b].indices);
          assert.deepEqual(
            batch.views,
            inline.batches[b].views,
            `${jpeg} ${b}`,
          );
        });
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
