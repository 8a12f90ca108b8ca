/**
 * The ready-made view pipelines: MEC's two pretraining views and the linear
 * probe's train and eval views (DESIGN.md section 1), as plain-data recipes
 * that travel to the loader's workers, and {@link applyView}, which runs a
 * recipe on one image with the fewest passes over its pixels.
 *
 * @module
 */

import type { Generator } from "../nn/random.ts";
import type { RgbImage } from "./decode.ts";
import { type ViewKernels, viewKernels } from "./view_kernels.ts";
import {
  BlurScratch,
  centerCropBox,
  colorJitter,
  type ColorJitterOptions,
  type ColorJitterParams,
  colorJitterParams,
  type FloatImage,
  gaussianBlur,
  grayscale,
  IMAGENET_NORMALIZE,
  type NormalizeOptions,
  randomResizedCropBox,
  resizedCrop,
  type ResizedCropSpec,
  ResizeScratch,
  resizeShorterSize,
  toTensor,
} from "./transforms.ts";

/** How a view takes its square out of the image. */
export type CropRecipe =
  | {
    /** RandomResizedCrop(size, scale, ratio), bilinear. */
    kind: "random-resized";
    scale: readonly [number, number];
    ratio: readonly [number, number];
  }
  | {
    /** Resize(resize) of the shorter side, then CenterCrop(size). */
    kind: "resize-center";
    resize: number;
  };

/**
 * One augmentation pipeline, in torchvision's order: crop, ColorJitter with
 * probability `jitter.p`, RandomGrayscale, GaussianBlur, Solarize,
 * RandomHorizontalFlip, ToTensor, Normalize. Probabilities of 0 skip a step.
 */
export interface ViewRecipe {
  /** Output side in pixels. */
  size: number;
  crop: CropRecipe;
  jitter: (ColorJitterOptions & { p: number }) | null;
  grayscale: number;
  blur: { p: number; sigma: readonly [number, number] } | null;
  solarize: number;
  flip: number;
  normalize: NormalizeOptions | null;
}

/**
 * MEC's two pretraining views (BYOL's asymmetric pair): both crop with
 * scale 0.2..1, jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grey with p 0.2 and
 * flip with p 0.5; view 1 always blurs and never solarizes, view 2 blurs with
 * p 0.1 and solarizes with p 0.2.
 */
export function mecViews(size = 224): [ViewRecipe, ViewRecipe] {
  const common = {
    size,
    crop: {
      kind: "random-resized",
      scale: [0.2, 1],
      ratio: [3 / 4, 4 / 3],
    },
    jitter: {
      p: 0.8,
      brightness: 0.4,
      contrast: 0.4,
      saturation: 0.2,
      hue: 0.1,
    },
    grayscale: 0.2,
    flip: 0.5,
    normalize: IMAGENET_NORMALIZE,
  } as const;
  return [
    { ...common, blur: { p: 1, sigma: [0.1, 2] }, solarize: 0 },
    { ...common, blur: { p: 0.1, sigma: [0.1, 2] }, solarize: 0.2 },
  ];
}

/** The linear probe's training view: RandomResizedCrop(size) and a flip. */
export function probeTrainView(size = 224): ViewRecipe {
  return {
    size,
    crop: { kind: "random-resized", scale: [0.08, 1], ratio: [3 / 4, 4 / 3] },
    jitter: null,
    grayscale: 0,
    blur: null,
    solarize: 0,
    flip: 0.5,
    normalize: IMAGENET_NORMALIZE,
  };
}

/**
 * The linear probe's evaluation view: Resize(256) then CenterCrop(224), or
 * the same proportions (size / 0.875) for another size.
 */
export function probeEvalView(size = 224): ViewRecipe {
  return {
    size,
    crop: { kind: "resize-center", resize: Math.round(size / 0.875) },
    jitter: null,
    grayscale: 0,
    blur: null,
    solarize: 0,
    flip: 0,
    normalize: IMAGENET_NORMALIZE,
  };
}

/** Reusable buffers for {@link applyView}, one set per thread. */
export class ViewScratch {
  readonly resize: ResizeScratch = new ResizeScratch();
  readonly blur: BlurScratch = new BlurScratch();
  /**
   * The WebAssembly kernels the views run on (data/view_kernels.ts), or
   * null for the TypeScript path, which computes the same bits.
   */
  readonly kernels: ViewKernels | null;
  #image = new Float32Array(0);

  /** `wasm: false` takes the TypeScript path (default: the kernels). */
  constructor({ wasm = true }: { wasm?: boolean } = {}) {
    this.kernels = wasm ? viewKernels() : null;
  }

