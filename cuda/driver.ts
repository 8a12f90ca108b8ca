/**
 * The CUDA driver API (`libcuda.so.1`): initialisation, devices and their
 * attributes, the primary context, memory, streams, events, modules from
 * CUBIN or PTX, and kernel launches.
 *
 * The symbol table binds the names `cuda.h` `#define`s to (`cuMemAlloc_v2`,
 * never the legacy 32-bit `cuMemAlloc`); a test checks every entry against
 * the real header. Device addresses are `bigint`s (`CUdeviceptr`, 64 bits).
 *
 * The current context belongs to the calling host thread, so every call here
 * is synchronous: it runs on the JavaScript thread that made the context
 * current.
 *
 * @module
 */

import { lazyLibrary, type Opened } from "./find.ts";
import {
  addressOf,
  bufferString,
  checker,
  out,
  pointerOut,
  readCString,
} from "./ffi.ts";

export const DRIVER_SYMBOLS = {
  cuInit: { parameters: ["u32"], result: "i32" },
  cuDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cuGetErrorName: { parameters: ["i32", "buffer"], result: "i32" },
  cuGetErrorString: { parameters: ["i32", "buffer"], result: "i32" },
  cuDeviceGet: { parameters: ["buffer", "i32"], result: "i32" },
  cuDeviceGetCount: { parameters: ["buffer"], result: "i32" },
  cuDeviceGetName: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuDeviceGetAttribute: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuDeviceTotalMem_v2: { parameters: ["buffer", "i32"], result: "i32" },
  cuDevicePrimaryCtxRetain: { parameters: ["buffer", "i32"], result: "i32" },
  cuDevicePrimaryCtxRelease_v2: { parameters: ["i32"], result: "i32" },
  cuCtxSetCurrent: { parameters: ["pointer"], result: "i32" },
  cuCtxGetCurrent: { parameters: ["buffer"], result: "i32" },
  cuCtxSynchronize: { parameters: [], result: "i32" },
  cuMemGetInfo_v2: { parameters: ["buffer", "buffer"], result: "i32" },
  cuMemAlloc_v2: { parameters: ["buffer", "usize"], result: "i32" },
  cuMemFree_v2: { parameters: ["u64"], result: "i32" },
  cuMemHostAlloc: { parameters: ["buffer", "usize", "u32"], result: "i32" },
  cuMemFreeHost: { parameters: ["pointer"], result: "i32" },
  cuMemcpyHtoD_v2: { parameters: ["u64", "buffer", "usize"], result: "i32" },
  cuMemcpyDtoH_v2: { parameters: ["buffer", "u64", "usize"], result: "i32" },
  cuMemcpyDtoD_v2: { parameters: ["u64", "u64", "usize"], result: "i32" },
  cuMemcpyHtoDAsync_v2: {
    parameters: ["u64", "pointer", "usize", "pointer"],
    result: "i32",
  },
  cuMemcpyDtoHAsync_v2: {
    parameters: ["pointer", "u64", "usize", "pointer"],
    result: "i32",
  },
  cuMemcpyDtoDAsync_v2: {
    parameters: ["u64", "u64", "usize", "pointer"],
    result: "i32",
  },
  cuMemsetD32Async: {
    parameters: ["u64", "u32", "usize", "pointer"],
    result: "i32",
  },
  cuStreamCreate: { parameters: ["buffer", "u32"], result: "i32" },
  cuStreamSynchronize: { parameters: ["pointer"], result: "i32" },
  cuStreamDestroy_v2: { parameters: ["pointer"], result: "i32" },
  cuStreamWaitEvent: {
    parameters: ["pointer", "pointer", "u32"],
    result: "i32",
  },
  cuEventCreate: { parameters: ["buffer", "u32"], result: "i32" },
  cuEventRecord: { parameters: ["pointer", "pointer"], result: "i32" },
  cuEventSynchronize: { parameters: ["pointer"], result: "i32" },
  cuEventQuery: { parameters: ["pointer"], result: "i32" },
  // CUDA 13's name; drivers before it export only the legacy name below,
  // whose prototype is the same, so either may be missing.
  cuEventElapsedTime_v2: {
    parameters: ["buffer", "pointer", "pointer"],
    result: "i32",
    optional: true,
  },
  cuEventElapsedTime: {
    parameters: ["buffer", "pointer", "pointer"],
    result: "i32",
    optional: true,
  },
  cuEventDestroy_v2: { parameters: ["pointer"], result: "i32" },
  cuModuleLoadData: { parameters: ["buffer", "buffer"], result: "i32" },
  cuModuleGetFunction: {
    parameters: ["buffer", "pointer", "buffer"],
    result: "i32",
  },
  cuModuleUnload: { parameters: ["pointer"], result: "i32" },
  cuFuncSetAttribute: { parameters: ["pointer", "i32", "i32"], result: "i32" },
  cuLaunchKernel: {
    parameters: [
      "pointer", // f
      "u32", // gridDimX
      "u32", // gridDimY
      "u32", // gridDimZ
      "u32", // blockDimX
      "u32", // blockDimY
      "u32", // blockDimZ
      "u32", // sharedMemBytes
      "pointer", // hStream
      "buffer", // kernelParams
      "pointer", // extra
    ],
    result: "i32",
  },
} as const;

