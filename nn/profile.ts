/**
 * Where a training step's time and memory go, measured at the backend
 * boundary so that it works for every device.
 *
 * `MEC_PROFILE=1` wraps each backend that `useDevice` opens; `mecStep` then
 * prints, after every step, the time, calls and bytes of each kind of op
 * (convolution directions, GEMM, batch norm, ReLU, pooling, elementwise,
 * reductions, optimiser, allocation, host copies), the time spent outside
 * the backend (autograd and the TypeScript around the ops), the peak of live
 * bytes, the allocator's cached bytes and the process's resident memory.
 * On a device whose ops run asynchronously (a GPU) the wrapper waits for
 * each op to finish, so times are per op at the cost of the overlap.
 *
 * ```ts
 * import { formatProfile, Profiler } from "./profile.ts";
 * import { useDevice } from "./device.ts";
 *
 * const profiler = new Profiler();
 * const be = profiler.wrap(await useDevice("cpu"));
 * profiler.begin();
 * const b = be.alloc(1024);
 * be.fill({ y: b, value: 1 });
 * be.free(b);
 * console.log(formatProfile(profiler.end()));
 * ```
 *
 * @module
 */

import type { Backend, DataBuffer, GemmArgs } from "./backend.ts";
import { peakResidentBytes } from "./proc.ts";

/** The kinds ops are grouped into, in the order they are printed. */
export const PROFILE_KINDS = [
  "conv fwd",
  "conv bwd-data",
  "conv bwd-filter",
  "gemm",
  "batch norm fwd",
  "batch norm bwd",
  "relu",
  "pool",
  "elementwise",
  "reductions",
  "rows (normalize, softmax)",
  "optimiser",
  "allocation",
  "host copies",
] as const;
export type ProfileKind = typeof PROFILE_KINDS[number];

/** The backend's methods that do work (everything but name and settings). */
type OpName = Exclude<
  keyof Backend,
  | "name"
  | "configure"
  | "synchronize"
  | "memory"
  | "threadsUnderLoad"
  | "batchNormReluReserve"
  | "maxPoolReserve"
>;

/** The kind of each op; a new op in the interface must be given one here. */
const KIND_OF: Record<OpName, ProfileKind> = {
  alloc: "allocation",
  free: "allocation",
  emptyCache: "allocation",
  endStep: "allocation",
  write: "host copies",
  read: "host copies",
  copy: "elementwise",
  fill: "elementwise",
  gemm: "gemm",
  dot: "gemm",
  axpby: "elementwise",
  axpbyMany: "optimiser",
  conv2dForward: "conv fwd",
  conv2dBackwardData: "conv bwd-data",
  conv2dBackwardFilter: "conv bwd-filter",
  batchNormForwardTraining: "batch norm fwd",
  batchNormForwardInference: "batch norm fwd",
  batchNormBackward: "batch norm bwd",
  reluForward: "relu",
  reluBackward: "relu",
  maxPoolForward: "pool",
  maxPoolBackward: "pool",
  opTensor: "elementwise",
  addTensor: "elementwise",
  reduceSum: "reductions",
  scaleShift: "elementwise",
  unary: "elementwise",
  sgdUpdate: "optimiser",
  sgdUpdateMany: "optimiser",
  larsAdapt: "optimiser",
  l2NormalizeForward: "rows (normalize, softmax)",
  l2NormalizeBackward: "rows (normalize, softmax)",
  softmaxCrossEntropyForward: "rows (normalize, softmax)",
  softmaxCrossEntropyBackward: "rows (normalize, softmax)",
};

/** Time, calls and bytes moved by one kind of op. */
export interface KindRecord {
  kind: ProfileKind;
  calls: number;
  ms: number;
  /** Bytes of the buffers the ops read and wrote (each operand once). */
  bytes: number;
}

/** One step's profile, from `begin()` to `end()`. */
export interface StepProfile {
  wallMs: number;
  /** Kinds with at least one call, in `PROFILE_KINDS` order. */
  kinds: KindRecord[];
  /** Wall time not spent inside backend ops. */
  outsideMs: number;
  /** The most bytes in buffers handed out at once during the step. */
  peakLiveBytes: number;
  /** Bytes in buffers handed out at the end of the step. */
  liveBytes: number;
  /** Bytes the allocators keep for reuse at the end of the step. */
  cachedBytes: number;
  /** Resident memory of the process at the end of the step. */
  rssBytes: number;
  /** The process's peak resident memory so far (VmHWM), where readable. */
  peakRssBytes: number | null;
}

function isBuffer(v: unknown): v is DataBuffer {
  return typeof v === "object" && v !== null && "device" in v &&
    "length" in v && typeof (v as DataBuffer).length === "number";
}

/**
 * Elements an op's arguments touch: each buffer once, capped by the op's
 * element count where it gives one (`length`, `n`, `count`), lists of
 * buffers by their `lengths`; GEMM by its matrices' sizes.
 */
function elementsTouched(op: OpName, args: unknown[]): number {
  const a = args[0];
  if (
    op === "alloc" || op === "free" || op === "emptyCache" ||
    op === "endStep"
  ) {
    return 0;
  }
  if (op === "write") return 2 * (args[1] as Float32Array).length;
  if (op === "read") {
    const b = args[0] as DataBuffer;
    const offset = (args[1] as number | undefined) ?? 0;
    return 2 * ((args[2] as number | undefined) ?? b.length - offset);
  }
  if (op === "gemm") {
    const g = a as GemmArgs;
    return g.m * g.k + g.k * g.n + (g.beta === 0 ? 1 : 2) * g.m * g.n;
  }
  if (typeof a !== "object" || a === null) return 0;
  const fields = a as Record<string, unknown>;
  const lengths = fields.lengths as number[] | undefined;
  const cap = [fields.length, fields.n, fields.count].find((v) =>
    typeof v === "number"
  ) as number | undefined;
  let total = 0;
  for (const [key, v] of Object.entries(fields)) {
    if (key === "desc") continue;
    if (isBuffer(v)) {
      total += cap === undefined ? v.length : Math.min(cap, v.length);
    } else if (Array.isArray(v) && lengths !== undefined) {
      v.forEach((b, i) => {
        if (isBuffer(b)) total += Math.min(lengths[i] ?? 0, b.length);
      });
    }
  }
  return total;
}

