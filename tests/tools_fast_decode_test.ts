/**
 * `deno task pretrain --fast-decode` end to end: a run on real JPEGs whose
 * epoch summary says where the loader's time went, and the combinations
 * where the flag would do nothing refused in one sentence.
 */

import { makeImageFolders, runDeno, TINY } from "./tool_runs.ts";
import { turboJpeg } from "../data/turbojpeg.ts";
import { assert } from "./assert.ts";

/** A tiny network: one epoch of two iterations on 16-pixel views. */
const ONE_EPOCH = [...TINY, "--epochs", "1", "--warmup-epochs", "0"];

function pretrain(args: string[], env: Record<string, string> = {}) {
  return runDeno("tools/pretrain.ts", args, env);
}

Deno.test({
  name:
    "pretrain --fast-decode trains on JPEGs and says where the loader's time went",
  ignore: turboJpeg() === null,
  fn: async () => {
    const root = await Deno.makeTempDir({ prefix: "mec_fast_decode_" });
    try {
      await makeImageFolders(root);
      const r = await pretrain([
        `${root}`,
        "--out",
        `${root}/run`,
        "--fast-decode",
        ...ONE_EPOCH,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^epoch 0: 8 images, none skipped$/m);
      const line = r.stdout.split("\n").find((l) => l.startsWith("loader: "));
      assert.ok(line !== undefined, r.stdout);
      assert.match(
        line,
        /^loader: read \d+\.\d s, decode \d+\.\d s \(\d+\.\d\d ms\/image\), augment \d+\.\d s \(\d+\.\d\d ms\/image\), transfer \d+\.\d s, \d+\.\d cores busy; training waited \d+\.\d s for data$/,
      );
      const log = (await Deno.readTextFile(`${root}/run/log.jsonl`))
        .trim().split("\n").map((l) => JSON.parse(l));
      const epoch = log.find((e) => e.event === "epoch");
      assert.ok(epoch.timing.decodeMs > 0 && epoch.timing.augmentMs > 0);
      // One worker: every batch was handed over and back.
      assert.ok(epoch.timing.transferMs > 0);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("pretrain refuses --fast-decode where nothing is decoded, or without TurboJPEG", async () => {
  const dummy = await pretrain(["--dummy", "--fast-decode", ...ONE_EPOCH]);
  assert.equal(dummy.code, 2, dummy.stderr);
  assert.match(
    dummy.stderr,
    /--fast-decode needs a DATA_DIR of JPEG files: --dummy's random images are not decoded\./,
  );
  const demo = await pretrain(["--fast-decode", ...ONE_EPOCH]);
  assert.equal(demo.code, 2, demo.stderr);
  assert.match(
    demo.stderr,
    /the demo's Fashion-MNIST images are not decoded\./,
  );
  const root = await Deno.makeTempDir({ prefix: "mec_fast_decode_" });
  try {
    await makeImageFolders(root);
    const r = await pretrain(
      [root, "--out", `${root}/run`, "--fast-decode", ...ONE_EPOCH],
      { MEC_TURBOJPEG: "off" },
    );
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /Fast decoding needs TurboJPEG's DCT scaling, but JPEGs are decoded with jpeg-js \(MEC_TURBOJPEG=off: decoding JPEG with jpeg-js\)\./,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