/**
 * Symbols bound on purpose by their legacy, unversioned name, with the
 * header declaration (under `__CUDA_API_VERSION_INTERNAL`) that they match.
 */
export const DRIVER_LEGACY_NAMES: ReadonlySet<string> = new Set([
  "cuEventElapsedTime",
]);

/** `CUdevice_attribute` values the toolkit reads (cuda.h). */
export const DeviceAttribute = {
  maxThreadsPerBlock: 1,
  maxSharedMemoryPerBlock: 8,
  warpSize: 10,
  multiprocessorCount: 16,
  l2CacheSize: 38,
  maxThreadsPerMultiprocessor: 39,
  unifiedAddressing: 41,
  computeCapabilityMajor: 75,
  computeCapabilityMinor: 76,
  maxSharedMemoryPerBlockOptin: 97,
} as const;

/** `cuStreamCreate` flags. */
export const STREAM_NON_BLOCKING = 1;
/** `cuEventCreate` flags. */
export const EVENT_DEFAULT = 0;
export const EVENT_DISABLE_TIMING = 2;
/** `CUfunction_attribute` for kernels that need over 48 KiB of shared memory. */
export const FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;

/** The driver library, opened on first use; throws one sentence if absent. */
export const driverLibrary: () => Opened<typeof DRIVER_SYMBOLS> = lazyLibrary(
  "driver",
  DRIVER_SYMBOLS,
);

const sym = () => driverLibrary().symbols;

/** `CUDA_ERROR_NAME: description`, from the driver itself. */
export function driverStatusString(status: number): string {
  const name = out.u64();
  const text = out.u64();
  const s = sym();
  const known = s.cuGetErrorName(status, name) === 0;
  s.cuGetErrorString(status, text);
  if (!known) return "an unknown CUresult";
  return `${readCString(pointerOut(name))} (${readCString(pointerOut(text))})`;
}

const check = checker("CUDA driver", driverStatusString);

/** `CUDA_ERROR_NO_DEVICE`, which `cuInit` returns on a machine with no GPU. */
export const CUDA_ERROR_NO_DEVICE = 100;

/** The driver's CUDA version (13000 for 13.0); needs no GPU and no cuInit. */
export function driverVersion(): number {
  const v = out.i32();
  check(sym().cuDriverGetVersion(v), "cuDriverGetVersion");
  return v[0];
}

/** `cuInit(0)`; the status is returned so callers can explain it. */
export function initStatus(): number {
  return sym().cuInit(0);
}

/** `cuInit(0)`, throwing on failure. */
export function init(): void {
  check(initStatus(), "cuInit");
}

export function deviceCount(): number {
  const n = out.i32();
  check(sym().cuDeviceGetCount(n), "cuDeviceGetCount");
  return n[0];
}

/** The `CUdevice` handle of ordinal `index`. */
export function deviceGet(index: number): number {
  const d = out.i32();
  check(sym().cuDeviceGet(d, index), "cuDeviceGet");
  return d[0];
}

export function deviceName(dev: number): string {
  const buf = new Uint8Array(256);
  check(sym().cuDeviceGetName(buf, buf.length, dev), "cuDeviceGetName");
  return bufferString(buf);
}

export function deviceAttribute(attribute: number, dev: number): number {
  const v = out.i32();
  check(
    sym().cuDeviceGetAttribute(v, attribute, dev),
    "cuDeviceGetAttribute",
  );
  return v[0];
}

/** Total device memory in bytes. */
export function deviceTotalMemory(dev: number): number {
  const v = out.u64();
  check(sym().cuDeviceTotalMem_v2(v, dev), "cuDeviceTotalMem_v2");
  return Number(v[0]);
}

/** The primary context of a device (the one cuBLAS and cuDNN use). */
export function primaryContextRetain(dev: number): Deno.PointerValue {
  const c = out.u64();
  check(sym().cuDevicePrimaryCtxRetain(c, dev), "cuDevicePrimaryCtxRetain");
  return pointerOut(c);
}

