/**
 * The memory a run will need, estimated from its flags before anything is
 * allocated, and checked against the memory the machine has available, so
 * that a batch or an image size too large for the machine gets one sentence
 * saying what to lower instead of minutes of swapping or the kernel's OOM
 * killer.
 *
 * The estimate counts what a run holds at its peak:
 * - the loader's batches: `(in flight + 2)` batches of `views x B x 3 x S x S`
 *   float32 values (in flight = workers x 2, see data/loader.ts);
 * - the network's activations: for every convolution of the ResNet, its
 *   output per image and view, times {@link ACTIVATION_COPIES} (the step
 *   keeps each convolution's output, its batch norm's and its ReLU's, and
 *   their gradients, until the step ends);
 * - the parameters, their gradients, momentum and the teacher's copy.
 *
 * It is calibrated on the CPU backend with oneDNN, from the peak resident
 * memory (VmHWM) of `--dummy --max-iters 2` runs: a ResNet-18 of width 8
 * with the small stem takes 64 MB per image pair at 128 px and 270 MB at
 * 256 px, a ResNet-50 of width 16 takes 51 MB at 128 px, and the estimate
 * gives 89 to 95 % of each, so it errs low: a run it refuses would not have
 * fitted.
 *
 * @module
 */

import type { ResNetName } from "../nn/resnet.ts";
import { UsageError } from "./cli.ts";

/**
 * Float32 copies held per convolution output and network pass of the MEC
 * step: calibrated as the module says (each pass of the student keeps the
 * convolution, batch-norm and ReLU outputs and their gradients; the
 * teacher's passes keep the forward outputs until the step ends).
 */
export const ACTIVATION_COPIES = 3;

/**
 * Bytes of the runtime itself (Deno, V8, OpenBLAS, oneDNN, a worker) before
 * any batch: a tiny run at 32 px peaks at 148 MB.
 */
const BASELINE_BYTES = 120e6;

/** The block structure of each torchvision ResNet. */
const RESNETS: Record<
  ResNetName,
  { bottleneck: boolean; depths: readonly number[] }
> = {
  resnet18: { bottleneck: false, depths: [2, 2, 2, 2] },
  resnet34: { bottleneck: false, depths: [3, 4, 6, 3] },
  resnet50: { bottleneck: true, depths: [3, 4, 6, 3] },
  resnet101: { bottleneck: true, depths: [3, 4, 23, 3] },
  resnet152: { bottleneck: true, depths: [3, 8, 36, 3] },
};

/** What one image through a ResNet costs, counted in float32 values. */
export interface ResNetCost {
  /** Weights and batch-norm parameters of the backbone. */
  parameters: number;
  /** Sum over the convolutions of their output size, for one image. */
  activations: number;
  /** Channels of the pooled features. */
  featureDim: number;
}

/** Output side of a k x k convolution or pooling with stride and padding. */
function side(input: number, k: number, stride: number, pad: number): number {
  return Math.floor((input + 2 * pad - k) / stride) + 1;
}

/** Counts a ResNet's parameters and per-image convolution outputs. */
export function resnetCost(
  arch: ResNetName,
  width: number,
  smallStem: boolean,
  size: number,
): ResNetCost {
  const { bottleneck, depths } = RESNETS[arch];
  let parameters = 0;
  let activations = 0;
  const conv = (cin: number, cout: number, k: number, out: number) => {
    parameters += cin * cout * k * k + 2 * cout;
    activations += cout * out * out;
  };
  let s = smallStem ? size : side(size, 7, 2, 3);
  conv(3, width, smallStem ? 3 : 7, s);
  if (!smallStem) s = side(s, 3, 2, 1);
  let inplanes = width;
  const expansion = bottleneck ? 4 : 1;
  depths.forEach((count, stage) => {
    const planes = width * 2 ** stage;
    const out = planes * expansion;
    for (let i = 0; i < count; i++) {
      const stride = i === 0 && stage > 0 ? 2 : 1;
      const t = side(s, 3, stride, 1);
      if (bottleneck) {
        conv(inplanes, planes, 1, s);
        conv(planes, planes, 3, t);
        conv(planes, out, 1, t);
      } else {
        conv(inplanes, planes, 3, t);
        conv(planes, planes, 3, t);
      }
      if (i === 0 && (stride !== 1 || inplanes !== out)) {
        conv(inplanes, out, 1, t);
      }
      s = t;
      inplanes = out;
    }
  });
  return { parameters, activations, featureDim: inplanes };
}