  /** The working image, `size` x `size`. */
  image(size: number): FloatImage {
    const n = size * size * 3;
    if (this.#image.length < n) this.#image = new Float32Array(n);
    return { width: size, height: size, data: this.#image.subarray(0, n) };
  }
}

/** Where the crop comes from, drawing the random box if there is one. */
function cropSpec(
  image: ImageSize,
  recipe: ViewRecipe,
  gen: Generator,
): ResizedCropSpec {
  const { size, crop } = recipe;
  if (crop.kind === "random-resized") {
    const box = randomResizedCropBox(gen, image.width, image.height, crop);
    return { box, resizeWidth: size, resizeHeight: size };
  }
  const resized = resizeShorterSize(image.width, image.height, crop.resize);
  return {
    box: { top: 0, left: 0, width: image.width, height: image.height },
    resizeWidth: resized.width,
    resizeHeight: resized.height,
    window: centerCropBox(resized.width, resized.height, size),
  };
}

/** The size of an image, which is all that the draws depend on. */
export interface ImageSize {
  width: number;
  height: number;
}

/** The random choices of one view, drawn in torchvision's order. */
export interface ViewDraw {
  /** The crop, resize and flip. */
  crop: ResizedCropSpec;
  /** ColorJitter's draw, or null when it is not applied. */
  jitter: ColorJitterParams | null;
  grey: boolean;
  /** GaussianBlur's sigma, or null when it is not applied. */
  sigma: number | null;
  solarize: boolean;
}

/**
 * Draws every random choice of `recipe` for `image` from `gen`, in
 * torchvision's order: the crop box, ColorJitter's coin and factors,
 * RandomGrayscale, GaussianBlur's coin and sigma, Solarize, then the flip
 * (which commutes with all the rest, so it is folded into the resampling).
 */
export function drawView(
  image: ImageSize,
  recipe: ViewRecipe,
  gen: Generator,
): ViewDraw {
  const crop = cropSpec(image, recipe, gen);
  const jitter = recipe.jitter !== null && gen.uniform() < recipe.jitter.p
    ? colorJitterParams(gen, recipe.jitter)
    : null;
  const grey = gen.uniform() < recipe.grayscale;
  const sigma = recipe.blur !== null && gen.uniform() < recipe.blur.p
    ? gen.uniform(recipe.blur.sigma[0], recipe.blur.sigma[1])
    : null;
  const solarize = gen.uniform() < recipe.solarize;
  crop.flip = gen.uniform() < recipe.flip;
  return { crop, jitter, grey, sigma, solarize };
}

/**
 * Runs one view recipe on `image`, drawing every random choice from `gen`
 * ({@link drawView}), and writes the CHW result (3 x size x size floats)
 * into `out` at `offset` ({@link renderView}).
 */
export function applyView(
  image: RgbImage,
  recipe: ViewRecipe,
  gen: Generator,
  out: Float32Array,
  offset: number,
  scratch: ViewScratch = new ViewScratch(),
): void {
  renderView(image, recipe, drawView(image, recipe, gen), out, offset, scratch);
}

/**
 * Makes the view that `draw` describes (its crop in `image`'s pixels) and
 * writes it as CHW floats into `out` at `offset`: crop + resize + flip in
 * one pass, each jitter adjustment that is not the identity, grayscale,
 * the blur, and one pass that solarizes, scales, normalises and transposes
 * to CHW. With the scratch's WebAssembly kernels (data/view_kernels.ts)
 * the heavy passes run there, bit-identical to these TypeScript steps.
 */
export function renderView(
  image: RgbImage,
  recipe: ViewRecipe,
  draw: ViewDraw,
  out: Float32Array,
  offset: number,
  scratch: ViewScratch = new ViewScratch(),
): void {
  const normalize = recipe.normalize ?? undefined;
  if (scratch.kernels !== null) {
    scratch.kernels.render(
      image,
      draw,
      recipe.size,
      normalize,
      out,
      offset,
      scratch.blur,
    );
    return;
  }
  const { crop, jitter, grey, sigma, solarize } = draw;
  const work = scratch.image(recipe.size);
  resizedCrop(image, crop, work, scratch.resize);
  if (jitter !== null) colorJitter(work, jitter);
  if (grey) grayscale(work);
  if (sigma !== null) gaussianBlur(work, sigma, scratch.blur);
  toTensor(work, out, offset, normalize, solarize ? 128 : undefined);
}
