/**
 * GPUs as the driver sees them, and the one sentence that explains why a
 * device cannot be used: no driver, a driver that finds no GPU, or a device
 * index past the last GPU.
 *
 * @module
 */

import {
  contextSetCurrent,
  CUDA_ERROR_NO_DEVICE,
  DeviceAttribute,
  deviceAttribute,
  deviceCount,
  deviceGet,
  deviceName,
  deviceTotalMemory,
  driverLibrary,
  driverStatusString,
  driverVersion,
  initStatus,
  primaryContextRetain,
} from "./driver.ts";

/** One GPU's identity and size. */
export interface GpuInfo {
  index: number;
  name: string;
  /** Bytes of device memory. */
  memory: number;
  /** Compute capability, e.g. [9, 0] for an H100 or H200. */
  capability: [number, number];
  multiprocessors: number;
}

/** A CUDA version number such as 13000 as "13.0". */
export function cudaVersionString(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** The driver's CUDA version, after `cuInit` succeeded; or throws why not. */
export function initDriver(): number {
  driverLibrary(); // throws "No NVIDIA driver is installed: ..."
  const status = initStatus();
  if (status === CUDA_ERROR_NO_DEVICE) {
    throw new Error(
      `The NVIDIA driver (CUDA ${
        cudaVersionString(driverVersion())
      }) finds no GPU on this machine (cuInit: ${driverStatusString(status)}).`,
    );
  }
  if (status !== 0) {
    throw new Error(
      `The NVIDIA driver could not start (cuInit: ${
        driverStatusString(status)
      }).`,
    );
  }
  return driverVersion();
}

/** Every GPU the driver sees; throws one sentence when it sees none. */
export function listGpus(): GpuInfo[] {
  initDriver();
  const out: GpuInfo[] = [];
  for (let i = 0; i < deviceCount(); i++) {
    const dev = deviceGet(i);
    out.push({
      index: i,
      name: deviceName(dev),
      memory: deviceTotalMemory(dev),
      capability: [
        deviceAttribute(DeviceAttribute.computeCapabilityMajor, dev),
        deviceAttribute(DeviceAttribute.computeCapabilityMinor, dev),
      ],
      multiprocessors: deviceAttribute(
        DeviceAttribute.multiprocessorCount,
        dev,
      ),
    });
  }
  return out;
}

/** The index in "cuda" or "cuda:N". */
export function deviceIndex(name: string): number {
  const m = /^cuda(?::(\d+))?$/.exec(name);
  if (!m) {
    throw new Error(`"${name}" is not a CUDA device name (cuda or cuda:N)`);
  }
  return m[1] === undefined ? 0 : Number(m[1]);
}

/** A GPU made ready for work: its primary context current on this thread. */
export interface OpenedGpu {
  info: GpuInfo;
  context: Deno.PointerValue;
}

/** Initialises the driver and makes device `index`'s context current. */
export function openGpu(index: number): OpenedGpu {
  const gpus = listGpus();
  if (index >= gpus.length) {
    const have = gpus.length === 1
      ? "1 GPU (cuda:0)"
      : `${gpus.length} GPUs (cuda:0 to cuda:${gpus.length - 1})`;
    throw new Error(`cuda:${index} does not exist: this machine has ${have}.`);
  }
  const context = primaryContextRetain(deviceGet(index));
  contextSetCurrent(context);
  return { info: gpus[index], context };
}