/** One part of an estimate: bytes fixed, and bytes per sample of the batch. */
export interface MemoryEstimate {
  /** Bytes that do not grow with the batch. */
  fixed: number;
  /** Bytes per sample of the batch. */
  perSample: number;
}

/** Total bytes of an estimate at batch size `batch`. */
export function estimateBytes(e: MemoryEstimate, batch: number): number {
  return e.fixed + e.perSample * batch;
}

/** Options of {@link trainingMemory}. */
export interface TrainingMemoryOptions {
  arch: ResNetName;
  width: number;
  smallStem: boolean;
  imageSize: number;
  /** Views per sample the loader makes (2 for MEC, 1 for the probe). */
  views: number;
  /** Loader worker threads. */
  workers: number;
  /**
   * Network passes per sample that keep their activations (MEC: the
   * student's two views and the teacher's two; the probe's frozen
   * backbone: one, without gradients), or 0 where the network runs on a
   * GPU and only host memory is checked.
   */
  passes: number;
  /** Parameters besides the backbone (projector, predictor, head). */
  extraParameters: number;
  /** Float32 copies of each parameter (weights, gradient, momentum, teacher). */
  parameterCopies: number;
}

/** The host memory of a training or probing run, per {@link MemoryEstimate}. */
export function trainingMemory(o: TrainingMemoryOptions): MemoryEstimate {
  const cost = resnetCost(o.arch, o.width, o.smallStem, o.imageSize);
  const batches = Math.max(1, o.workers) * 2 + 2;
  const pixels = 3 * o.imageSize * o.imageSize;
  // One batch more as the backend's copy of the inputs.
  const loader = (batches + 1) * o.views * pixels;
  const network = o.passes * ACTIVATION_COPIES * cost.activations;
  const parameters = (cost.parameters + o.extraParameters) *
    o.parameterCopies;
  return {
    fixed: BASELINE_BYTES + 4 * parameters,
    perSample: 4 * (loader + network),
  };
}

/**
 * The bytes of memory this process can still take: what
 * `Deno.systemMemoryInfo()` reports available (the tasks grant
 * `--allow-sys=systemMemoryInfo`), lowered to the room left under a cgroup
 * v2 memory limit where that can be read (Deno lets only `--allow-all` read
 * /sys); null without the permission, and then nothing is checked.
 */
export function availableMemory(): number | null {
  const sys = Deno.permissions.querySync({
    name: "sys",
    kind: "systemMemoryInfo",
  });
  if (sys.state !== "granted") return null;
  let available = Deno.systemMemoryInfo().available;
  const max = readSmall("/sys/fs/cgroup/memory.max")?.trim();
  const current = readSmall("/sys/fs/cgroup/memory.current")?.trim();
  if (max && current && /^\d+$/.test(max) && /^\d+$/.test(current)) {
    available = Math.min(available, Math.max(0, Number(max) - Number(current)));
  }
  return available;
}

/** A small text file of the kernel's, or null where it cannot be read. */
function readSmall(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
}

/** "1.2 TB", "830 MB". */
export function formatBytes(bytes: number): string {
  const units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toPrecision(value >= 100 ? 3 : 2)} ${units[unit]}`;
}

/**
 * Throws a UsageError when the estimate at `batch` exceeds the memory
 * available, saying how much is needed, how much there is, and the largest
 * batch that fits (or, when none does, what else to lower).
 */
export function checkMemory(
  estimate: MemoryEstimate,
  batch: number,
  what: string,
  lower: string,
  available: number | null = availableMemory(),
): void {
  if (available === null) return;
  const need = estimateBytes(estimate, batch);
  if (need <= available) return;
  const fits = Math.floor((available - estimate.fixed) / estimate.perSample);
  const advice = fits >= 2
    ? `lower --batch-size to ${fits} or less, or ${lower}`
    : `lower ${lower}`;
  throw new UsageError(
    `${what} needs about ${formatBytes(need)} of memory, more than the ${
      formatBytes(available)
    } available; ${advice}.`,
  );
}
