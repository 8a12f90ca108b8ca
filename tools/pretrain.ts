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
  BUILTIN_FASHION_MNIST,
  DataLoader,
  type Dataset,
  DummyDataset,
  fashionMnist,
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
  runMain,
  UsageError,
} from "./cli.ts";
import { DEMO_PRETRAIN } from "./demo.ts";
import { helpText, parseCommand } from "./flags.ts";
import { checkMemory, resnetCost, trainingMemory } from "./memory.ts";
import { describeArch, loadInto, readCheckpoint } from "./models.ts";
import {
  checkCombination,
  checkPretrainMetadata,
  DESCRIPTION,
  PAPER,
  PRETRAIN_FLAGS,
  type PretrainArgs,
  USAGE,
} from "./pretrain_args.ts";
import { type Position, train } from "./pretrain_loop.ts";
import { fmt, JsonLog } from "./progress.ts";
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

/** Runs the tool on `argv`; returns the exit code. */
export async function pretrain(argv: readonly string[]): Promise<number> {
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
    ...given,
  } as PretrainArgs;
  checkCombination(args);
  if (meta !== null && meta.epoch >= args.epochs) {
    throw new UsageError(
      `The checkpoint ${resumePath} is the end of its run (${meta.epoch} of ${args.epochs} epochs): there is nothing to continue; give a larger --epochs to train on.`,
    );
  }
  args.workers = capWorkers(args.workers);
  const deviceName = args.device;
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
    args.batchSize,
    `A batch of ${args.batchSize} pairs of ${args.imageSize} px views through a ${
      describeArch(args)
    }`,
    "--image-size or --width",
  );
  // The data folder is there (listing it may take a while), before the run
  // folder is looked at.
  if (!demo && !args.dummy) await trainFolder(args.data!);
  const folder = await inspectRunFolder(args.out, PRETRAIN_FILES, {
    resume: resumed !== null,
    // Running the demo again replaces the last demo run in its own folder.
    overwrite: given.overwrite === true || (demo && given.out === undefined),
  });
  const backend = await openDevice(deviceName, {
    tf32: args.tf32,
    deterministic: args.deterministic,
  });

  if (demo) {
    console.log(
      `Demo: no DATA_DIR given, so MEC pretrains a ${
        describeArch(args)
      } on the built-in Fashion-MNIST's first 10,000 training images at ${args.imageSize} px for ${args.epochs} epochs (about 10 minutes on 2 cores); checkpoints go to ${args.out}.`,
    );
  }

  let dataset = await openDataset(args, demo);
  const slow = Number(Deno.env.get("MEC_TEST_SLOW_DATA_MS") ?? 0);
  if (slow > 0) dataset = new SlowDataset(dataset, slow);
  const views = pretrainViews(args.imageSize);
  await using loader = new DataLoader({
    dataset,
    views,
    batchSize: args.batchSize,
    seed: args.seed,
    workers: args.workers,
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
  await startRun(folder);
  using log = await JsonLog.open(args.out);
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

  const result = await train(
    args,
    backend,
    model,
    optimizer,
    loader,
    position,
    log,
    interrupt,
  );
  return result;
}

/** DATA_DIR/train, the dummy set or the built-in Fashion-MNIST. */
async function openDataset(
  args: PretrainArgs,
  demo: boolean,
): Promise<Dataset> {
  if (args.dummy) return new DummyDataset({ seed: args.seed });
  // The built-in 10,000-image subset even where Debian's full set is
  // installed: the demo's length and result then do not depend on it.
  if (demo) return await fashionMnist("train", { root: BUILTIN_FASHION_MNIST });
  return await imageFolder(await trainFolder(args.data!));
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

if (import.meta.main) runMain(() => pretrain(Deno.args));
