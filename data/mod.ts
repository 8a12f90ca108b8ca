/**
 * Files to batches: JPEG/PNG decoding, ImageFolder, torchvision's transforms,
 * MEC's view pipelines, a worker-pool loader, and the built-in
 * Fashion-MNIST and dummy datasets.
 *
 * @module
 */

export {
  type DctShrink,
  DecodeError,
  decodeImage,
  type DecodeOptions,
  DecodeScratch,
  type ImageFormat,
  type JpegDecoder,
  jpegSize,
  MAX_IMAGE_FILE_BYTES,
  MAX_IMAGE_PIXELS,
  noteJpegFallback,
  pngSize,
  resolveJpegDecoder,
  type RgbImage,
  sniffFormat,
} from "./decode.ts";
export { turboJpeg, turboJpegMissing } from "./turbojpeg.ts";
export {
  ArrayDataset,
  type ArrayDatasetOptions,
  type Dataset,
  type SampleSource,
} from "./dataset.ts";
export {
  IMAGE_EXTENSIONS,
  ImageFolder,
  imageFolder,
  type ImageFolderOptions,
  readImageFile,
} from "./folder.ts";
export {
  adjustBrightness,
  adjustContrast,
  adjustHue,
  adjustSaturation,
  BlurScratch,
  boxRadiusForSigma,
  centerCropBox,
  colorJitter,
  type ColorJitterOptions,
  type ColorJitterParams,
  colorJitterParams,
  type CropBox,
  type FloatImage,
  gaussianBlur,
  grayscale,
  hflip,
  IMAGENET_NORMALIZE,
  meanLuma,
  type NormalizeOptions,
  randomResizedCropBox,
  type RandomResizedCropOptions,
  type ResampleTable,
  resampleTable,
  resizedCrop,
  type ResizedCropSpec,
  ResizeScratch,
  resizeShorterSize,
  roundHalfEven,
  solarize,
  toTensor,
} from "./transforms.ts";
export {
  applyView,
  type CropRecipe,
  drawView,
  type ImageSize,
  mecViews,
  probeEvalView,
  probeTrainView,
  renderView,
  type ViewDraw,
  type ViewRecipe,
  ViewScratch,
} from "./pipelines.ts";
export { dctShrink, shrinkCrop } from "./fast_decode.ts";
export { ViewKernels, viewKernels } from "./view_kernels.ts";
export {
  type Batch,
  batchTensors,
  DataLoader,
  type DataLoaderOptions,
  type EpochSummary,
  formatEpochSummary,
  formatLoaderTiming,
  type LoaderTiming,
  type SkippedSample,
  unreadableFiles,
} from "./loader.ts";
export {
  BUILTIN_FASHION_MNIST,
  DEBIAN_FASHION_MNIST,
  defaultFashionMnistRoot,
  FASHION_MNIST_CLASSES,
  type FashionMnist,
  fashionMnist,
  type FashionMnistOptions,
} from "./fashion-mnist.ts";
export { firstPerClass, type HeldOut, holdOut, Subset } from "./splits.ts";
export { DummyDataset, type DummyDatasetOptions } from "./dummy.ts";
