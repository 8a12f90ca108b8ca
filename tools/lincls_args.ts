/**
 * What configures a linear probe: the argument record, its flag table
 * (names and meaning as in the paper's `main_lincls.py`), the official
 * defaults, and the metadata a probe checkpoint records, checked by the same
 * rules as the command line.
 *
 * @module
 */

import type { ResNetName } from "../nn/resnet.ts";
import { flag, type FlagSpec, recordedSettings } from "./flags.ts";

/** Everything a probe is configured by; stored in each probe checkpoint. */
export interface LinclsArgs {
  data: string | null;
  pretrained: string | null;
  randomInit: boolean;
  rawPixels: boolean;
  arch: ResNetName;
  width: number;
  smallStem: boolean;
  imageSize: number;
  epochs: number;
  startEpoch: number;
  batchSize: number;
  lr: number;
  momentum: number;
  wd: number;
  lars: boolean;
  cacheFeatures: boolean;
  seed: number;
  workers: number;
  printFreq: number;
  resume: string | null;
  evaluate: boolean;
  /** Replace the probe already in `out` (never stored as true). */
  overwrite: boolean;
  out: string;
  /** A TensorBoard event file beside the log (tools/tensorboard.ts). */
  tensorboard: boolean;
  device: string;
  tf32: boolean;
  deterministic: boolean;
}

export const LINCLS_FLAGS: readonly FlagSpec[] = [
  {
    name: "pretrained",
    kind: "string",
    meta: "CKPT",
    help:
      "backbone weights: a pretrain checkpoint (its student encoder), the official MEC code's checkpoint_NNNN.pth.tar, or a torchvision ResNet (.pth or safetensors)",
  },
  flag("arch", "backbone (default: the checkpoint's, else resnet50)"),
  flag("width", "base width (default: the checkpoint's, else 64)"),
  flag("small-stem", "small-image stem (default: the checkpoint's)"),
  flag(
    "image-size",
    "input side in pixels (default: the checkpoint's --eval-size or --image-size, else 224)",
  ),
  flag("epochs", "number of epochs (default 100)"),
  flag("start-epoch", "epoch to start at (default 0)"),
  flag("batch-size", "batch size B (default 4096)"),
  flag("lr", "base learning rate, scaled by B/256 (default 0.03)"),
  flag("momentum", "momentum, below 1 (default 0.9)"),
  flag("wd", "weight decay (default 0)"),
  { name: "lars", kind: "bool", help: "LARS (LARC, trust 0.001) around SGD" },
  {
    name: "cache-features",
    kind: "bool",
    help:
      "extract features once (eval transform) and train the head on them (default in the demo)",
  },
  {
    name: "random-init",
    kind: "bool",
    help: "baseline: probe the network at MEC's initialisation",
  },
  {
    name: "raw-pixels",
    kind: "bool",
    help: "baseline: probe the evaluation view's pixels",
  },
  flag("seed"),
  flag("workers"),
  flag("print-freq"),
  flag(
    "resume",
    "continue from (or with -e, evaluate) a probe checkpoint",
  ),
  {
    name: "evaluate",
    short: "e",
    kind: "bool",
    help: "evaluate the probe given by --resume on the validation split",
  },
  flag(
    "out",
    "folder for probe checkpoints and log.jsonl (default runs/lincls)",
  ),
  flag("overwrite", "replace the probe already in the --out folder"),
  flag(
    "tensorboard",
    "TensorBoard event file in the --out folder: the probe's loss, lr, top-1 and top-5 per epoch (default on; --no-tensorboard turns it off)",
  ),
  flag("device"),
  flag("tf32"),
  flag("deterministic"),
  flag("help"),
];

/** main_lincls.py's defaults with MEC's settings (DESIGN.md section 1). */
export const OFFICIAL: Omit<
  LinclsArgs,
  "data" | "pretrained" | "resume" | "overwrite"
> = {
  randomInit: false,
  rawPixels: false,
  arch: "resnet50",
  width: 64,
  smallStem: false,
  imageSize: 224,
  epochs: 100,
  startEpoch: 0,
  batchSize: 4096,
  lr: 0.03,
  momentum: 0.9,
  wd: 0,
  lars: false,
  cacheFeatures: false,
  seed: 0,
  workers: 2,
  printFreq: 10,
  evaluate: false,
  out: "runs/lincls",
  tensorboard: true,
  device: "cpu",
  tf32: false,
  deterministic: false,
};

export const USAGE = "deno task lincls --pretrained CKPT [DATA_DIR] [flags]";
export const DESCRIPTION =
  `Linear probe of a frozen backbone on DATA_DIR/train, evaluated on DATA_DIR/val
after every epoch (top-1, top-5), as the paper's main_lincls.py. Without
DATA_DIR it probes on Fashion-MNIST (Debian's full set where installed, else
the built-in subset; validation held out of the training images, the test
split measured once), with the demo pretraining's last checkpoint (runs/demo)
unless --pretrained is given.
Probe checkpoints: DIR/probe_last.safetensors and DIR/probe_best.safetensors.`;

/** A probe checkpoint's metadata. */
export interface ProbeMetadata {
  kind: "mec-lincls";
  /** The next epoch to train. */
  epoch: number;
  bestAcc1: number;
  args: LinclsArgs;
}

/** The flags that describe the backbone, recorded by pretraining too. */
export const ARCH_FLAGS = ["arch", "width", "small-stem", "image-size"];

/**
 * The backbone a pretraining checkpoint's recorded flags describe, checked
 * by the probe's flag rules: its architecture, and as the image side the
 * pretraining's evaluation side (`--eval-size`) where it recorded one, else
 * the side it trained on.
 */
export function recordedArch(
  recorded: unknown,
  path: string,
): Partial<LinclsArgs> {
  const { evalSize, ...arch } = recordedSettings<
    LinclsArgs & { evalSize: number | null }
  >(
    recorded,
    [
      ...LINCLS_FLAGS.filter((f) => ARCH_FLAGS.includes(f.name)),
      flag("eval-size", "the pretraining's evaluation side"),
    ],
    path,
    ["evalSize"],
  );
  return evalSize === undefined || evalSize === null
    ? arch
    : { ...arch, imageSize: evalSize };
}

/**
 * A probe checkpoint's metadata, checked: its kind, its flags by the rules
 * of the flag table, and its epoch and best accuracy. Throws one sentence
 * naming the checkpoint.
 */
export function checkProbeMetadata(
  m: Record<string, unknown>,
  path: string,
): ProbeMetadata {
  if (m.kind !== "mec-lincls") {
    throw new Error(
      `The checkpoint ${path} is not a probe written by deno task lincls.`,
    );
  }
  const args = recordedSettings<LinclsArgs>(
    m.args,
    LINCLS_FLAGS,
    path,
    ["pretrained", "resume"],
  );
  const epoch = m.epoch;
  const epochs = args.epochs ?? OFFICIAL.epochs;
  if (
    typeof epoch !== "number" || !Number.isSafeInteger(epoch) || epoch < 0 ||
    epoch > epochs
  ) {
    throw new Error(
      `The checkpoint ${path} records an impossible epoch ${
        JSON.stringify(epoch)
      } of ${epochs}.`,
    );
  }
  const best = m.bestAcc1;
  if (typeof best !== "number" || !(best >= 0 && best <= 100)) {
    throw new Error(
      `The checkpoint ${path} records a best accuracy of ${
        JSON.stringify(best)
      }, not a percentage.`,
    );
  }
  return {
    kind: "mec-lincls",
    epoch,
    bestAcc1: best,
    args: args as LinclsArgs,
  };
}
