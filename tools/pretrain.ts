/**
 * `deno task pretrain [DATA_DIR] [flags]`: MEC pretraining, with the flags
 * and defaults of the paper's `main_pretrain.py`. Without DATA_DIR it runs a
 * demo on the built-in Fashion-MNIST sized to take about ten minutes on a
 * 2-core CPU.
 *
 * Exact resumption: every random choice is a function of the seed and a
 * position. The initial weights come from `Generator(seed)` (and are then
 * replaced by the checkpoint's), the order of epoch e from
 * `Generator(seed, e, -1)` and sample i's views in epoch e from
 * `Generator(seed, e, i)` (see data/loader.ts); the schedules are functions
 * of the global iteration. So a checkpoint needs, besides the tensors
 * (student, teacher, predictor, BN statistics, momentum buffers), only the
 * seed and the position (epoch, batch), which its metadata records.
 *
 * Reliability: the flags a checkpoint records are checked by the same rules
 * as the command line's (tools/cli.ts), the memory a batch needs is checked
 * against the memory available before anything is allocated
 * (tools/memory.ts), a folder that holds another run is refused unless
 * `--resume` or `--overwrite` (tools/run_folder.ts), and Ctrl-C while the
 * loop waits for data saves at once.
 *
 * For tests only: `MEC_TEST_SLOW_DATA_MS=N` makes every sample's read wait
 * N milliseconds first, so that a test can interrupt a loop that is
 * waiting for data (tests/reliability_test.ts).
 *
 * @module
 */

import { join, resolve } from "node:path";
import {
  DataLoader,
  type Dataset,
  DummyDataset,
  firstPerClass,
  Generator,
  imageFolder,
  MEC,
  SGD,
} from "../mod.ts";
import {
  capWorkers,
  exists,
  EXIT,
  Interrupt,
  openDevice,
  UsageError,
} from "./cli.ts";
import type { Ranks } from "../dist/parallel.ts";
import { DEMO_PRETRAIN, type DemoSplits, demoSplits } from "./demo.ts";
import {
  dataParallel,
  perRankBatch,
  runTool,
  silentLog,
} from "./distributed.ts";
import { helpText, parseCommand } from "./flags.ts";
import { KnnMonitor } from "./knn_monitor.ts";
import { checkMemory, resnetCost, trainingMemory } from "./memory.ts";
import { describeArch, loadInto, readCheckpoint } from "./models.ts";
import {
  checkCombination,
  checkPretrainMetadata,
  DESCRIPTION,
  evalSizeOf,
  PAPER,
  PRETRAIN_FLAGS,
  type PretrainArgs,
  USAGE,
} from "./pretrain_args.ts";
import { type Position, train } from "./pretrain_loop.ts";
import { fmt, JsonLog } from "./progress.ts";
import { PRETRAIN_SCALARS } from "./tensorboard.ts";
import { inspectRunFolder, PRETRAIN_FILES, startRun } from "./run_folder.ts";
import { pretrainViews } from "./views.ts";

/**
 * The parameters of the projector and predictor besides the backbone's,
 * for the memory estimate (DESIGN.md section 1's shapes).
 */
function headParameters(featureDim: number, dim: number, pred: number) {
  const f = featureDim;
  return 2 * f * f + 4 * f + f * dim + dim + dim * pred + 2 * pred +
    pred * dim + dim;
}

/**
 * Samples read through this wrapper wait `ms` first (MEC_TEST_SLOW_DATA_MS,
 * for tests that interrupt a loop waiting for data).
 */
class SlowDataset implements Dataset {
  constructor(readonly inner: Dataset, readonly ms: number) {}
  get length() {
    return this.inner.length;
  }
  get classes() {
    return this.inner.classes;
  }
  label(index: number) {
    return this.inner.label(index);
  }
  name(index: number) {
    return this.inner.name(index);
  }
  async source(index: number) {
    await new Promise((resolve) => setTimeout(resolve, this.ms));
    return await this.inner.source(index);
  }
}

/**
 * Runs the tool on `argv`; returns the exit code. `ranks`: this process's
 * place in a data-parallel run under `mpirun` (tools/distributed.ts).
 */
