/**
 * What configures a pretraining run: the argument record, its flag table
 * (names and meaning as in the paper's `main_pretrain.py`), the paper's
 * recipe as defaults, and the metadata a checkpoint records to resume
 * exactly, checked by the same rules as the command line.
 *
 * @module
 */

import type { ResNetName } from "../nn/resnet.ts";
import { UsageError } from "./cli.ts";
import { ARCHS, flag, type FlagSpec, recordedSettings } from "./flags.ts";

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
  /** Decode JPEGs at a reduced size where the crops allow (DataLoader's fastDecode). */
  fastDecode: boolean;
  printFreq: number;
  resume: string | null;
  /** Replace the run already in `out` (never stored as true in a checkpoint). */
  overwrite: boolean;
  out: string;
  /** A TensorBoard event file beside the log (tools/tensorboard.ts). */
  tensorboard: boolean;
  device: string;
  tf32: boolean;
  deterministic: boolean;
  imageSize: number;
  /** Side of the evaluation images (kNN monitor, the probe's default), or null: `imageSize`. */
  evalSize: number | null;
  /** RandomResizedCrop's smallest area fraction of both views. */
  minScale: number;
  smallStem: boolean;
  width: number;
  maxIters: number | null;
  /** Print each step's time and memory by op kind (nn/profile.ts); never stored. */
  profile: boolean;
  /** The online kNN monitor (tools/knn_monitor.ts): on or off. */
  knn: boolean;
  /** Also measure every N iterations (0: at epoch ends only). */
  knnEvery: number;
  /** Memory bank: the first N training images of each class. */
  knnBank: number;
  /** Queries: the first N validation images of each class. */
  knnQueries: number;
}

/** The flag table: names and meaning as in `main_pretrain.py`. */
export const PRETRAIN_FLAGS: readonly FlagSpec[] = [
  flag("arch", `backbone: ${ARCHS.join(", ")} (default resnet50)`),
  flag("epochs", "number of epochs (default 100)"),
  flag("start-epoch", "epoch to start at, for the schedules (default 0)"),
  flag("batch-size", "total batch size m (default 1024)"),
  flag("lr", "base learning rate, scaled by batch/256 (default 0.5)"),
  flag("momentum", "SGD momentum, below 1 (default 0.9)"),
  flag("wd", "weight decay (default 1e-5)"),
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
  flag("seed"),
  flag("workers"),
  {
    name: "fast-decode",
    kind: "bool",
    help:
      "decode each JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling) when both views' crops are that much larger than --image-size: faster on large photographs, slightly different pixels (needs libturbojpeg; default off)",
  },
  flag("print-freq"),
  flag("resume", "continue from this checkpoint (its flags are the defaults)"),
  flag("out", "folder for checkpoints and log.jsonl (default runs/pretrain)"),
  flag("overwrite", "replace the run already in the --out folder"),
  flag(
    "tensorboard",
    "TensorBoard event file in the --out folder: loss, MEC, lr, lambda_inv, teacher momentum, images/s, data wait, kNN top-1 per iteration (default on; --no-tensorboard turns it off)",
  ),
  flag("device"),
  flag("tf32"),
  flag("deterministic"),
  flag("image-size", "side of the augmented views in pixels (default 224)"),
  flag(
    "eval-size",
    "side of the evaluation images, the kNN monitor's and the probe's default (default: --image-size); random crops show objects larger than the whole image does at the same side, so evaluating above the training side matches the two",
  ),
  {
    name: "min-scale",
    kind: "number",
    min: 0,
    exclusiveMin: true,
    max: 1,
    meta: "S",
    help:
      "smallest fraction of the image's area a view's random crop covers (RandomResizedCrop's scale=(S, 1); default 0.2)",
  },
  flag(
    "small-stem",
    "3x3 stride-1 first conv and no max-pool, for small images",
  ),
  flag("width", "base width of the ResNet (default 64)"),
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
  {
    name: "profile",
    kind: "bool",
    help:
      "after each step, print its time, calls and bytes by op kind (convolutions, GEMM, batch norm, ReLU, pooling, elementwise, optimiser, allocation, copies) and the peak of live, cached and resident memory (the same as MEC_PROFILE=1)",
  },
  {
    name: "knn",
    kind: "bool",
    help:
      "online weighted kNN top-1 of the teacher's backbone at each epoch end: bank from DATA_DIR/train, queries from DATA_DIR/val (default on in the demo; --no-knn turns it off)",
  },
  {
    name: "knn-every",
    kind: "int",
    min: 0,
    help: "also measure kNN every N iterations (default 0: epoch ends only)",
  },
  {
    name: "knn-bank",
    kind: "int",
    min: 1,
    help:
      "kNN memory bank: the first N training images of each class (default 20)",
  },
  {
    name: "knn-queries",
    kind: "int",
    min: 1,
    help:
      "kNN queries: the first N validation images of each class (default 10)",
  },
  flag("help"),
];

