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
  type Backend,
  type Batch,
  batchTensors,
  BUILTIN_FASHION_MNIST,
  cosineSchedule,
  DataLoader,
  type Dataset,
  DummyDataset,
  fashionMnist,
  formatEpochSummary,
  Generator,
  imageFolder,
  lamdaInvSchedule,
  MEC,
  mecConstants,
  mecStep,
  type ResNetName,
  resnets,
  saveCheckpoint,
  scope,
  SGD,
  unreadableFiles,
} from "../mod.ts";
import {
  capWorkers,
  exists,
  EXIT,
  type FlagSpec,
  helpText,
  Interrupt,
  openDevice,
  parseCommand,
  recordedSettings,
  runMain,
  SHARED_FLAGS,
  UsageError,
} from "./cli.ts";
import { checkMemory, resnetCost, trainingMemory } from "./memory.ts";
import { describeArch, loadInto, readCheckpoint } from "./models.ts";
import { fmt, formatDuration, JsonLog, StepTimer } from "./progress.ts";
import { inspectRunFolder, PRETRAIN_FILES, startRun } from "./run_folder.ts";
import { pretrainViews } from "./views.ts";

/** Everything a run is configured by; stored in each checkpoint. */
export interface PretrainArgs {
  /** The ImageFolder root (its `train` sub-folder is used), or null. */
  data: string | null;
  dummy: boolean;
  arch: ResNetName;
  epochs: number;
  startEpoch: number;
  batchSize: number;
  lr: number;
  momentum: number;
  wd: number;
  dim: number;
  predDim: number;
  eps: number;
  teacherMomentum: number;
  order: number;
  warmupEpochs: number;
  seed: number;
  workers: number;
  printFreq: number;
  resume: string | null;
  /** Replace the run already in `out` (never stored as true in a checkpoint). */
  overwrite: boolean;
  out: string;
  device: string;
  tf32: boolean;
  deterministic: boolean;
  imageSize: number;
  smallStem: boolean;
  width: number;
  maxIters: number | null;
}

const ARCHS = Object.keys(resnets);

/** The flag table: names and meaning as in `main_pretrain.py`. */
export const PRETRAIN_FLAGS: readonly FlagSpec[] = [
  {
    name: "arch",
    short: "a",
    kind: "string",
    meta: "ARCH",
    choices: ARCHS,
    help: `backbone: ${ARCHS.join(", ")} (default resnet50)`,
  },
  {
    name: "epochs",
    kind: "int",
    min: 1,
    help: "number of epochs (default 100)",
  },
  {
    name: "start-epoch",
    kind: "int",
    min: 0,
    help: "epoch to start at, for the schedules (default 0)",
  },
  {
    name: "batch-size",
    short: "b",
    kind: "int",
    min: 2,
    help: "total batch size m (default 1024)",
  },
  {
    name: "lr",
    kind: "number",
    min: 0,
    exclusiveMin: true,
    meta: "LR",
    help: "base learning rate, scaled by batch/256 (default 0.5)",
  },
  {
    name: "momentum",
    kind: "number",
    min: 0,
    max: 1,
    exclusiveMax: true,
    meta: "M",
    help: "SGD momentum, below 1 (default 0.9)",
  },
  {
    name: "wd",
    kind: "number",
    min: 0,
    meta: "W",
    help: "weight decay (default 1e-5)",
  },
  {
    name: "dim",
    kind: "int",
    min: 1,
    help: "projector output dimension d (default 2048)",
  },
  {
    name: "pred-dim",
    kind: "int",
    min: 1,
    help: "predictor hidden dimension (default 512)",
  },
  {
    name: "eps",
    kind: "number",
    min: 0,
    exclusiveMin: true,
    meta: "E",
    help: "squared error bound epsilon^2 (default 64)",
  },
  {
    name: "teacher-momentum",
    kind: "number",
    min: 0,
    max: 1,
    meta: "M",
    help: "teacher EMA momentum at the start, cosine to 1 (default 0.996)",
  },
  {
    name: "order",
    kind: "int",
    min: 1,
    help: "terms of the Taylor series of log det (default 4)",
  },
  {
    name: "warmup-epochs",
    kind: "int",
    min: 0,
    help: "epochs of lr and lambda warm-up (default 10)",
  },
  SHARED_FLAGS.seed,
  SHARED_FLAGS.workers,
  SHARED_FLAGS.printFreq,
  {
    name: "resume",
    kind: "string",
    meta: "PATH",
    help: "continue from this checkpoint (its flags are the defaults)",
  },
  {
    name: "out",
    kind: "string",
    meta: "DIR",
    help: "folder for checkpoints and log.jsonl (default runs/pretrain)",
  },
  {
    name: "overwrite",
    kind: "bool",
    help: "replace the run already in the --out folder",
  },
  SHARED_FLAGS.device,
  SHARED_FLAGS.tf32,
  SHARED_FLAGS.deterministic,
  {
    name: "image-size",
    kind: "int",
    min: 8,
    help: "side of the augmented views in pixels (default 224)",
  },
  {
    name: "small-stem",
    kind: "bool",
    help: "3x3 stride-1 first conv and no max-pool, for small images",
  },
  {
    name: "width",
    kind: "int",
    min: 1,
    help: "base width of the ResNet (default 64)",
  },
  {
    name: "dummy",
    kind: "bool",
    help: "random images instead of data, for timing",
  },
  {
    name: "max-iters",
    kind: "int",
    min: 1,
    help: "stop after N iterations, without a checkpoint (for timing)",
  },
  { name: "help", short: "h", kind: "bool", help: "show this help" },
];

