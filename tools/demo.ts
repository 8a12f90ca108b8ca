/**
 * The demo: what `deno task pretrain` and `deno task lincls` run without a
 * DATA_DIR, on the built-in Fashion-MNIST, sized to take about ten minutes
 * of pretraining on a 2-core CPU. Every choice of the demo is here, with
 * its reason; the paper's recipe (the defaults with a DATA_DIR) lives with
 * each tool's flags.
 *
 * @module
 */

import type { LinclsArgs } from "./lincls_args.ts";
import type { PretrainArgs } from "./pretrain_args.ts";

/**
 * The demo's pretraining: the built-in 10,000 training images, a ResNet-18
 * of base width 16 with the small-image stem on the native 28 px (no
 * upscaling to 32 px: 23 % fewer pixels per step), batch 256, d = 512,
 * pred-dim 128, 6 epochs with one of warm-up (9 min 38 s at 104.5 pairs/s
 * on an idle 2-core machine; the probe then reaches 80.4 % top-1 where 3
 * epochs gave 78.1 %). One worker thread augments while the main thread
 * (and OpenBLAS) computes.
 */
export const DEMO_PRETRAIN: Partial<PretrainArgs> = {
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

/**
 * The demo's probe: the pretraining's network, on features extracted once
 * (the evaluation view is deterministic at 28 px, so 100 epochs take
 * seconds), trained on Fashion-MNIST's train split and evaluated on its
 * test split.
 */
export const DEMO_PROBE: Partial<LinclsArgs> = {
  arch: DEMO_PRETRAIN.arch,
  width: DEMO_PRETRAIN.width,
  smallStem: DEMO_PRETRAIN.smallStem,
  imageSize: DEMO_PRETRAIN.imageSize,
  cacheFeatures: true,
  workers: 1,
  out: "runs/demo-lincls",
};
