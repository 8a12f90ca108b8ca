/**
 * The online kNN monitor: its measurement against features computed
 * directly, that measuring leaves the network untouched, and pretraining
 * with `--knn` as a subprocess (log records, progress line, the same losses
 * as without the monitor, one sentence for each bad combination).
 */

import { join } from "node:path";
import {
  ArrayDataset,
  Generator,
  knnAccuracy,
  MEC,
  noGrad,
  probeEvalView,
  scope,
  tensor,
} from "../mod.ts";
import { KnnMonitor } from "../tools/knn_monitor.ts";
import { finalReport } from "../tools/probe_loop.ts";
import { snapshotState } from "../tools/probe.ts";
import { assert } from "./assert.ts";
import { testDevice } from "./device.ts";
import { FIXED_THREADS, makeImageFolders, runDeno, TINY } from "./tool_runs.ts";

/** 16x16 grey images whose brightness says the class, with noise. */
function brightnessSet(count: number, seed: number): ArrayDataset {
  const gen = new Generator(seed);
  const n = 16 * 16;
  const pixels = new Uint8Array(count * n);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    labels[i] = i % 2;
    for (let p = 0; p < n; p++) {
      pixels[i * n + p] = (labels[i] === 0 ? 40 : 200) + gen.integer(0, 30);
    }
  }
  return new ArrayDataset({
    pixels,
    labels,
    width: 16,
    height: 16,
    channels: 1,
    classes: ["dark", "bright"],
  });
}

Deno.test("KnnMonitor.measure() is knnAccuracy() of the backbone's eval-mode features, and changes no tensor", async () => {
  const model = new MEC({
    arch: "resnet18",
    width: 4,
    smallStem: true,
    dim: 16,
    predDim: 8,
    gen: new Generator(0),
  });
  // Training-mode passes give the teacher's BN running statistics.
  noGrad(() =>
    scope(() => {
      const gen = new Generator(1);
      const x = tensor(gen.fillNormal(new Float32Array(8 * 3 * 16 * 16)), [
        8,
        3,
        16,
        16,
      ]);
      model.forward(x, x);
    })
  );
  const bank = brightnessSet(40, 2);
  const queries = brightnessSet(20, 3);
  const monitor = new KnnMonitor(bank, queries, 16, 0);
  const before = snapshotState(model.teacher, "\0");
  const result = await monitor.measure(model.teacher);
  assert.equal(model.teacher.training, true, "training mode restored");
  const after = model.teacher.stateDict();
  for (const [key, values] of before) {
    assert.deepEqual(after.get(key)!.toArray(), values, key);
  }
  // The same features by hand: eval view (the whole image at 16 px), eval
  // mode, pooled features.
  const { applyView } = await import("../mod.ts");
  const embed = (d: ArrayDataset) => {
    const view = {
      ...probeEvalView(16),
      crop: { kind: "resize-center", resize: 16 } as const,
    };
    const x = new Float32Array(d.length * 3 * 16 * 16);
    for (let i = 0; i < d.length; i++) {
      applyView(d.image(i), view, new Generator(0), x, i * 3 * 16 * 16);
    }
    model.teacher.eval();
    const f = noGrad(() =>
      scope(() =>
        model.teacher.features(tensor(x, [d.length, 3, 16, 16])).toArray()
      )
    );
    model.teacher.train();
    return f;
  };
  const dim = model.teacher.featureDim;
  const expected = knnAccuracy(
    tensor(embed(queries), [20, dim]),
    Int32Array.from({ length: 20 }, (_, i) => queries.label(i)),
    tensor(embed(bank), [40, dim]),
    Int32Array.from({ length: 40 }, (_, i) => bank.label(i)),
    2,
  );
  assert.equal(result.acc1, expected);
  assert.ok(result.seconds > 0);
});

function pretrain(args: string[]) {
  // A fixed thread count: the runs are compared bit for bit.
  return runDeno(
    "tools/pretrain.ts",
    ["--device", testDevice, ...args],
    FIXED_THREADS,
  );
}