/** The flags' defaults: everything but what each run gives or derives. */
type PretrainDefaults = Omit<
  PretrainArgs,
  "data" | "resume" | "maxIters" | "overwrite"
>;

/** The paper's recipe (DESIGN.md section 1). */
const PAPER: PretrainDefaults = {
  dummy: false,
  arch: "resnet50",
  epochs: 100,
  startEpoch: 0,
  batchSize: 1024,
  lr: 0.5,
  momentum: 0.9,
  wd: 1e-5,
  dim: 2048,
  predDim: 512,
  eps: 64,
  teacherMomentum: 0.996,
  order: 4,
  warmupEpochs: 10,
  seed: 0,
  workers: 2,
  printFreq: 10,
  out: "runs/pretrain",
  device: "cpu",
  tf32: false,
  deterministic: false,
  imageSize: 224,
  smallStem: false,
  width: 64,
};

/**
 * The demo on Fashion-MNIST, about ten minutes on a 2-core CPU: the
 * built-in 10,000 training images, a ResNet-18 of base width 16 with the
 * small-image stem on the native 28 px (no upscaling to 32 px: 23 % fewer
 * pixels per step), batch 256, d = 512, pred-dim 128, 6 epochs with one of
 * warm-up (9 min 38 s at 104.5 pairs/s on an idle 2-core machine; the probe
 * then reaches 80.4 % top-1 where 3 epochs gave 78.1 %). One worker thread
 * augments while the main thread (and OpenBLAS) computes.
 */
export const DEMO: Partial<PretrainArgs> = {
  arch: "resnet18",
  width: 16,
  smallStem: true,
  imageSize: 28,
  batchSize: 256,
  dim: 512,
  predDim: 128,
  epochs: 6,
  warmupEpochs: 1,
  workers: 1,
  out: "runs/demo",
};

export const USAGE = "deno task pretrain [DATA_DIR] [flags]";
const DESCRIPTION =
  `MEC pretraining of a ResNet on DATA_DIR/train (an ImageFolder tree), with
the paper's recipe as defaults. Without DATA_DIR (and without --dummy) it runs
a demo on the built-in Fashion-MNIST, sized to take about ten minutes on two
CPU cores. A checkpoint is written at every epoch end
(DIR/checkpoint_0000.safetensors, ...); Ctrl-C finishes the current step,
saves and exits.`;

