/**
 * `deno task lincls --pretrained CKPT [DATA_DIR] [flags]`: linear probing of
 * a frozen backbone, as the paper's `main_lincls.py` does it: the backbone
 * in eval mode (BN on running statistics) and untouched, a head of
 * BatchNorm1d(affine=False, eps=1e-6) + Linear with N(0, 0.01) weights,
 * SGD (or `--lars`) with a per-epoch cosine learning rate, top-1 and top-5
 * on the validation split after every epoch, the best probe kept.
 *
 * Two ways to feed the head, with the same mathematics when the training
 * transform is deterministic:
 * - augmented (default with DATA_DIR): RandomResizedCrop + flip through the
 *   backbone at every step, as the official script does;
 * - cached features (`--cache-features`, the default of the demo): every
 *   image goes through the backbone once with the evaluation transform and
 *   the head is trained on those features, reshuffled every epoch. The
 *   backbone is frozen and in eval mode, so its features of an image never
 *   change; this only drops the training-time augmentation, and makes 100
 *   epochs on Fashion-MNIST take seconds instead of hours.
 *
 * Baselines for the demo: `--random-init` probes the network at the exact
 * initialisation MEC pretraining starts from (same seed, zero-initialised
 * residual gammas), and `--raw-pixels` probes the evaluation view's pixels.
 *
 * @module
 */

import { join, resolve } from "node:path";
import {
  accuracy,
  crossEntropy,
  DataLoader,
  type Dataset,
  fashionMnist,
  Generator,
  imageFolder,
  LARS,
  Layer,
  MEC,
  type Module,
  noGrad,
  type ResNet,
  type ResNetName,
  resnets,
  saveCheckpoint,
  scope,
  type Sequential,
  SGD,
  type Tensor,
  tensor,
} from "../mod.ts";
import {
  capWorkers,
  exists,
  EXIT,
  type FlagSpec,
  helpText,
  openDevice,
  parseCommand,
  recordedSettings,
  runMain,
  SHARED_FLAGS,
  UsageError,
} from "./cli.ts";
import {
  ACTIVATION_COPIES,
  checkMemory,
  resnetCost,
  trainingMemory,
} from "./memory.ts";
import {
  backboneState,
  describeArch,
  loadInto,
  readCheckpoint,
} from "./models.ts";
import { assertFrozen, probeHead, snapshotState } from "./probe.ts";
import { DEMO } from "./pretrain.ts";
import { fmt, JsonLog } from "./progress.ts";
import { inspectRunFolder, LINCLS_FILES, startRun } from "./run_folder.ts";
import { probeEvalViewFor, probeTrainViewFor } from "./views.ts";

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
  device: string;
  tf32: boolean;
  deterministic: boolean;
}

const ARCHS = Object.keys(resnets);