interface Counter {
  calls: number;
  ms: number;
  elements: number;
}

/**
 * Counts time, calls and bytes of every op of the backends it wraps, and
 * the live bytes they hand out.
 */
export class Profiler {
  readonly #counters = new Map<ProfileKind, Counter>();
  readonly #backends: Backend[] = [];
  #start = performance.now();
  #live = 0;
  #peak = 0;

  /**
   * A backend that runs every op of `backend` and records it. Buffers pass
   * through unchanged, so both may be used side by side (only the wrapped
   * one is counted).
   */
  wrap(backend: Backend): Backend {
    this.#backends.push(backend);
    // Methods run on the real backend, whose private fields a Proxy lacks.
    return new Proxy(backend, {
      get: (target, prop) => {
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        if (!(prop in KIND_OF)) return value.bind(target);
        const op = prop as OpName;
        const kind = KIND_OF[op];
        return (...args: unknown[]) => {
          const t = performance.now();
          const result = (value as (...a: unknown[]) => unknown).apply(
            target,
            args,
          );
          if (op !== "alloc" && op !== "free") target.synchronize();
          this.#count(kind, performance.now() - t, elementsTouched(op, args));
          if (op === "alloc") {
            this.#live += 4 * (args[0] as number);
            if (this.#live > this.#peak) this.#peak = this.#live;
          } else if (op === "free") {
            this.#live -= 4 * (args[0] as DataBuffer).length;
          }
          return result;
        };
      },
    });
  }

  #count(kind: ProfileKind, ms: number, elements: number): void {
    let c = this.#counters.get(kind);
    if (c === undefined) {
      c = { calls: 0, ms: 0, elements: 0 };
      this.#counters.set(kind, c);
    }
    c.calls++;
    c.ms += ms;
    c.elements += elements;
  }

  /** Starts a step: clears the counts and sets the peak to what is live. */
  begin(): void {
    for (const b of this.#backends) b.synchronize();
    this.#counters.clear();
    this.#peak = this.#live;
    this.#start = performance.now();
  }

  /** The profile since `begin()`. */
  end(): StepProfile {
    for (const b of this.#backends) b.synchronize();
    const wallMs = performance.now() - this.#start;
    const kinds: KindRecord[] = [];
    let inside = 0;
    for (const kind of PROFILE_KINDS) {
      const c = this.#counters.get(kind);
      if (c === undefined) continue;
      kinds.push({ kind, calls: c.calls, ms: c.ms, bytes: 4 * c.elements });
      inside += c.ms;
    }
    let cached = 0;
    for (const b of this.#backends) cached += b.memory().cached;
    return {
      wallMs,
      kinds,
      outsideMs: Math.max(0, wallMs - inside),
      peakLiveBytes: this.#peak,
      liveBytes: this.#live,
      cachedBytes: cached,
      rssBytes: Deno.memoryUsage().rss,
      peakRssBytes: peakResidentBytes(),
    };
  }
}

const MB = 1024 * 1024;

/** The profile as a table, one line per kind of op, then memory. */
export function formatProfile(p: StepProfile, title = "step"): string {
  const lines = [
    `${title}: ${(p.wallMs / 1000).toFixed(3)} s`,
    `  ${"op kind".padEnd(26)} ${"ms".padStart(9)} ${"share".padStart(6)} ${
      "calls".padStart(7)
    } ${"MB".padStart(9)} ${"GB/s".padStart(6)}`,
  ];
  const row = (name: string, ms: number, calls = "", bytes?: number) => {
    const share = `${(100 * ms / p.wallMs).toFixed(1)}%`;
    const mb = bytes === undefined ? "" : (bytes / MB).toFixed(0);
    const rate = bytes === undefined || ms === 0
      ? ""
      : (bytes / 1e6 / ms).toFixed(1);
    lines.push(
      `  ${name.padEnd(26)} ${ms.toFixed(1).padStart(9)} ${share.padStart(6)} ${
        calls.padStart(7)
      } ${mb.padStart(9)} ${rate.padStart(6)}`,
    );
  };
  for (const k of p.kinds) row(k.kind, k.ms, String(k.calls), k.bytes);
  row("outside the backend", p.outsideMs);
  const peakRss = p.peakRssBytes === null
    ? ""
    : `, peak resident ${(p.peakRssBytes / MB).toFixed(0)} MB`;
  lines.push(
    `  memory: peak live ${(p.peakLiveBytes / MB).toFixed(0)} MB, live ${
      (p.liveBytes / MB).toFixed(0)
    } MB, cached ${(p.cachedBytes / MB).toFixed(0)} MB, resident ${
      (p.rssBytes / MB).toFixed(0)
    } MB${peakRss}`,
  );
  return lines.join("\n");
}

let active: Profiler | null | undefined;

/**
 * The process's profiler when `MEC_PROFILE` is set to anything but "" or
 * "0", else null. Read once.
 */
export function envProfiler(): Profiler | null {
  if (active === undefined) {
    const v = Deno.env.get("MEC_PROFILE");
    active = v === undefined || v === "" || v === "0" ? null : new Profiler();
  }
  return active;
}