/** The flags' defaults: everything but what each run gives or derives. */
export type PretrainDefaults = Omit<
  PretrainArgs,
  "data" | "resume" | "maxIters" | "overwrite" | "profile"
>;

/** The paper's recipe (DESIGN.md section 1). */
export const PAPER: PretrainDefaults = {
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
  fastDecode: false,
  printFreq: 10,
  out: "runs/pretrain",
  tensorboard: true,
  device: "cpu",
  tf32: false,
  deterministic: false,
  imageSize: 224,
  evalSize: null,
  minScale: 0.2,
  smallStem: false,
  width: 64,
  // Off with a DATA_DIR: the monitor needs a val folder, and on ImageNet
  // 20 + 10 images of each class cost about 1/40 of an epoch.
  knn: false,
  knnEvery: 0,
  knnBank: 20,
  knnQueries: 10,
};

export const USAGE = "deno task pretrain [DATA_DIR] [flags]";
export const DESCRIPTION =
  `MEC pretraining of a ResNet on DATA_DIR/train (an ImageFolder tree), with
the paper's recipe as defaults. Without DATA_DIR (and without --dummy) it runs
a demo on the built-in Fashion-MNIST, sized to take about ten minutes on two
CPU cores. A checkpoint is written at every epoch end
(DIR/checkpoint_0000.safetensors, ...); Ctrl-C finishes the current step,
saves and exits.`;

/** The side the kNN monitor and, by default, the probe evaluate at. */
export function evalSizeOf(
  args: Pick<PretrainArgs, "imageSize" | "evalSize">,
): number {
  return args.evalSize ?? args.imageSize;
}

/** The resumable position and flags recorded in a checkpoint's metadata. */
export interface PretrainMetadata {
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
export function checkPretrainMetadata(
  m: Record<string, unknown>,
  path: string,
): PretrainMetadata {
  if (m.kind !== "mec-pretrain") {
    throw new Error(
      `The checkpoint ${path} was not written by deno task pretrain, so it cannot be resumed.`,
    );
  }
  const args = recordedSettings<PretrainArgs>(
    m.args,
    PRETRAIN_FLAGS,
    path,
    ["resume", "maxIters", "evalSize"],
  );
  const data = (m.args as Record<string, unknown>).data;
  if (data !== undefined && data !== null && typeof data !== "string") {
    throw new Error(
      `The checkpoint ${path} records a data folder that is not a path.`,
    );
  }
  args.data = (data ?? null) as string | null;
  args.overwrite = false;
  args.profile = false;
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
export function checkCombination(args: PretrainArgs): void {
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
  if (!args.knn && args.knnEvery > 0) {
    throw new UsageError(
      `--knn-every ${args.knnEvery} needs the kNN monitor: add --knn.`,
    );
  }
  if (args.fastDecode && (args.dummy || args.data === null)) {
    throw new UsageError(
      `--fast-decode needs a DATA_DIR of JPEG files: ${
        args.dummy
          ? "--dummy's random images"
          : "the demo's Fashion-MNIST images"
      } are not decoded.`,
    );
  }
  if (args.knn && args.dummy) {
    throw new UsageError(
      "--knn cannot be combined with --dummy: random images have no classes to recognise.",
    );
  }
}