async function records(dir: string) {
  const text = await Deno.readTextFile(join(dir, "log.jsonl"));
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("pretrain --knn logs kNN top-1 every N iterations and at epoch ends, and trains exactly as without it", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mec_knn_" });
  try {
    const data = join(tmp, "data");
    await makeImageFolders(data);
    const plain = await pretrain([data, ...TINY, "--out", join(tmp, "a")]);
    assert.equal(plain.code, 0, plain.stderr);
    const knn = await pretrain([
      data,
      ...TINY,
      "--out",
      join(tmp, "b"),
      "--knn",
      "--knn-every",
      "1",
      "--knn-bank",
      "3",
      "--knn-queries",
      "2",
      // The monitor's side: it must not change training either.
      "--eval-size",
      "20",
      "-p",
      "1",
    ]);
    assert.equal(knn.code, 0, knn.stderr);
    assert.match(
      knn.stdout,
      /kNN monitor: .*6 bank images, 4 held-out queries at 20 px, k 200, T 0\.1/,
    );
    assert.match(knn.stdout, /\* kNN top-1 \d+\.\d\d % after epoch 0/);
    // After the first measurement the progress line carries the figure.
    assert.match(knn.stdout, /Epoch: \[1\].*kNN \d+\.\d\d/);
    const events = (await records(join(tmp, "b"))).filter((r) =>
      r.event === "knn"
    );
    // After iterations 1 and 3 (mid-epoch) and at the ends of epochs 0
    // and 1 (2 and 4), where --knn-every does not measure a second time.
    assert.deepEqual(events.map((r) => r.iteration), [1, 2, 3, 4]);
    assert.deepEqual(events.map((r) => r.epoch), [0, 0, 1, 1]);
    for (const r of events) {
      assert.ok(r.acc1 >= 0 && r.acc1 <= 100);
      assert.equal(r.bank, 6);
      assert.equal(r.queries, 4);
      assert.equal(r.k, 200);
      assert.equal(r.temperature, 0.1);
    }
    const losses = async (dir: string) =>
      (await records(dir)).filter((r) => r.event === "step").map((r) => r.loss);
    assert.deepEqual(
      await losses(join(tmp, "b")),
      await losses(join(tmp, "a")),
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("pretrain refuses --knn without a val folder, with --dummy, and --knn-every without --knn", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mec_knn_" });
  try {
    const data = join(tmp, "data");
    await makeImageFolders(data);
    await Deno.remove(join(data, "val"), { recursive: true });
    const cases: [string[], RegExp][] = [
      [
        [data, "--knn"],
        /^--knn needs held-out queries, but the data folder .* has no val sub-folder/,
      ],
      [["--dummy", "--knn"], /^--knn cannot be combined with --dummy/],
      [
        [data, "--knn-every", "5"],
        /^--knn-every 5 needs the kNN monitor: add --knn\.$/,
      ],
    ];
    for (const [args, pattern] of cases) {
      const r = await pretrain([...args, ...TINY, "--out", join(tmp, "run")]);
      const lines = r.stderr.trim().split("\n").filter((l) =>
        !l.startsWith("note: ")
      );
      assert.equal(r.code, 2, r.stderr);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], pattern);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the probe's closing lines give the final epoch first and label the best epoch with its split", () => {
  const outcome = {
    lastEpoch: 99,
    lastAcc1: 88.5,
    lastAcc5: 99.5,
    bestAcc1: 89,
    bestEpoch: 71,
  };
  assert.equal(
    finalReport(outcome, [87.25, 99.75], 5, "runs/p"),
    "Final probe (epoch 99): test Acc@1 87.250 Acc@5 99.750 (val Acc@1 88.500).\n" +
      "Best epoch by val Acc@1: epoch 71, 89.000 (chosen on val, so not a test figure); the backbone is unchanged; probes in runs/p.",
  );
  assert.match(
    finalReport({ ...outcome, bestEpoch: null }, null, 5, "runs/p"),
    /^Final probe \(epoch 99\): val Acc@1 88\.500 Acc@5 99\.500\.\nBest epoch by val Acc@1: an earlier run's, 89\.000 \(chosen on val, so optimistic as a measure\)/,
  );
});
