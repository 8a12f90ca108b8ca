/**
 * Where a probe's inputs come from and whether they fit: the train, val
 * and (in the demo) test splits, the demo pretraining's newest checkpoint
 * when none is given, and the host memory the probe will need, checked
 * before anything is built.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { type Dataset, imageFolder } from "../mod.ts";
import { exists, UsageError } from "./cli.ts";
import { DEMO_PRETRAIN, type DemoSplits } from "./demo.ts";
import type { LinclsArgs } from "./lincls_args.ts";
import {
  ACTIVATION_COPIES,
  checkMemory,
  resnetCost,
  trainingMemory,
} from "./memory.ts";
import { describeArch } from "./models.ts";
import { CHUNK } from "./probe_features.ts";

/**
 * Checks the probe's host memory before the network is built: the loader's
 * batches (of the augmented training view, or of the evaluation view in
 * chunks for cached features) and one chunk's frozen forward pass.
 */
export function checkProbeMemory(
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

/** The newest epoch checkpoint of the demo pretraining. */
export async function latestDemoCheckpoint(): Promise<string> {
  const dir = DEMO_PRETRAIN.out!;
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

/** Train, val and (the demo's) test split. */
export async function openData(
  args: LinclsArgs,
  splits: DemoSplits | null,
): Promise<[Dataset, Dataset, Dataset | null]> {
  if (splits !== null) return [splits.train, splits.val, splits.test];
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
  return [out[0], out[1], null];
}

/** DATA_DIR/train and DATA_DIR/val, or one sentence saying what is missing. */
export async function splitFolders(data: string): Promise<string[]> {
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