export const LINCLS_FLAGS: readonly FlagSpec[] = [
  {
    name: "pretrained",
    kind: "string",
    meta: "CKPT",
    help:
      "backbone weights: a pretrain checkpoint (its student encoder) or a torchvision-named ResNet safetensors",
  },
  {
    name: "arch",
    short: "a",
    kind: "string",
    meta: "ARCH",
    choices: ARCHS,
    help: "backbone (default: the checkpoint's, else resnet50)",
  },
  {
    name: "width",
    kind: "int",
    min: 1,
    help: "base width (default: the checkpoint's, else 64)",
  },
  {
    name: "small-stem",
    kind: "bool",
    help: "small-image stem (default: the checkpoint's)",
  },
  {
    name: "image-size",
    kind: "int",
    min: 8,
    help: "input side in pixels (default: the checkpoint's, else 224)",
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
    help: "epoch to start at (default 0)",
  },
  {
    name: "batch-size",
    short: "b",
    kind: "int",
    min: 2,
    help: "batch size B (default 4096)",
  },
  {
    name: "lr",
    kind: "number",
    min: 0,
    exclusiveMin: true,
    meta: "LR",
    help: "base learning rate, scaled by B/256 (default 0.03)",
  },
  {
    name: "momentum",
    kind: "number",
    min: 0,
    max: 1,
    exclusiveMax: true,
    meta: "M",
    help: "momentum, below 1 (default 0.9)",
  },
  {
    name: "wd",
    kind: "number",
    min: 0,
    meta: "W",
    help: "weight decay (default 0)",
  },
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
  SHARED_FLAGS.seed,
  SHARED_FLAGS.workers,
  SHARED_FLAGS.printFreq,
  {
    name: "resume",
    kind: "string",
    meta: "PATH",
    help: "continue from (or with -e, evaluate) a probe checkpoint",
  },
  {
    name: "evaluate",
    short: "e",
    kind: "bool",
    help: "evaluate the probe given by --resume on the validation split",
  },
  {
    name: "out",
    kind: "string",
    meta: "DIR",
    help: "folder for probe checkpoints and log.jsonl (default runs/lincls)",
  },
  {
    name: "overwrite",
    kind: "bool",
    help: "replace the probe already in the --out folder",
  },
  SHARED_FLAGS.device,
  SHARED_FLAGS.tf32,
  SHARED_FLAGS.deterministic,
  { name: "help", short: "h", kind: "bool", help: "show this help" },
];

const FLAG_FIELDS: Record<string, keyof LinclsArgs> = {
  pretrained: "pretrained",
  arch: "arch",
  width: "width",
  "small-stem": "smallStem",
  "image-size": "imageSize",
  epochs: "epochs",
  "start-epoch": "startEpoch",
  "batch-size": "batchSize",
  lr: "lr",
  momentum: "momentum",
  wd: "wd",
  lars: "lars",
  "cache-features": "cacheFeatures",
  "random-init": "randomInit",
  "raw-pixels": "rawPixels",
  seed: "seed",
  workers: "workers",
  "print-freq": "printFreq",
  resume: "resume",
  evaluate: "evaluate",
  overwrite: "overwrite",
  out: "out",
  device: "device",
  tf32: "tf32",
  deterministic: "deterministic",
};

/** main_lincls.py's defaults with MEC's settings (DESIGN.md section 1). */
const OFFICIAL: Omit<
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
  device: "cpu",
  tf32: false,
  deterministic: false,
};

const USAGE = "deno task lincls --pretrained CKPT [DATA_DIR] [flags]";
const DESCRIPTION =
  `Linear probe of a frozen backbone on DATA_DIR/train, evaluated on DATA_DIR/val
after every epoch (top-1, top-5), as the paper's main_lincls.py. Without
DATA_DIR it probes on the built-in Fashion-MNIST (train/test split), with the
demo pretraining's last checkpoint (runs/demo) unless --pretrained is given.
Probe checkpoints: DIR/probe_last.safetensors and DIR/probe_best.safetensors.`;

/** A probe checkpoint's metadata. */
interface ProbeMetadata {
  kind: "mec-lincls";
  /** The next epoch to train. */
  epoch: number;
  bestAcc1: number;
  args: LinclsArgs;
}

/** The backbone (or none, for raw pixels) with the head registered as `fc`. */
class Probe {
  constructor(
    /** The module whose state dict is saved: ResNet with fc = head, or the head's holder. */
    readonly net: Module,
    readonly backbone: ResNet | null,
    readonly head: Sequential,
    readonly featureDim: number,
  ) {}

  /** Frozen features of a batch [n, 3, s, s] (no autograd, eval mode). */
  features(x: Tensor): Tensor {
    return noGrad(() =>
      this.backbone === null ? x.flatten(1) : this.backbone.features(x)
    );
  }
}

/** Holds a head under the name `fc`, for the raw-pixel probe's checkpoints. */
class HeadOnly extends Layer {
  constructor(readonly head: Sequential) {
    super();
    this.addModule("fc", head);
  }

