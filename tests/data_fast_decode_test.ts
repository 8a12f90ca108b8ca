/**
 * Decoding at a reduced size: TurboJPEG's DCT scaling against PIL's
 * (`Image.draft`, the same libjpeg-turbo), the choice of the scale and the
 * mapping of the crops, and the loader with `fastDecode`: deterministic
 * for any number of workers, close to the full-size views, and hostile
 * files reported as without it.
 */

import { join } from "node:path";
import { type DctShrink, decodeImage } from "../data/decode.ts";
import { dctShrink, shrinkCrop } from "../data/fast_decode.ts";
import { imageFolder } from "../data/folder.ts";
import { type Batch, DataLoader, formatEpochSummary } from "../data/loader.ts";
import {
  drawView,
  mecViews,
  probeEvalView,
  type ViewDraw,
} from "../data/pipelines.ts";
import { turboJpeg } from "../data/turbojpeg.ts";
import { Generator } from "../nn/random.ts";
import { assert } from "./assert.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const noTurbo = turboJpeg() === null;
const scaled = JSON.parse(
  Deno.readTextFileSync(new URL("pil/scaled.json", FIXTURES)),
) as { files: Record<string, { jpeg: string; shrink: DctShrink }> };

function read(path: string): Uint8Array {
  return Deno.readFileSync(new URL(path, FIXTURES));
}

Deno.test({
  name: "TurboJPEG decodes at 1/2, 1/4 and 1/8 exactly as PIL's draft mode",
  ignore: noTurbo,
  fn: () => {
    assert.ok(Object.keys(scaled.files).length >= 7);
    for (const [png, { jpeg, shrink }] of Object.entries(scaled.files)) {
      const full = decodeImage(read(jpeg), { jpeg: "turbojpeg" });
      let asked: number[] = [];
      const small = decodeImage(read(jpeg), {
        jpeg: "turbojpeg",
        shrink: (w, h) => {
          asked = [w, h];
          return shrink;
        },
      });
      assert.deepEqual(asked, [full.width, full.height]);
      const expected = decodeImage(read(`pil/${png}`));
      assert.equal(small.width, Math.ceil(full.width / shrink), png);
      assert.equal(small.height, Math.ceil(full.height / shrink), png);
      assert.equal(small.width, expected.width);
      assert.equal(small.height, expected.height);
      let differ = 0;
      for (let i = 0; i < small.data.length; i++) {
        if (small.data[i] !== expected.data[i]) differ++;
      }
      assert.equal(differ, 0, `${png}: ${differ} values differ from PIL's`);
    }
  },
});

Deno.test("the shrink is asked only where TurboJPEG can scale", () => {
  let calls = 0;
  const shrink = () => {
    calls++;
    return 2 as const;
  };
  // A PNG, jpeg-js, and a JPEG under 8 pixels a side come at full size.
  const png = decodeImage(read("pil/photo/coffee-420-333x249.png"), { shrink });
  assert.equal(png.width, 333);
  const js = decodeImage(read("photo/coffee-420-333x249.jpg"), {
    jpeg: "jpeg-js",
    shrink,
  });
  assert.equal(js.width, 333);
  if (!noTurbo) {
    const tiny = decodeImage(read("photo/coffee-420-5x3.jpg"), {
      jpeg: "turbojpeg",
      shrink,
    });
    assert.equal(tiny.width, 5);
  }
  assert.equal(calls, 0);
});

/** A draw whose only part that matters here is its crop. */
function cropDraw(
  width: number,
  height: number,
  resizeWidth: number,
  resizeHeight = resizeWidth,
): ViewDraw {
  return {
    crop: {
      box: { top: 0, left: 0, width, height },
      resizeWidth,
      resizeHeight,
    },
    jitter: null,
    grey: false,
    sigma: null,
    solarize: false,
  };
}

Deno.test("dctShrink() picks the largest 1/d that keeps every crop at least its view", () => {
  assert.equal(dctShrink([cropDraw(1800, 1800, 224)]), 8);
  assert.equal(dctShrink([cropDraw(1791, 1800, 224)]), 4); // 1791 / 8 < 224
  assert.equal(dctShrink([cropDraw(900, 700, 224)]), 2);
  assert.equal(dctShrink([cropDraw(447, 900, 224)]), 1);
  // Every view must allow it: the smaller crop decides.
  assert.equal(
    dctShrink([cropDraw(1800, 1800, 224), cropDraw(500, 460, 224)]),
    2,
  );
  // Resize + CenterCrop resizes the whole image to the shorter side 256.
  const eval256 = drawView(
    { width: 2000, height: 1500 },
    probeEvalView(224),
    new Generator(0),
  );
  assert.equal(dctShrink([eval256]), 4); // 1500 / 256 = 5.9
  assert.equal(dctShrink([]), 8);
});

