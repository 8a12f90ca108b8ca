/**
 * Decoding at a reduced size for views that shrink their crop a lot, as
 * DALI and FFCV do: libjpeg's IDCT can output 1/2, 1/4 or 1/8 of the image
 * for a fraction of the work of a full decode, and a 400-pixel crop
 * resized to 224 loses nothing it needs at half size. The views' random
 * choices are drawn on the full-size image (so they are the same draws as
 * without it), the largest shrink that keeps every crop at least as large
 * as its view is chosen ({@link dctShrink}), and each crop is mapped onto
 * the smaller image ({@link shrinkCrop}).
 *
 * It changes pixels (libjpeg's scaled IDCT keeps only each block's lower
 * frequencies, a different filter from the resize's, and crop edges move
 * by up to half a reduced pixel), so it is off unless asked for.
 *
 * @module
 */

import type { DctShrink } from "./decode.ts";
import type { ViewDraw } from "./pipelines.ts";
import type { ResizedCropSpec } from "./transforms.ts";

/**
 * The largest d of 8, 4 and 2 such that every draw's crop box, divided by
 * d, is still at least the size it is resized to in both directions (so no
 * view enlarges what it would have shrunk); 1 when there is none.
 */
export function dctShrink(draws: readonly ViewDraw[]): DctShrink {
  let limit = Infinity;
  for (const { crop } of draws) {
    limit = Math.min(
      limit,
      crop.box.width / crop.resizeWidth,
      crop.box.height / crop.resizeHeight,
    );
  }
  for (const d of [8, 4, 2] as const) if (d <= limit) return d;
  return 1;
}

/**
 * A crop of the full-size image mapped onto its decode at 1/d, which is
 * `width` x `height`: pixel i of the small image covers the full image's
 * i d .. (i + 1) d - 1, so the box's edges are divided by d and rounded to
 * the nearest pixel edge, keeping at least one pixel inside the image.
 */
export function shrinkCrop(
  crop: ResizedCropSpec,
  d: number,
  width: number,
  height: number,
): ResizedCropSpec {
  const { box } = crop;
  const edges = (from: number, size: number, limit: number) => {
    const lo = Math.min(Math.round(from / d), limit - 1);
    const hi = Math.min(Math.max(Math.round((from + size) / d), lo + 1), limit);
    return [lo, hi - lo];
  };
  const [left, w] = edges(box.left, box.width, width);
  const [top, h] = edges(box.top, box.height, height);
  return { ...crop, box: { top, left, width: w, height: h } };
}