  forward(x: Tensor): Tensor {
    return this.head.forward(x.flatten(1));
  }
}

/** The flags that describe the backbone, recorded by pretraining too. */
const ARCH_FLAGS = ["arch", "width", "small-stem", "image-size"];

/**
 * A probe checkpoint's metadata, checked: its kind, its flags by the rules
 * of the flag table, and its epoch and best accuracy. Throws one sentence
 * naming the checkpoint.
 */
function checkProbeMetadata(
  m: Record<string, unknown>,
  path: string,
): ProbeMetadata {
  if (m.kind !== "mec-lincls") {
    throw new Error(
      `The checkpoint ${path} is not a probe written by deno task lincls.`,
    );
  }
  const args = recordedSettings(
    m.args,
    LINCLS_FLAGS,
    FLAG_FIELDS,
    path,
    ["pretrained", "resume"],
  ) as Partial<LinclsArgs>;
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

/**
 * Checks the probe's host memory before the network is built: the loader's
 * batches (of the augmented training view, or of the evaluation view in
 * chunks for cached features) and one chunk's frozen forward pass.
 */
function checkProbeMemory(
  args: LinclsArgs,
  trainLength: number,
  device: string,
): void {
  const batch = args.cacheFeatures
    ? CHUNK
    : Math.max(CHUNK, Math.min(args.batchSize, trainLength));
  const loader = trainingMemory({
    arch: args.arch,
    width: args.width,
    smallStem: args.smallStem,
    imageSize: args.imageSize,
    views: 1,
    workers: args.workers,
    passes: 0,
    extraParameters: 0,
    parameterCopies: args.rawPixels ? 0 : 1,
  });
  const cost = resnetCost(
    args.arch,
    args.width,
    args.smallStem,
    args.imageSize,
  );
  const forward = args.rawPixels || device !== "cpu"
    ? 0
    : 4 * CHUNK * ACTIVATION_COPIES * cost.activations;
  checkMemory(
    { fixed: loader.fixed + forward, perSample: loader.perSample },
    batch,
    `Probing ${
      args.rawPixels ? "raw pixels" : `a ${describeArch(args)}`
    } on batches of ${batch} at ${args.imageSize} px`,
    "--image-size",
  );
}

/** Runs the tool on `argv`; returns the exit code. */
export async function lincls(argv: readonly string[]): Promise<number> {
  const command = parseCommand(argv, LINCLS_FLAGS, FLAG_FIELDS);
  if (command.help) {
    console.log(helpText(USAGE, DESCRIPTION, LINCLS_FLAGS));
    return EXIT.ok;
  }
  const given = command.given;
  const data = command.data;
  const demo = data === null;
  if (given.evaluate && given.resume === undefined) {
    throw new UsageError(
      "--evaluate needs the probe checkpoint to evaluate, given by --resume PATH.",
    );
  }
  const sources = [given.randomInit, given.rawPixels, given.pretrained]
    .filter((v) => v !== undefined && v !== false).length;
  if (sources > 1) {
    throw new UsageError(
      "Give only one of --pretrained, --random-init and --raw-pixels.",
    );
  }
  if (given.resume !== undefined) {
    if (sources > 0) {
      throw new UsageError(
        "--pretrained, --random-init and --raw-pixels cannot be combined with --resume: the probe checkpoint holds the backbone it probes.",
      );
    }
    if (given.startEpoch !== undefined) {
      throw new UsageError(
        "--start-epoch cannot be combined with --resume: the probe checkpoint records the epoch to continue from.",
      );
    }
    if (given.overwrite === true) {
      throw new UsageError(
        "Give --resume or --overwrite, not both: --resume continues the probe the checkpoint belongs to.",
      );
    }
  }

  // The probe checkpoint (to resume or evaluate) carries the whole network
  // and the flags it was made with, checked as flags are.
  const probeCkpt = given.resume === undefined
    ? null
    : await readCheckpoint(given.resume as string, "probe checkpoint");
  let stored: Partial<LinclsArgs> = {};
  let probeMeta: ProbeMetadata | null = null;
  if (probeCkpt !== null) {
    probeMeta = checkProbeMetadata(probeCkpt.metadata, given.resume as string);
    stored = probeMeta.args;
  }
  let pretrained = (given.pretrained ?? stored.pretrained ?? null) as
    | string
    | null;
  const randomInit =
    (given.randomInit ?? stored.randomInit ?? false) as boolean;
  const rawPixels = (given.rawPixels ?? stored.rawPixels ?? false) as boolean;
  if (pretrained === null && !randomInit && !rawPixels) {
    if (!demo) {
      throw new UsageError(
        "Give the backbone to probe with --pretrained CKPT (or --random-init or --raw-pixels for a baseline).",
      );
    }
    pretrained = await latestDemoCheckpoint();
  }
  const pretrainedCkpt = pretrained === null || probeCkpt !== null
    ? null
    : await readCheckpoint(pretrained, "pretrained checkpoint");
  // The architecture a pretraining checkpoint records, by the flags' rules.
  const recorded = pretrainedCkpt === null ||
      pretrainedCkpt.metadata.args === undefined
    ? {}
    : recordedSettings(
      pretrainedCkpt.metadata.args,
      LINCLS_FLAGS.filter((f) => ARCH_FLAGS.includes(f.name)),
      FLAG_FIELDS,
      pretrained!,
    ) as Partial<LinclsArgs>;
  const args = {
    ...OFFICIAL,
    ...(demo
      ? {
        arch: DEMO.arch,
        width: DEMO.width,
        smallStem: DEMO.smallStem,
        imageSize: DEMO.imageSize,
        cacheFeatures: true,
        workers: 1,
        out: "runs/demo-lincls",
      }
      : {}),
    ...recorded,
    ...stored,
    data,
    pretrained,
    randomInit,
    rawPixels,
    resume: null,
    evaluate: false,
    overwrite: false,
    ...given,
  } as LinclsArgs;
  if (args.startEpoch >= args.epochs) {
    throw new UsageError(
      `--start-epoch (${args.startEpoch}) must be below --epochs (${args.epochs}), or there is nothing to train.`,
    );
  }
  if (probeMeta !== null && !given.evaluate && probeMeta.epoch >= args.epochs) {
    throw new UsageError(
      `The probe checkpoint ${given.resume} is the end of its run (${probeMeta.epoch} of ${args.epochs} epochs): there is nothing to continue; give a larger --epochs, or -e to evaluate it.`,
    );
  }
  args.workers = capWorkers(args.workers);
  // The data folders are there (listing them may take a while), before the
  // run folder is looked at.
  if (!demo) await splitFolders(data);
  const folder = given.evaluate ? null : await inspectRunFolder(
    args.out,
    LINCLS_FILES,
    {
      resume: probeCkpt !== null,
      // Probing the demo again replaces the last demo probe in its folder.
      overwrite: given.overwrite === true || (demo && given.out === undefined),
    },
  );
  // The device and numerics are this run's choice, never the checkpoint's.
  const deviceName = (given.device ?? "cpu") as string;
  args.device = deviceName;
  args.tf32 = (given.tf32 ?? false) as boolean;
  args.deterministic = (given.deterministic ?? false) as boolean;
  const backend = await openDevice(deviceName, {
    tf32: args.tf32,
    deterministic: args.deterministic,
  });

  const what = rawPixels
    ? "raw pixels"
    : randomInit
    ? `a randomly initialised ${describeArch(args)}`
    : `${describeArch(args)} from ${pretrained}`;
  if (demo) {
    console.log(
      `Demo: no DATA_DIR given, so the linear probe of ${what} trains on the built-in Fashion-MNIST's train split and is evaluated on its test split; results go to ${args.out}.`,
    );
  } else {
    console.log(`Linear probe of ${what}.`);
  }

  const [train, val] = await openData(args, demo);
  checkProbeMemory(args, train.length, deviceName);
  const probe = buildProbe(args, train.classes.length);
  if (probeCkpt !== null) {
    loadInto(
      probe.net,
      probeCkpt.model,
      args.resume ?? (given.resume as string),
      `probe of ${rawPixels ? "raw pixels" : describeArch(args)}`,
    );
  } else if (pretrainedCkpt !== null) {
    const backbone = probe.backbone!;
    // Compare and load without the head: the checkpoint's fc is not ours.
    const withoutHead = new BackboneView(backbone);
    loadInto(
      withoutHead,
      backboneState(pretrainedCkpt),
      pretrained!,
      `${describeArch(args)} backbone`,
    );
  }
  probe.backbone?.eval();
  // The backbone gets no gradients; its head (registered as fc) does.
  for (const [name, p] of probe.backbone?.namedParameters() ?? []) {
    if (!name.startsWith("fc.")) p.requiresGrad = false;
  }
  const frozen = snapshotState(probe.net);

  const initLr = args.lr * args.batchSize / 256;
  const params = probe.head.parameters().filter((p) => p.requiresGrad);
  const opts = { lr: initLr, momentum: args.momentum, weightDecay: args.wd };
  const optimizer = args.lars ? new LARS(params, opts) : new SGD(params, opts);
  let startEpoch = args.startEpoch;
  let bestAcc1 = 0;
  if (probeCkpt !== null && probeMeta !== null) {
    if (probeCkpt.optimizer !== null) {
      optimizer.loadStateDict(probeCkpt.optimizer);
    }
    startEpoch = probeMeta.epoch;
    bestAcc1 = probeMeta.bestAcc1;
  }

  const feeder = args.cacheFeatures
    ? await CachedFeatures.extract(probe, train, val, args)
    : new AugmentedFeatures(probe, train, val, args);

  if (given.evaluate !== undefined) {
    const [acc1, acc5] = await evaluate(probe, feeder);
    const k = Math.min(5, train.classes.length);
    console.log(` * Acc@1 ${acc1.toFixed(3)} Acc@${k} ${acc5.toFixed(3)}`);
    assertFrozen(frozen, probe.net);
    return EXIT.ok;
  }

  await startRun(folder!);
  using log = await JsonLog.open(args.out);
  log.write({
    event: "start",
    time: new Date().toISOString(),
    args,
    trainSamples: train.length,
    valSamples: val.length,
    featureDim: probe.featureDim,
  });
  const k5 = Math.min(5, train.classes.length);
  for (let epoch = startEpoch; epoch < args.epochs; epoch++) {
    // main_lincls.py's adjust_learning_rate: a half-cosine over the epochs.
    optimizer.lr = initLr * 0.5 * (1 + Math.cos(Math.PI * epoch / args.epochs));
    probe.head.train();
    const t0 = performance.now();
    let seen = 0;
    let iteration = 0;
    const count = feeder.trainBatches();
    for await (const { x, labels } of feeder.trainEpoch(epoch)) {
      const loss = scope(() => {
        optimizer.zeroGrad();
        const l = crossEntropy(probe.head.forward(x), labels);
        l.backward();
        optimizer.step();
        return l.item();
      });
      x.dispose();
      optimizer.zeroGrad();
      seen += labels.length;
      if (!Number.isFinite(loss)) {
        throw new Error(
          `The probe's loss is ${loss} at epoch ${epoch}, iteration ${iteration}.`,
        );
      }
      if (iteration % args.printFreq === 0) {
        backend.synchronize();
        const seconds = (performance.now() - t0) / 1000;
        console.log(
          `Epoch: [${epoch}][${iteration}/${count}]  Loss ${fmt(loss)}  lr ${
            fmt(optimizer.lr)
          }  ${(seen / seconds).toFixed(1)} img/s`,
        );
      }
      log.write({ event: "step", epoch, iteration, loss, lr: optimizer.lr });
      iteration++;
    }
    assertFrozen(frozen, probe.net);
    const [acc1, acc5] = await evaluate(probe, feeder);
    const isBest = acc1 > bestAcc1;
    bestAcc1 = Math.max(acc1, bestAcc1);
    console.log(
      ` * Epoch ${epoch}: Acc@1 ${acc1.toFixed(3)} Acc@${k5} ${
        acc5.toFixed(3)
      } (best Acc@1 ${bestAcc1.toFixed(3)})`,
    );
    log.write({ event: "eval", epoch, acc1, [`acc${k5}`]: acc5, bestAcc1 });
    const metadata: ProbeMetadata = {
      kind: "mec-lincls",
      epoch: epoch + 1,
      bestAcc1,
      args: { ...args, resume: null, evaluate: false, overwrite: false },
    };
    const save = (name: string) =>
      saveCheckpoint(join(args.out, name), {
        model: probe.net,
        optimizer,
        metadata: metadata as unknown as Record<string, unknown>,
      });
    await save("probe_last.safetensors");
    if (isBest) await save("probe_best.safetensors");
  }
  assertFrozen(frozen, probe.net);
  console.log(
    `Best Acc@1 ${
      bestAcc1.toFixed(3)
    }; the backbone is unchanged; probes in ${args.out}.`,
  );
  await feeder.close();
  return EXIT.ok;
}

/** A ResNet's state without its head, for loading and comparing backbones. */
class BackboneView extends Layer {
  constructor(readonly net: ResNet) {
    super();
    for (const [name, child] of net.children()) {
      if (name !== "fc") this.addModule(name, child);
    }
  }

  forward(x: Tensor): Tensor {
    return this.net.features(x);
  }
}

/** The newest epoch checkpoint of the demo pretraining. */
async function latestDemoCheckpoint(): Promise<string> {
  const dir = DEMO.out!;
  let best: string | null = null;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (/^checkpoint_\d{4}\.safetensors$/.test(e.name)) {
        if (best === null || e.name > best) best = e.name;
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (best === null) {
    throw new UsageError(
      `No --pretrained checkpoint was given and ${dir} holds no demo checkpoint; run deno task pretrain first, or pass --pretrained CKPT.`,
    );
  }
  return join(dir, best);
}

async function openData(
  args: LinclsArgs,
  demo: boolean,
): Promise<[Dataset, Dataset]> {
  if (demo) {
    return [await fashionMnist("train"), await fashionMnist("test")];
  }
  const root = resolve(args.data!);
  const out: Dataset[] = [];
  for (const dir of await splitFolders(args.data!)) {
    out.push(await imageFolder(dir));
  }
  if (out[0].classes.join("\n") !== out[1].classes.join("\n")) {
    throw new Error(
      `The train and val folders of ${root} have different classes.`,
    );
  }
  return [out[0], out[1]];
}

/** DATA_DIR/train and DATA_DIR/val, or one sentence saying what is missing. */
async function splitFolders(data: string): Promise<string[]> {
  const root = resolve(data);
  if (!await exists(root)) {
    throw new Error(`The data folder ${root} does not exist.`);
  }
  const dirs: string[] = [];
  for (const split of ["train", "val"]) {
    const dir = join(root, split);
    if (!await exists(dir)) {
      throw new Error(
        `The data folder ${root} has no ${split} sub-folder: expected ${
          join(dir, "<class>", "<image>.jpg")
        }.`,
      );
    }
    dirs.push(dir);
  }
  return dirs;
}

function buildProbe(args: LinclsArgs, classes: number): Probe {
  const gen = new Generator(args.seed);
  if (args.rawPixels) {
    const featureDim = 3 * args.imageSize * args.imageSize;
    const head = probeHead(featureDim, classes, gen);
    return new Probe(new HeadOnly(head), null, head, featureDim);
  }
  let backbone: ResNet;
  if (args.randomInit) {
    // Exactly the encoder MEC pretraining starts from with this seed.
    const mec = new MEC({
      arch: args.arch,
      smallStem: args.smallStem,
      width: args.width,
      dim: 16,
      predDim: 16,
      gen,
    });
    backbone = mec.encoder;
  } else {
    backbone = resnets[args.arch]({
      smallStem: args.smallStem,
      width: args.width,
      numClasses: 1,
      gen,
    });
  }
  const head = probeHead(
    backbone.featureDim,
    classes,
    new Generator(args.seed, 1),
  );
  backbone.setHead(head);
  return new Probe(backbone, backbone, head, backbone.featureDim);
}

/** Training batches (features on the device) and evaluation features. */
interface Feeder {
  trainBatches(): number;
  trainEpoch(epoch: number): AsyncGenerator<{ x: Tensor; labels: Int32Array }>;
  /** Validation features in chunks, with labels. */
  valChunks(): AsyncGenerator<{ x: Tensor; labels: Int32Array }>;
  close(): Promise<void>;
}

/** Rows of features per backbone pass: bounds memory, not the math. */
const CHUNK = 256;

/** Features of every batch of a loader's epoch, chunk by chunk. */
async function* featureBatches(
  probe: Probe,
  loader: DataLoader,
  epoch: number,
): AsyncGenerator<{ features: Float32Array; labels: Int32Array }> {
  for await (const batch of loader.epoch(epoch)) {
    const [, c, h, w] = batch.shapes[0];
    const n = batch.labels.length;
    const features = new Float32Array(n * probe.featureDim);
    for (let start = 0; start < n; start += CHUNK) {
      const rows = Math.min(CHUNK, n - start);
      const values = batch.views[0].subarray(
        start * c * h * w,
        (start + rows) * c * h * w,
      );
      scope(() => {
        const f = probe.features(tensor(values, [rows, c, h, w]));
        features.set(f.toArray(), start * probe.featureDim);
      });
    }
    loader.recycle(batch);
    yield { features, labels: batch.labels };
  }
}

/** The official way: augmented views through the frozen backbone every step. */
class AugmentedFeatures implements Feeder {
  #train: DataLoader;
  #val: DataLoader;

  constructor(
    readonly probe: Probe,
    train: Dataset,
    val: Dataset,
    readonly args: LinclsArgs,
  ) {
    this.#train = new DataLoader({
      dataset: train,
      views: [probeTrainViewFor(args.imageSize)],
      batchSize: Math.min(args.batchSize, train.length),
      seed: args.seed,
      workers: args.workers,
      dropLast: false,
    });
    this.#val = new DataLoader({
      dataset: val,
      views: [probeEvalViewFor(args.imageSize)],
      batchSize: CHUNK,
      seed: args.seed,
      workers: args.workers,
      shuffle: false,
      dropLast: false,
    });
  }

  trainBatches(): number {
    return this.#train.length;
  }

  async *trainEpoch(epoch: number) {
    for await (const b of featureBatches(this.probe, this.#train, epoch)) {
      // BatchNorm in training mode needs two samples or more.
      if (b.labels.length < 2) continue;
      yield {
        x: tensor(b.features, [b.labels.length, this.probe.featureDim]),
        labels: b.labels,
      };
    }
  }

  async *valChunks() {
    for await (const b of featureBatches(this.probe, this.#val, 0)) {
      yield {
        x: tensor(b.features, [b.labels.length, this.probe.featureDim]),
        labels: b.labels,
      };
    }
  }

  async close(): Promise<void> {
    await this.#train.close();
    await this.#val.close();
  }
}

/** Features extracted once with the evaluation transform, batches reshuffled per epoch. */
class CachedFeatures implements Feeder {
  private constructor(
    readonly dim: number,
    readonly batchSize: number,
    readonly seed: number,
    readonly train: { features: Float32Array; labels: Int32Array },
    readonly val: { features: Float32Array; labels: Int32Array },
  ) {}

  static async extract(
    probe: Probe,
    train: Dataset,
    val: Dataset,
    args: LinclsArgs,
  ): Promise<CachedFeatures> {
    const view = probeEvalViewFor(args.imageSize);
    const all = async (dataset: Dataset, name: string) => {
      await using loader = new DataLoader({
        dataset,
        views: [view],
        batchSize: CHUNK,
        seed: args.seed,
        workers: args.workers,
        shuffle: false,
        dropLast: false,
      });
      const features = new Float32Array(dataset.length * probe.featureDim);
      const labels = new Int32Array(dataset.length);
      const t0 = performance.now();
      let done = 0;
      let batches = 0;
      for await (const b of featureBatches(probe, loader, 0)) {
        features.set(b.features, done * probe.featureDim);
        labels.set(b.labels, done);
        done += b.labels.length;
        if (++batches % 20 === 0 || done === dataset.length) {
          const seconds = (performance.now() - t0) / 1000;
          console.log(
            `Features of ${name}: ${done}/${dataset.length} images (${
              (done / seconds).toFixed(1)
            } img/s)`,
          );
        }
      }
      return { features, labels };
    };
    return new CachedFeatures(
      probe.featureDim,
      args.batchSize,
      args.seed,
      await all(train, "train"),
      await all(val, "val"),
    );
  }

  trainBatches(): number {
    return Math.ceil(this.train.labels.length / this.batchSize);
  }

  async *trainEpoch(epoch: number) {
    const n = this.train.labels.length;
    // The loader's convention: epoch e's order from Generator(seed, e, -1).
    const order = new Generator(this.seed, epoch, -1).permutation(n);
    for (let start = 0; start < n; start += this.batchSize) {
      const rows = Math.min(this.batchSize, n - start);
      // BatchNorm in training mode needs two samples or more.
      if (rows < 2) continue;
      const x = new Float32Array(rows * this.dim);
      const labels = new Int32Array(rows);
      for (let r = 0; r < rows; r++) {
        const i = order[start + r];
        x.set(
          this.train.features.subarray(i * this.dim, (i + 1) * this.dim),
          r * this.dim,
        );
        labels[r] = this.train.labels[i];
      }
      yield { x: tensor(x, [rows, this.dim]), labels };
    }
  }

  async *valChunks() {
    const n = this.val.labels.length;
    for (let start = 0; start < n; start += CHUNK) {
      const rows = Math.min(CHUNK, n - start);
      yield {
        x: tensor(
          this.val.features.subarray(
            start * this.dim,
            (start + rows) * this.dim,
          )
            .slice(),
          [rows, this.dim],
        ),
        labels: this.val.labels.subarray(start, start + rows),
      };
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Top-1 and top-5 (or top-k for fewer classes) in percent on the validation split. */
async function evaluate(
  probe: Probe,
  feeder: Feeder,
): Promise<[number, number]> {
  probe.head.eval();
  let n = 0;
  let c1 = 0;
  let c5 = 0;
  for await (const { x, labels } of feeder.valChunks()) {
    const classes =
      (probe.head.layers.at(-1) as unknown as { outFeatures: number })
        .outFeatures;
    const [a1, a5] = noGrad(() =>
      scope(() =>
        accuracy(probe.head.forward(x), labels, [1, Math.min(5, classes)])
      )
    );
    x.dispose();
    // accuracy() gives percentages of the chunk; weigh them by its size.
    c1 += a1 * labels.length / 100;
    c5 += a5 * labels.length / 100;
    n += labels.length;
  }
  probe.head.train();
  return [100 * c1 / n, 100 * c5 / n];
}

if (import.meta.main) runMain(() => lincls(Deno.args));
