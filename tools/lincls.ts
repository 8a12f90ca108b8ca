/**
 * `deno task lincls --pretrained CKPT [DATA_DIR] [flags]`: linear probing of
 * a frozen backbone, as the paper's `main_lincls.py` does it: the backbone
 * in eval mode (BN on running statistics) and untouched, a head of
 * BatchNorm1d(affine=False, eps=1e-6) + Linear with N(0, 0.01) weights,
 * SGD (or `--lars`) with a per-epoch cosine learning rate, top-1 and top-5
 * on the validation split after every epoch, the best probe kept.
 *
 * Two ways to feed the head (tools/probe_features.ts), with the same
 * mathematics when the training transform is deterministic:
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

import { LARS, SGD } from "../mod.ts";
import { capWorkers, EXIT, openDevice, UsageError } from "./cli.ts";
import type { Ranks } from "../dist/parallel.ts";
import {
  perRankBatch,
  probeParallel,
  runTool,
  silentLog,
} from "./distributed.ts";
import { DEMO_PROBE, demoSplits } from "./demo.ts";
import { helpText, parseCommand } from "./flags.ts";
import {
  checkProbeMetadata,
  DESCRIPTION,
  LINCLS_FLAGS,
  type LinclsArgs,
  OFFICIAL,
  type ProbeMetadata,
  recordedArch,
  USAGE,
} from "./lincls_args.ts";
import {
  backboneState,
  describeArch,
  loadInto,
  readCheckpoint,
} from "./models.ts";
import {
  assertFrozen,
  BackboneView,
  buildProbe,
  evaluate,
  snapshotState,
} from "./probe.ts";
import { AugmentedFeatures, CachedFeatures } from "./probe_features.ts";
import {
  checkProbeMemory,
  latestDemoCheckpoint,
  openData,
  splitFolders,
} from "./probe_data.ts";
import { finalReport, trainProbe } from "./probe_loop.ts";
import { JsonLog } from "./progress.ts";
import { PROBE_SCALARS } from "./tensorboard.ts";
import { inspectRunFolder, LINCLS_FILES, startRun } from "./run_folder.ts";

/**
 * Runs the tool on `argv`; returns the exit code. `ranks`: this process's
 * place in a data-parallel run under `mpirun` (tools/distributed.ts).
 */
export async function lincls(
  argv: readonly string[],
  ranks: Ranks | null = null,
): Promise<number> {
  const command = parseCommand<LinclsArgs>(argv, LINCLS_FLAGS);
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
    : recordedArch(pretrainedCkpt.metadata.args, pretrained!);
  const args = {
    ...OFFICIAL,
    ...(demo ? DEMO_PROBE : {}),
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
  // -b is the global batch; each rank trains the head on its share.
  const localBatch = perRankBatch(args.batchSize, ranks);
  const root = ranks === null || ranks.isRoot;
  // The data folders are there (listing them may take a while), before the
  // run folder is looked at.
  if (!demo) await splitFolders(data);
  const folder = given.evaluate || !root ? null : await inspectRunFolder(
    args.out,
    LINCLS_FILES,
    {
      resume: probeCkpt !== null,
      // Probing the demo again replaces the last demo probe in its folder.
      overwrite: given.overwrite === true || (demo && given.out === undefined),
    },
  );
  // The device and numerics are this run's choice, never the checkpoint's.
  const requested = (given.device ?? "cpu") as string;
  const deviceName = ranks?.device(requested) ?? requested;
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
  const splits = demo ? await demoSplits() : null;
  if (splits !== null) {
    console.log(
      `Demo: no DATA_DIR given, so the linear probe of ${what} trains on ${splits.description}, is validated after each epoch on the held-out images, and its final epoch is measured once on the test split; results go to ${args.out}.`,
    );
  } else {
    console.log(`Linear probe of ${what}.`);
  }

  const [train, val, test] = await openData(args, splits);
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

  // Every rank probes rank 0's head, with SyncBN in it, on its shard.
  const parallel = ranks === null
    ? null
    : await probeParallel(ranks, backend, probe.net, probe.head, localBatch);
  const shard = ranks === null ? null : { rank: ranks.rank, size: ranks.size };
  const feeder = args.cacheFeatures
    ? await CachedFeatures.extract(probe, train, val, args, test, shard)
    : new AugmentedFeatures(probe, train, val, args, test, shard);

  if (given.evaluate !== undefined) {
    const split = feeder.hasTest ? "test" : "val";
    const [acc1, acc5] = await evaluate(probe, feeder, split, ranks);
    const k = Math.min(5, train.classes.length);
    console.log(
      ` * Acc@1 ${acc1.toFixed(3)} Acc@${k} ${acc5.toFixed(3)} (${split})`,
    );
    assertFrozen(frozen, probe.net);
    return EXIT.ok;
  }

  if (folder !== null) await startRun(folder);
  // The probe's TensorBoard steps are epochs done.
  const tensorboard = args.tensorboard
    ? { scalars: PROBE_SCALARS, startStep: startEpoch + 1 }
    : null;
  using log = root
    ? await JsonLog.open(args.out, { tensorboard })
    : silentLog();
  log.write({
    event: "start",
    time: new Date().toISOString(),
    args,
    trainSamples: train.length,
    valSamples: val.length,
    featureDim: probe.featureDim,
  });
  const outcome = await trainProbe({
    args,
    backend,
    probe,
    optimizer,
    feeder,
    frozen,
    log,
    startEpoch,
    bestAcc1,
    parallel,
  });
  const k5 = Math.min(5, train.classes.length);
  let testAcc: [number, number] | null = null;
  if (feeder.hasTest) {
    testAcc = await evaluate(probe, feeder, "test", ranks);
    assertFrozen(frozen, probe.net);
    log.write({
      event: "test",
      epoch: outcome.lastEpoch,
      acc1: testAcc[0],
      [`acc${k5}`]: testAcc[1],
    });
  }
  console.log(finalReport(outcome, testAcc, k5, args.out));
  await feeder.close();
  return EXIT.ok;
}

if (import.meta.main) runTool((ranks) => lincls(Deno.args, ranks));