const FLAG_FIELDS: Record<string, keyof PretrainArgs> = {
  arch: "arch",
  epochs: "epochs",
  "start-epoch": "startEpoch",
  "batch-size": "batchSize",
  lr: "lr",
  momentum: "momentum",
  wd: "wd",
  dim: "dim",
  "pred-dim": "predDim",
  eps: "eps",
  "teacher-momentum": "teacherMomentum",
  order: "order",
  "warmup-epochs": "warmupEpochs",
  seed: "seed",
  workers: "workers",
  "print-freq": "printFreq",
  resume: "resume",
  overwrite: "overwrite",
  out: "out",
  device: "device",
  tf32: "tf32",
  deterministic: "deterministic",
  "image-size": "imageSize",
  "small-stem": "smallStem",
  width: "width",
  dummy: "dummy",
  "max-iters": "maxIters",
};

/** Where a run starts: the next epoch and batch, and the last checkpoint. */
interface Position {
  epoch: number;
  batch: number;
  lastCheckpoint: string | null;
}

/** The resumable position and flags recorded in a checkpoint's metadata. */
interface PretrainMetadata {
  kind: "mec-pretrain";
  epoch: number;
  batch: number;
  iteration: number;
  itersPerEpoch: number;
  args: PretrainArgs;
}

/**
 * A resume checkpoint's metadata, checked: its kind, its flags by the rules
 * of the flag table, and a position that exists in its run. Throws one
 * sentence naming the checkpoint.
 */
function checkPretrainMetadata(
  m: Record<string, unknown>,
  path: string,
): PretrainMetadata {
  if (m.kind !== "mec-pretrain") {
    throw new Error(
      `The checkpoint ${path} was not written by deno task pretrain, so it cannot be resumed.`,
    );
  }
  const args = recordedSettings(
    m.args,
    PRETRAIN_FLAGS,
    FLAG_FIELDS,
    path,
    ["resume", "maxIters"],
  ) as Partial<PretrainArgs>;
  const data = (m.args as Record<string, unknown>).data;
  if (data !== undefined && data !== null && typeof data !== "string") {
    throw new Error(
      `The checkpoint ${path} records a data folder that is not a path.`,
    );
  }
  args.data = (data ?? null) as string | null;
  args.overwrite = false;
  const whole = (v: unknown): v is number =>
    typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  const { epoch, batch, iteration, itersPerEpoch } = m;
  const epochs = args.epochs ?? PAPER.epochs;
  if (
    !whole(itersPerEpoch) || itersPerEpoch < 1 || !whole(epoch) ||
    epoch > epochs || !whole(batch) || batch >= itersPerEpoch ||
    (epoch === epochs && batch > 0) ||
    iteration !== epoch * itersPerEpoch + batch
  ) {
    throw new Error(
      `The checkpoint ${path} records an impossible position: epoch ${
        JSON.stringify(epoch)
      }, batch ${JSON.stringify(batch)}, iteration ${
        JSON.stringify(iteration)
      } of ${JSON.stringify(itersPerEpoch)} per epoch and ${epochs} epochs.`,
    );
  }
  return {
    kind: "mec-pretrain",
    epoch,
    batch,
    iteration,
    itersPerEpoch,
    args: args as PretrainArgs,
  };
}

/** Checks of the flags against each other, given or recorded alike. */
function checkCombination(args: PretrainArgs): void {
  if (args.warmupEpochs > args.epochs) {
    throw new UsageError(
      `--warmup-epochs (${args.warmupEpochs}) cannot exceed --epochs (${args.epochs}).`,
    );
  }
  if (args.startEpoch >= args.epochs) {
    throw new UsageError(
      `--start-epoch (${args.startEpoch}) must be below --epochs (${args.epochs}), or there is nothing to train.`,
    );
  }
}

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
  const command = parseCommand(argv, PRETRAIN_FLAGS, FLAG_FIELDS);
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
    ...(demo ? DEMO : {}),
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

