/**
 * Tensors, autograd and the differentiable ops, over any loaded device.
 *
 * @module
 */

import "./autograd.ts";

export type * from "./backend.ts";
export {
  envProfiler,
  formatProfile,
  type KindRecord,
  PROFILE_KINDS,
  type ProfileKind,
  Profiler,
  type StepProfile,
} from "./profile.ts";
export {
  defaultDevice,
  device,
  type DevicePlugin,
  parseDeviceName,
  setDefaultDevice,
  useDevice,
} from "./device.ts";
export {
  type BackwardFn,
  forwardScope,
  type GradFn,
  isGradEnabled,
  keep,
  memoryStats,
  needsGrad,
  noGrad,
  recordGrad,
  scope,
  Tensor,
} from "./tensor.ts";
export {
  full,
  ones,
  rand,
  randn,
  tensor,
  type TensorOptions,
  zeros,
} from "./creation.ts";
export { Generator } from "./random.ts";
export { addReluInPlace, relu, reluInPlace } from "./ops/activation.ts";
export { conv2d, type Conv2dOptions } from "./ops/conv.ts";
export {
  add,
  addScalar,
  affine,
  mean,
  mul,
  mulScalar,
  sub,
  sum,
} from "./ops/elementwise.ts";
export { linear, matmul, type MatmulOptions, trace } from "./ops/linalg.ts";
export {
  accuracy,
  crossEntropy,
  type CrossEntropyOptions,
  type Labels,
  NonFiniteLossError,
} from "./ops/loss.ts";
export {
  batchNorm,
  type BatchNormOptions,
  normalize,
} from "./ops/normalization.ts";
export {
  globalAvgPool2d,
  maxPool2d,
  type MaxPool2dOptions,
} from "./ops/pool.ts";
export { Layer, type LoadResult, Module, type StateValue } from "./module.ts";
export {
  AdaptiveAvgPool2d,
  BatchNorm1d,
  BatchNorm2d,
  type BatchNormLayerOptions,
  Conv2d,
  type Conv2dLayerOptions,
  Flatten,
  Identity,
  type InitOptions,
  Linear,
  type LinearOptions,
  MaxPool2d,
  ReLU,
  Sequential,
} from "./layers.ts";
export {
  BasicBlock,
  Bottleneck,
  ResNet,
  resnet101,
  resnet152,
  resnet18,
  resnet34,
  resnet50,
  type ResNetName,
  type ResNetOptions,
  resnets,
} from "./resnet.ts";
export {
  LARS,
  type LARSOptions,
  type OptimizerHyper,
  type OptimizerState,
  SGD,
  type SGDOptions,
} from "./optim.ts";
export {
  decodeSafetensors,
  encodeSafetensors,
  type HostTensor,
  readSafetensors,
  type Safetensors,
  writeFileAtomic,
  writeSafetensors,
} from "./safetensors.ts";
export {
  type Checkpoint,
  loadCheckpoint,
  saveCheckpoint,
  type SaveOptions,
  saveTensorCheckpoint,
} from "./checkpoint.ts";
export {
  isTorchFile,
  readTorchFile,
  tensorEntries,
  type TorchFile,
  TorchFileError,
  TorchStorage,
  TorchTensor,
} from "./torch_file.ts";