export function primaryContextRelease(dev: number): void {
  check(
    sym().cuDevicePrimaryCtxRelease_v2(dev),
    "cuDevicePrimaryCtxRelease_v2",
  );
}

export function contextSetCurrent(ctx: Deno.PointerValue): void {
  check(sym().cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

export function contextSynchronize(): void {
  check(sym().cuCtxSynchronize(), "cuCtxSynchronize");
}

/** Free and total memory of the current context's device, in bytes. */
export function memoryInfo(): { free: number; total: number } {
  const free = out.u64();
  const total = out.u64();
  check(sym().cuMemGetInfo_v2(free, total), "cuMemGetInfo_v2");
  return { free: Number(free[0]), total: Number(total[0]) };
}

/**
 * `cuMemAlloc_v2`; returns the status and the address so that a caching
 * allocator can react to out-of-memory itself.
 */
export function memAllocStatus(
  bytes: number,
): { status: number; address: bigint } {
  const p = out.u64();
  const status = sym().cuMemAlloc_v2(p, BigInt(bytes));
  return { status, address: p[0] };
}

export function memAlloc(bytes: number): bigint {
  const { status, address } = memAllocStatus(bytes);
  check(status, "cuMemAlloc_v2");
  return address;
}

export function memFree(address: bigint): void {
  check(sym().cuMemFree_v2(address), "cuMemFree_v2");
}

/** Page-locked host memory, as a pointer and an ArrayBuffer over it. */
export interface PinnedBuffer {
  pointer: Deno.PointerObject;
  buffer: ArrayBuffer;
}

export function hostAlloc(bytes: number): PinnedBuffer {
  const p = out.u64();
  check(sym().cuMemHostAlloc(p, BigInt(bytes), 0), "cuMemHostAlloc");
  const ptr = pointerOut(p);
  if (ptr === null) throw new Error("cuMemHostAlloc returned no memory");
  return {
    pointer: ptr,
    buffer: Deno.UnsafePointerView.getArrayBuffer(ptr, bytes),
  };
}

export function hostFree(p: Deno.PointerObject): void {
  check(sym().cuMemFreeHost(p), "cuMemFreeHost");
}

/** Synchronous copy from host memory to the device. */
export function copyHostToDevice(
  dst: bigint,
  src: ArrayBufferView<ArrayBuffer>,
  bytes: number,
): void {
  check(sym().cuMemcpyHtoD_v2(dst, src, BigInt(bytes)), "cuMemcpyHtoD_v2");
}

/** Synchronous copy from the device to host memory. */
export function copyDeviceToHost(
  dst: ArrayBufferView<ArrayBuffer>,
  src: bigint,
  bytes: number,
): void {
  check(sym().cuMemcpyDtoH_v2(dst, src, BigInt(bytes)), "cuMemcpyDtoH_v2");
}

/** Copy from pinned host memory, queued on a stream. */
export function copyHostToDeviceAsync(
  dst: bigint,
  src: Deno.PointerValue,
  bytes: number,
  stream: Deno.PointerValue,
): void {
  check(
    sym().cuMemcpyHtoDAsync_v2(dst, src, BigInt(bytes), stream),
    "cuMemcpyHtoDAsync_v2",
  );
}

/** Copy to pinned host memory, queued on a stream. */
export function copyDeviceToHostAsync(
  dst: Deno.PointerValue,
  src: bigint,
  bytes: number,
  stream: Deno.PointerValue,
): void {
  check(
    sym().cuMemcpyDtoHAsync_v2(dst, src, BigInt(bytes), stream),
    "cuMemcpyDtoHAsync_v2",
  );
}

export function copyDeviceToDeviceAsync(
  dst: bigint,
  src: bigint,
  bytes: number,
  stream: Deno.PointerValue,
): void {
  check(
    sym().cuMemcpyDtoDAsync_v2(dst, src, BigInt(bytes), stream),
    "cuMemcpyDtoDAsync_v2",
  );
}

/** Sets `count` 32-bit words to the bit pattern `word`, on a stream. */
export function memsetD32Async(
  dst: bigint,
  word: number,
  count: number,
  stream: Deno.PointerValue,
): void {
  check(
    sym().cuMemsetD32Async(dst, word >>> 0, BigInt(count), stream),
    "cuMemsetD32Async",
  );
}

export function streamCreate(flags = STREAM_NON_BLOCKING): Deno.PointerValue {
  const s = out.u64();
  check(sym().cuStreamCreate(s, flags), "cuStreamCreate");
  return pointerOut(s);
}

export function streamSynchronize(stream: Deno.PointerValue): void {
  check(sym().cuStreamSynchronize(stream), "cuStreamSynchronize");
}

export function streamDestroy(stream: Deno.PointerValue): void {
  check(sym().cuStreamDestroy_v2(stream), "cuStreamDestroy_v2");
}

/**
 * Work queued on `stream` after this waits until `event`'s recorded work is
 * done, without blocking the host.
 */
export function streamWaitEvent(
  stream: Deno.PointerValue,
  event: Deno.PointerValue,
): void {
  check(sym().cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent");
}

export function eventCreate(flags = EVENT_DEFAULT): Deno.PointerValue {
  const e = out.u64();
  check(sym().cuEventCreate(e, flags), "cuEventCreate");
  return pointerOut(e);
}

export function eventRecord(
  event: Deno.PointerValue,
  stream: Deno.PointerValue,
): void {
  check(sym().cuEventRecord(event, stream), "cuEventRecord");
}

export function eventSynchronize(event: Deno.PointerValue): void {
  check(sym().cuEventSynchronize(event), "cuEventSynchronize");
}

/** `CUDA_ERROR_NOT_READY`: the event's work is still queued or running. */
const NOT_READY = 600;

/**
 * Whether `event`'s recorded work is done, without waiting
 * (`cuEventQuery`: CUDA_SUCCESS or CUDA_ERROR_NOT_READY; other codes throw).
 */
export function eventQuery(event: Deno.PointerValue): boolean {
  const status = sym().cuEventQuery(event);
  if (status === NOT_READY) return false;
  check(status, "cuEventQuery");
  return true;
}

/** Milliseconds between two recorded, completed events. */
export function eventElapsedMs(
  start: Deno.PointerValue,
  end: Deno.PointerValue,
): number {
  const ms = out.f32();
  const s = sym();
  if (s.cuEventElapsedTime_v2) {
    check(s.cuEventElapsedTime_v2(ms, start, end), "cuEventElapsedTime_v2");
  } else if (s.cuEventElapsedTime) {
    check(s.cuEventElapsedTime(ms, start, end), "cuEventElapsedTime");
  } else {
    throw new Error("the CUDA driver exports no cuEventElapsedTime");
  }
  return ms[0];
}

export function eventDestroy(event: Deno.PointerValue): void {
  check(sym().cuEventDestroy_v2(event), "cuEventDestroy_v2");
}

/** Loads a CUBIN, fatbin or NUL-terminated PTX image into the context. */
export function moduleLoadData(
  image: Uint8Array<ArrayBuffer>,
): Deno.PointerValue {
  const m = out.u64();
  check(sym().cuModuleLoadData(m, image), "cuModuleLoadData");
  return pointerOut(m);
}

export function moduleGetFunction(
  module: Deno.PointerValue,
  name: string,
): Deno.PointerValue {
  const f = out.u64();
  check(
    sym().cuModuleGetFunction(f, module, new TextEncoder().encode(name + "\0")),
    `cuModuleGetFunction(${name})`,
  );
  return pointerOut(f);
}

export function moduleUnload(module: Deno.PointerValue): void {
  check(sym().cuModuleUnload(module), "cuModuleUnload");
}

export function functionSetAttribute(
  fn: Deno.PointerValue,
  attribute: number,
  value: number,
): void {
  check(sym().cuFuncSetAttribute(fn, attribute, value), "cuFuncSetAttribute");
}

/**
 * A kernel argument: a host copy of its value with the kernel's type
 * (`Float32Array([x])` for a float, `BigUint64Array([address])` for a
 * pointer, `Int32Array([n])` for an int). The driver copies the values
 * during the launch.
 */
export type KernelArg = ArrayBufferView<ArrayBuffer>;

/** Grid and block sizes, x first. */
export type Dim3 = readonly [number, number, number];

/** Queues a kernel on a stream. */
export function launchKernel(
  fn: Deno.PointerValue,
  grid: Dim3,
  block: Dim3,
  sharedBytes: number,
  stream: Deno.PointerValue,
  args: readonly KernelArg[],
): void {
  const params = new BigUint64Array(args.map((a) => addressOf(a)));
  check(
    sym().cuLaunchKernel(
      fn,
      grid[0],
      grid[1],
      grid[2],
      block[0],
      block[1],
      block[2],
      sharedBytes,
      stream,
      params,
      null,
    ),
    "cuLaunchKernel",
  );
}