export async function pretrain(
  argv: readonly string[],
  ranks: Ranks | null = null,
): Promise<number> {
  const command = parseCommand<PretrainArgs>(argv, PRETRAIN_FLAGS);
  if (command.help) {
    console.log(helpText(USAGE, DESCRIPTION, PRETRAIN_FLAGS));
    return EXIT.ok;
  }
  const given = command.given;
  if (command.data !== null) {
    if (given.dummy === true) {
      throw new UsageError(
        `Give DATA_DIR or --dummy, not both: --dummy trains on random images and would ignore ${command.data}.`,
      );
    }
    given.data = command.data;
  }

  const resumePath = given.resume as string | undefined;
  if (resumePath !== undefined && given.startEpoch !== undefined) {
    throw new UsageError(
      "--start-epoch cannot be combined with --resume: the checkpoint records the epoch and batch to continue from.",
    );
  }
  if (resumePath !== undefined && given.overwrite === true) {
    throw new UsageError(
      "Give --resume or --overwrite, not both: --resume continues the run the checkpoint belongs to.",
    );
  }
  const resumed = resumePath === undefined
    ? null
    : await readCheckpoint(resumePath, "checkpoint to resume from");
  const meta = resumed === null
    ? null
    : checkPretrainMetadata(resumed.metadata, resumePath!);
  const stored: Partial<PretrainArgs> = meta?.args ?? {};
  const data = (given.data ?? stored.data ?? null) as string | null;
  const dummy = (given.dummy ?? stored.dummy ?? false) as boolean;
  const demo = data === null && !dummy;
  const args = {
    ...PAPER,
    ...(demo ? DEMO_PRETRAIN : {}),
    ...stored,
    data,
    dummy,
    resume: null,
    overwrite: false,
    maxIters: null,
    profile: false,
    ...given,
  } as PretrainArgs;
  checkCombination(args);
  if (meta !== null && meta.epoch >= args.epochs) {
    throw new UsageError(
      `The checkpoint ${resumePath} is the end of its run (${meta.epoch} of ${args.epochs} epochs): there is nothing to continue; give a larger --epochs to train on.`,
    );
  }
  args.workers = capWorkers(args.workers);
  // -b is the global batch; each rank trains on its share of it.
  const localBatch = perRankBatch(args.batchSize, ranks);
  const deviceName = ranks?.device(args.device) ?? args.device;
  // The batches and, on the CPU, the network's activations in host memory.
  const { featureDim } = resnetCost(
    args.arch,
    args.width,
    args.smallStem,
    args.imageSize,
  );
  checkMemory(
    trainingMemory({
      arch: args.arch,
      width: args.width,
      smallStem: args.smallStem,
      imageSize: args.imageSize,
      views: 2,
      workers: args.workers,
      passes: deviceName === "cpu" ? 4 : 0,
      extraParameters: headParameters(featureDim, args.dim, args.predDim),
      parameterCopies: 4,
    }),
    localBatch,
    `A batch of ${localBatch} pairs of ${args.imageSize} px views through a ${
      describeArch(args)
    }`,
    "--image-size or --width",
  );
  // The data folder is there (listing it may take a while), before the run
  // folder is looked at.
  if (!demo && !args.dummy) {
    await trainFolder(args.data!);
    if (args.knn) await valFolder(args.data!);
  }
  // Rank 0 alone owns the run folder.
  const root = ranks === null || ranks.isRoot;
  const folder = !root
    ? null
    : await inspectRunFolder(args.out, PRETRAIN_FILES, {
      resume: resumed !== null,
      // Running the demo again replaces the last demo run in its own folder.
      overwrite: given.overwrite === true || (demo && given.out === undefined),
    });
  // The profiler wraps the backend when the device is opened.
  if (args.profile) Deno.env.set("MEC_PROFILE", "1");
  const backend = await openDevice(deviceName, {
    tf32: args.tf32,
    deterministic: args.deterministic,
  });

  const splits = demo ? await demoSplits() : null;
  if (splits !== null) {
    console.log(
      `Demo: no DATA_DIR given, so MEC pretrains a ${
        describeArch(args)
      } on the first ${
        splits.pretrain.length.toLocaleString("en-US")
      } training images of ${splits.description} at ${args.imageSize} px${
        args.evalSize === null || args.evalSize === args.imageSize
          ? ""
          : ` (evaluated at ${args.evalSize} px)`
      } for ${args.epochs} epochs (about 10 minutes on 2 idle cores); checkpoints go to ${args.out}.`,
    );
  }

  const opened = await openData(args, splits);
  const trainSet = opened.dataset;
  const monitor = root ? opened.monitor : null;
  let dataset = trainSet;
  const slow = Number(Deno.env.get("MEC_TEST_SLOW_DATA_MS") ?? 0);
  if (slow > 0) dataset = new SlowDataset(dataset, slow);
  const views = pretrainViews(args.imageSize, args.minScale);
  await using loader = new DataLoader({
    dataset,
    views,
    batchSize: localBatch,
    shard: ranks === null ? undefined : { rank: ranks.rank, size: ranks.size },
    seed: args.seed,
    workers: args.workers,
    fastDecode: args.fastDecode,
    dropLast: true,
  });
  const itersPerEpoch = loader.length;

  const model = new MEC({
    arch: args.arch,
    dim: args.dim,
    predDim: args.predDim,
    smallStem: args.smallStem,
    width: args.width,
    gen: new Generator(args.seed),
    device: deviceName,
  });
  const lr = args.lr * args.batchSize / 256;
  const optimizer = new SGD(model.trainableParameters(), {
    lr,
    momentum: args.momentum,
    weightDecay: args.wd,
  });

  const position: Position = {
    epoch: args.startEpoch,
    batch: 0,
    lastCheckpoint: null,
  };
  if (resumed !== null && meta !== null) {
    loadInto(
      model,
      resumed.model,
      resumePath!,
      `MEC model with a ${
        describeArch(args)
      } backbone, dim ${args.dim} and pred-dim ${args.predDim}`,
    );
    if (resumed.optimizer !== null) {
      optimizer.loadStateDict(resumed.optimizer);
    }
    if (meta.itersPerEpoch !== itersPerEpoch) {
      throw new Error(
        `The checkpoint ${resumePath} was made with ${meta.itersPerEpoch} iterations per epoch, this data and batch size give ${itersPerEpoch}, so the run cannot continue exactly.`,
      );
    }
    position.epoch = meta.epoch;
    position.batch = meta.batch;
    position.lastCheckpoint = resumePath!;
  }

  // From here on Ctrl-C saves (at the start position if no step is done).
  using interrupt = new Interrupt();
  // Every rank starts from rank 0's weights (and, resumed, the same ones).
  const parallel = ranks === null
    ? null
    : await dataParallel(ranks, backend, model, localBatch);
  if (folder !== null) await startRun(folder);
  // TensorBoard's steps are iterations; this process starts here.
  const tensorboard = args.tensorboard
    ? {
      scalars: PRETRAIN_SCALARS,
      startStep: position.epoch * itersPerEpoch + position.batch,
    }
    : null;
  using log = root
    ? await JsonLog.open(args.out, { tensorboard })
    : silentLog();
  log.write({
    event: "start",
    time: new Date().toISOString(),
    args,
    itersPerEpoch,
    samples: dataset.length,
    resumedFrom: resumePath ?? null,
    epoch: position.epoch,
    batch: position.batch,
  });
  console.log(
    `${dataset.length} images, ${itersPerEpoch} iterations per epoch of ${args.batchSize}; ${model.numParameters()} parameters; lr ${
      fmt(lr)
    }; starting at epoch ${position.epoch}${
      position.batch > 0 ? `, batch ${position.batch}` : ""
    }.`,
  );
  if (monitor !== null) {
    console.log(
      `kNN monitor: the teacher's backbone in eval mode, ${monitor.describe()}, at each epoch end${
        args.knnEvery > 0 ? ` and every ${args.knnEvery} iterations` : ""
      }.`,
    );
  }

  const result = await train(
    args,
    backend,
    model,
    optimizer,
    loader,
    position,
    log,
    interrupt,
    monitor,
    parallel,
  );
  return result;
}