Deno.test("shrinkCrop() divides the box's edges by d and keeps it inside the image", () => {
  const crop = {
    box: { top: 101, left: 37, width: 403, height: 250 },
    resizeWidth: 224,
    resizeHeight: 224,
    flip: true,
  };
  assert.deepEqual(shrinkCrop(crop, 2, 250, 188), {
    ...crop,
    box: { top: 51, left: 19, width: 201, height: 125 },
  });
  const gen = new Generator(3);
  for (let n = 0; n < 2000; n++) {
    const d = [2, 4, 8][gen.integer(0, 3)];
    const W = gen.integer(8, 3000);
    const H = gen.integer(8, 3000);
    const width = gen.integer(1, W + 1);
    const height = gen.integer(1, H + 1);
    const box = {
      left: gen.integer(0, W - width + 1),
      top: gen.integer(0, H - height + 1),
      width,
      height,
    };
    const w = Math.ceil(W / d);
    const h = Math.ceil(H / d);
    const small = shrinkCrop(
      { box, resizeWidth: 224, resizeHeight: 224 },
      d,
      w,
      h,
    ).box;
    const what = `${JSON.stringify(box)} of ${W}x${H} at 1/${d}`;
    assert.ok(small.left >= 0 && small.top >= 0, what);
    assert.ok(small.width >= 1 && small.height >= 1, what);
    assert.ok(small.left + small.width <= w, what);
    assert.ok(small.top + small.height <= h, what);
    // Each edge within half a small pixel of the exact one, unless a
    // one-pixel box had to be widened.
    if (width >= d && height >= d) {
      assert.ok(Math.abs(small.left * d - box.left) <= d / 2, what);
      assert.ok(
        Math.abs((small.left + small.width) * d - box.left - width) <= d / 2,
        what,
      );
      assert.ok(Math.abs(small.top * d - box.top) <= d / 2, what);
    }
  }
});

/** The photographs in one class folder, plus the hostile files in "bad". */
async function photoFolder(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "data_fast_decode_test_" });
  await Deno.mkdir(join(root, "coffee"));
  for (
    const name of [
      "coffee-500x375.jpg",
      "coffee-444-333x249.jpg",
      "coffee-422-333x249.jpg",
      "coffee-420-progressive-167x125.jpg",
      "coffee-cmyk-167x125.jpg",
      "coffee-gray-167x125.jpg",
      "coffee-420-5x3.jpg",
    ]
  ) {
    await Deno.copyFile(
      new URL(`photo/${name}`, FIXTURES),
      join(root, "coffee", name),
    );
  }
  const photo = read("photo/coffee-420-333x249.jpg");
  await Deno.mkdir(join(root, "bad"));
  await Deno.writeFile(
    join(root, "bad", "truncated.jpg"),
    photo.subarray(0, 9000),
  );
  await Deno.writeFile(join(root, "bad", "empty.jpg"), new Uint8Array(0));
  const huge = photo.slice();
  for (let pos = 2; pos + 9 < huge.length;) {
    if (huge[pos + 1] >= 0xc0 && huge[pos + 1] <= 0xc2) {
      huge.set([65000 >> 8, 65000 & 255, 65000 >> 8, 65000 & 255], pos + 5);
      break;
    }
    pos += 2 + ((huge[pos + 2] << 8) | huge[pos + 3]);
  }
  await Deno.writeFile(join(root, "bad", "huge.jpg"), huge);
  await Deno.copyFile(
    new URL("pil/photo/coffee-420-333x249.png", FIXTURES),
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

Deno.test({
  name:
    "the loader with fastDecode: the same batches for 0, 1 and 4 workers, close to the full decode's, bad files reported",
  ignore: noTurbo,
  fn: async () => {
    const root = await photoFolder();
    try {
      const dataset = await imageFolder(root);
      // 32-pixel views shrink the photographs' crops four to eight times.
      const base = {
        dataset,
        views: mecViews(32),
        batchSize: 4,
        seed: 7,
        dropLast: false,
        jpeg: "turbojpeg" as const,
      };
      const full = await collect({ ...base, workers: 0 });
      const fast = await collect({ ...base, workers: 0, fastDecode: true });
      // The same files are unreadable, for the same reasons; the PNG named
      // .jpg is read.
      assert.equal(fast.summary, full.summary);
      for (const name of ["truncated", "empty", "huge"]) {
        assert.match(fast.summary, new RegExp(`bad/${name}\\.jpg`));
      }
      assert.ok(!fast.summary.includes("png.jpg"));
      for (const workers of [1, 4]) {
        const pooled = await collect({ ...base, workers, fastDecode: true });
        assert.equal(pooled.summary, fast.summary);
        pooled.batches.forEach((batch, b) => {
          assert.deepEqual(batch.indices, fast.batches[b].indices);
          assert.deepEqual(batch.views, fast.batches[b].views, `batch ${b}`);
        });
      }
      // Same draws, so the same views up to the scaled IDCT's pixels and
      // crop edges moved by under half a reduced pixel: a mean difference
      // of 0.04 here (in normalised units), where crops three reduced
      // pixels off give 0.24; and most values differ.
      let sum = 0, n = 0, changed = 0;
      fast.batches.forEach((batch, b) => {
        assert.deepEqual(batch.indices, full.batches[b].indices);
        for (let k = 0; k < 2; k++) {
          const a = batch.views[k], c = full.batches[b].views[k];
          for (let i = 0; i < a.length; i++) {
            const diff = Math.abs(a[i] - c[i]);
            sum += diff;
            n++;
            if (diff > 0) changed++;
          }
        }
      });
      assert.ok(changed > n / 4, `${changed} of ${n} values changed`);
      assert.ok(sum / n < 0.08, `mean difference ${sum / n}`);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("the loader refuses fastDecode with jpeg-js in one sentence", () => {
  assert.throws(
    () =>
      new DataLoader({
        dataset: {
          length: 4,
          classes: ["a"],
          label: () => 0,
          name: (i) => `${i}`,
          source: () => Promise.reject(new Error("unused")),
        },
        views: mecViews(32),
        batchSize: 2,
        jpeg: "jpeg-js",
        fastDecode: true,
      }),
    (e: unknown) =>
      e instanceof RangeError &&
      /^Fast decoding needs TurboJPEG's DCT scaling, but JPEGs are decoded with jpeg-js as asked\.$/
        .test(e.message),
  );
});
