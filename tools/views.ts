/**
 * The view pipelines the tools use: DESIGN.md's recipe for full-size images,
 * adapted in two documented ways for small ones (Fashion-MNIST's 28 px, or
 * 32 px CIFAR-like data).
 *
 * - Pretraining: torchvision's GaussianBlur draws sigma in [0.1, 2] pixels,
 *   a mild blur of a 224 px photo; at 28 px the same sigma erases the
 *   image. Below {@link SMALL_IMAGE} px the sigma range is scaled by
 *   size / 224, so the blur is the same fraction of the object as in the
 *   paper.
 * - Probe evaluation: Resize(256) + CenterCrop(224) cuts 12.5 % of a photo's
 *   borders, where ImageNet objects rarely sit. Small datasets are framed
 *   tightly (a Fashion-MNIST garment fills its 28 px), so below
 *   {@link SMALL_IMAGE} px the whole image is resized to the size instead.
 *
 * @module
 */

import {
  mecViews,
  probeEvalView,
  probeTrainView,
  type ViewRecipe,
} from "../data/pipelines.ts";

/** Image sizes below this are treated as small-image data (28/32 px). */
export const SMALL_IMAGE = 64;

/**
 * MEC's two pretraining views at `size`, blur scaled for small images;
 * `minScale` replaces the crops' smallest area fraction (0.2).
 */
export function pretrainViews(size: number, minScale?: number): ViewRecipe[] {
  const views = mecViews(size).map((v) =>
    minScale === undefined || v.crop.kind !== "random-resized"
      ? v
      : { ...v, crop: { ...v.crop, scale: [minScale, 1] as const } }
  );
  if (size >= SMALL_IMAGE) return views;
  const k = size / 224;
  return views.map((v) => ({
    ...v,
    blur: v.blur === null
      ? null
      : { p: v.blur.p, sigma: [v.blur.sigma[0] * k, v.blur.sigma[1] * k] },
  }));
}

/** The probe's training view: RandomResizedCrop + flip (DESIGN.md section 1). */
export function probeTrainViewFor(size: number): ViewRecipe {
  return probeTrainView(size);
}

/** The probe's evaluation view: Resize(size/0.875) + CenterCrop, or the whole small image. */
export function probeEvalViewFor(size: number): ViewRecipe {
  const view = probeEvalView(size);
  if (size >= SMALL_IMAGE) return view;
  return { ...view, crop: { kind: "resize-center", resize: size } };
}