/**
 * The images to pretrain on (DATA_DIR/train, the dummy set or the demo's
 * training split) and, with --knn, the kNN monitor: a bank of the first
 * images of each class of the same training images, queries from
 * DATA_DIR/val or the demo's validation split.
 */
async function openData(
  args: PretrainArgs,
  splits: DemoSplits | null,
): Promise<{ dataset: Dataset; monitor: KnnMonitor | null }> {
  if (args.dummy) {
    return { dataset: new DummyDataset({ seed: args.seed }), monitor: null };
  }
  let dataset: Dataset;
  let val: Dataset | null = null;
  if (splits !== null) {
    dataset = splits.pretrain;
    if (args.knn) val = splits.val;
  } else {
    dataset = await imageFolder(await trainFolder(args.data!));
    if (args.knn) val = await imageFolder(await valFolder(args.data!));
  }
  const monitor = val === null ? null : new KnnMonitor(
    firstPerClass(dataset, args.knnBank, "knn-bank"),
    firstPerClass(val, args.knnQueries, "knn-queries"),
    evalSizeOf(args),
    args.workers,
  );
  return { dataset, monitor };
}

/** DATA_DIR/train, or one sentence saying what is missing. */
async function trainFolder(data: string): Promise<string> {
  const root = resolve(data);
  if (!await exists(root)) {
    throw new Error(`The data folder ${root} does not exist.`);
  }
  const train = join(root, "train");
  if (!await exists(train)) {
    throw new Error(
      `The data folder ${root} has no train sub-folder: expected ${
        join(train, "<class>", "<image>.jpg")
      }.`,
    );
  }
  return train;
}

/** DATA_DIR/val for the kNN monitor's queries, or one sentence. */
async function valFolder(data: string): Promise<string> {
  const root = resolve(data);
  const val = join(root, "val");
  if (!await exists(val)) {
    throw new UsageError(
      `--knn needs held-out queries, but the data folder ${root} has no val sub-folder: expected ${
        join(val, "<class>", "<image>.jpg")
      }.`,
    );
  }
  return val;
}

if (import.meta.main) runTool((ranks) => pretrain(Deno.args, ranks));