/** The training loop; returns the exit code. */
async function train(
  args: PretrainArgs,
  backend: Backend,
  model: MEC,
  optimizer: SGD,
  loader: DataLoader,
  position: Position,
  log: JsonLog,
  interrupt: Interrupt,
): Promise<number> {
  const itersPerEpoch = loader.length;
  const shape = {
    epochs: args.epochs,
    itersPerEpoch,
    warmupEpochs: args.warmupEpochs,
  };
  const total = args.epochs * itersPerEpoch;
  const baseLr = args.lr * args.batchSize / 256;
  const { lamda, mu } = mecConstants(args.batchSize, args.dim, args.eps);
  const timer = new StepTimer();
  const first = position.epoch * itersPerEpoch + position.batch;
  const last = args.maxIters === null
    ? total
    : Math.min(total, first + args.maxIters);
  let steps = 0;

  const save = async (epoch: number, batch: number, name: string) => {
    const path = join(args.out, name);
    const metadata: PretrainMetadata = {
      kind: "mec-pretrain",
      epoch,
      batch,
      iteration: epoch * itersPerEpoch + batch,
      itersPerEpoch,
      args: { ...args, resume: null, overwrite: false, maxIters: null },
    };
    try {
      await saveCheckpoint(path, {
        model,
        optimizer,
        metadata: metadata as unknown as Record<string, unknown>,
      });
    } catch (e) {
      throw new Error(
        `${
          (e as Error).message.replace(/\.$/, "")
        }; the last good checkpoint is ${
          position.lastCheckpoint ?? "none (no epoch had finished)"
        }.`,
        { cause: e },
      );
    }
    position.lastCheckpoint = path;
    log.write({ event: "checkpoint", path, epoch, batch });
    return path;
  };

  for (let epoch = position.epoch; epoch < args.epochs; epoch++) {
    const startBatch = epoch === position.epoch ? position.batch : 0;
    let mark = performance.now();
    let stopped: "interrupt" | "max-iters" | null = null;
    let nextBatch = startBatch;
    // The summary (the generator's return value) is read from the loader.
    const batches: AsyncGenerator<Batch, unknown> = loader.epoch(
      epoch,
      startBatch,
    );
    const interrupted = interrupt.requestedSignal.then(() => null);
    while (true) {
      // Ctrl-C while waiting for data stops the wait: there is no step to
      // finish, so the position before the awaited batch is saved at once.
      const pending = batches.next();
      const next = await Promise.race([pending, interrupted]);
      if (next === null) {
        pending.catch(() => {});
        stopped = "interrupt";
        break;
      }
      if (next.done) break;
      const batch = next.value;
      const dataSeconds = (performance.now() - mark) / 1000;
      const iteration = epoch * itersPerEpoch + batch.index;
      const lrNow = cosineSchedule(iteration, baseLr, 0, shape);
      const teacherMomentum = cosineSchedule(
        iteration,
        args.teacherMomentum,
        1,
        { epochs: args.epochs, itersPerEpoch },
      );
      const lamdaInv = lamdaInvSchedule(iteration, lamda, shape);
      let result;
      try {
        result = scope(() => {
          const [x1, x2] = batchTensors(batch);
          return mecStep(model, optimizer, x1, x2, {
            iteration,
            lr: lrNow,
            teacherMomentum,
            lamdaInv,
            mu,
            order: args.order,
          });
        });
      } catch (e) {
        if (e instanceof Error && /^the MEC loss is/.test(e.message)) {
          throw new Error(
            `Training stopped: ${e.message}; the last good checkpoint is ${
              position.lastCheckpoint ?? "none (no epoch had finished)"
            }.`,
          );
        }
        throw e;
      }
      loader.recycle(batch);
      // The optimizer's and the teacher's updates may still be queued.
      backend.synchronize();
      const now = performance.now();
      const seconds = (now - mark) / 1000;
      mark = now;
      timer.record(seconds, dataSeconds, args.batchSize);
      steps++;
      nextBatch = batch.index + 1;
      const imagesPerSecond = args.batchSize / seconds;
      log.write({
        event: "step",
        epoch,
        batch: batch.index,
        iteration,
        loss: result.loss,
        mec: result.mec,
        lr: lrNow,
        lamdaInv,
        teacherMomentum,
        time: seconds,
        data: dataSeconds,
        imagesPerSecond,
      });
      if (batch.index % args.printFreq === 0 || iteration + 1 === last) {
        const remaining = (last - iteration - 1) * timer.batchTime.average;
        const width = String(itersPerEpoch).length;
        console.log(
          `Epoch: [${epoch}][${
            String(batch.index).padStart(width)
          }/${itersPerEpoch}]  Time ${seconds.toFixed(3)} (${
            timer.batchTime.average.toFixed(3)
          })  Data ${dataSeconds.toFixed(3)} (${
            timer.dataTime.average.toFixed(3)
          })  Loss ${fmt(result.loss)}  MEC ${fmt(result.mec)}  lr ${
            fmt(lrNow)
          }  ${imagesPerSecond.toFixed(1)} img/s  ETA ${
            formatDuration(remaining)
          }`,
        );
      }
      if (interrupt.requested) {
        stopped = "interrupt";
        await batches.return(undefined);
        break;
      }
      if (iteration + 1 >= last && args.maxIters !== null) {
        stopped = "max-iters";
        await batches.return(undefined);
        break;
      }
    }
    if (stopped === "max-iters") {
      reportSpeed(timer, steps, log);
      return EXIT.ok;
    }
    if (stopped === "interrupt") {
      const name = nextBatch >= itersPerEpoch
        ? `checkpoint_${pad(epoch)}.safetensors`
        : `checkpoint_${pad(epoch)}_partial.safetensors`;
      const path = nextBatch >= itersPerEpoch
        ? await save(epoch + 1, 0, name)
        : await save(epoch, nextBatch, name);
      console.log(
        `Stopped by Ctrl-C at epoch ${epoch}, batch ${nextBatch}; saved ${path} (continue with --resume ${path}).`,
      );
      return EXIT.interrupted;
    }
    const summary = loader.lastSummary;
    if (summary !== null) {
      console.log(formatEpochSummary(summary));
      log.write({
        event: "epoch",
        epoch,
        batches: summary.batches,
        samples: summary.samples,
        skipped: summary.skipped,
        unreadable: unreadableFiles(summary),
        timing: summary.timing,
      });
    }
    const path = await save(
      epoch + 1,
      0,
      `checkpoint_${pad(epoch)}.safetensors`,
    );
    console.log(`Saved ${path}.`);
  }
  reportSpeed(timer, steps, log);
  return EXIT.ok;
}

function pad(epoch: number): string {
  return String(epoch).padStart(4, "0");
}

/** The steady-state throughput line (and log record) at the end of a run. */
function reportSpeed(timer: StepTimer, steps: number, log: JsonLog): void {
  const s = timer.steady();
  if (s.steps === 0) {
    console.log(`Done: ${steps} iterations (too few to time steadily).`);
    return;
  }
  log.write({
    event: "speed",
    steps: s.steps,
    imagesPerSecond: s.imagesPerSecond,
    dataShare: s.dataShare,
  });
  console.log(
    `Done: ${steps} iterations; steady state ${
      s.imagesPerSecond.toFixed(1)
    } images/s (pairs of views), ${
      (100 * s.dataShare).toFixed(1)
    } % of the time waiting for data (${s.steps} iterations after the first ${timer.skip}).`,
  );
}

if (import.meta.main) runMain(() => pretrain(Deno.args));
