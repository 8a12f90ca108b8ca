/**
 * Convolutions on cuDNN: one plan per shape with its descriptors and, per
 * direction, the algorithm chosen the first time that direction runs, kept
 * for the life of the process (what `torch.backends.cudnn.benchmark` does).
 *
 * How an algorithm is chosen:
 * - by default, by measurement: cuDNN times every algorithm on the op's own
 *   buffers (`cudnnFind...AlgorithmEx`) and the fastest that succeeded wins;
 * - in deterministic mode, the first algorithm cuDNN's heuristics rank that
 *   is deterministic, with no timing, so that two processes pick the same
 *   algorithm and compute the same bits (an exact `--resume`).
 * Without TF32 the convolution's math type is FMA (exact float32, as
 * PyTorch with `allow_tf32 = False`); with it, tensor-op math is allowed.
 *
 * @module
 */

import type { ConvDesc } from "../nn/backend.ts";
import {
  type AlgoPerf,
  type ConvDescriptors,
  type ConvDirection,
  type CudnnHandle,
  DEFAULT_MATH,
  DETERMINISTIC,
  FMA_MATH,
  TENSOR_OP_MATH,
} from "./cudnn.ts";
import { convDescriptors } from "./descriptors.ts";

/** How algorithms are chosen. */
export interface ConvMode {
  deterministic: boolean;
  tf32: boolean;
}

/** The cache key of a convolution shape in a mode. */
export function convKey(d: ConvDesc, mode: ConvMode): string {
  return [
    d.n,
    d.c,
    d.h,
    d.w,
    d.k,
    d.r,
    d.s,
    d.strideH,
    d.strideW,
    d.padH,
    d.padW,
    mode.deterministic ? "det" : "fast",
    mode.tf32 ? "tf32" : "fp32",
  ].join(",");
}

/**
 * The algorithm to run among cuDNN's results (fastest first for measured
 * results, best first for heuristics): the first that succeeded, is allowed
 * by the math mode and, in deterministic mode, is deterministic. Null when
 * none qualifies.
 */
export function chooseAlgorithm(
  perfs: readonly AlgoPerf[],
  mode: ConvMode,
): AlgoPerf | null {
  for (const p of perfs) {
    if (p.status !== 0) continue;
    if (mode.deterministic && p.determinism !== DETERMINISTIC) continue;
    if (!mode.tf32 && p.mathType !== FMA_MATH && p.mathType !== DEFAULT_MATH) {
      continue; // tensor-op math: TF32 products
    }
    return p;
  }
  return null;
}

/** Device buffers of one convolution call, by role. */
export interface ConvBuffers {
  x: bigint;
  w: bigint;
  y: bigint;
}

/** Workspace memory from the backend's caching allocator. */
export interface Workspace {
  alloc(bytes: number): bigint;
  free(address: bigint): void;
}

/** Bytes offered to cuDNN's measurement; algorithms needing more lose. */
const FIND_WORKSPACE_LIMIT = 1 << 30;

/** One shape's descriptors and chosen algorithms. */
export class ConvPlan {
  readonly desc: ConvDescriptors;
  readonly #chosen = new Map<ConvDirection, AlgoPerf>();
  /** The math type the shared convolution descriptor holds now. */
  #mathType: number;

  constructor(d: ConvDesc, readonly mode: ConvMode) {
    this.desc = convDescriptors(d);
    this.#mathType = mode.tf32 ? TENSOR_OP_MATH : FMA_MATH;
    this.desc.conv.setMathType(this.#mathType);
  }

  /**
   * The algorithm of a direction, chosen on first use, with the descriptor
   * set to the math type it was chosen with (the three directions share
   * one convolution descriptor and may differ in it).
   */
  algorithm(
    handle: CudnnHandle,
    dir: ConvDirection,
    buffers: ConvBuffers,
    workspace: Workspace,
  ): AlgoPerf {
    let p = this.#chosen.get(dir);
    if (p === undefined) {
      p = this.#choose(handle, dir, buffers, workspace);
      this.#chosen.set(dir, p);
    }
    if (p.mathType !== this.#mathType) {
      this.desc.conv.setMathType(p.mathType);
      this.#mathType = p.mathType;
    }
    return p;
  }

  #choose(
    handle: CudnnHandle,
    dir: ConvDirection,
    b: ConvBuffers,
    workspace: Workspace,
  ): AlgoPerf {
    const ranked = handle.algorithms(dir, this.desc);
    let perf: AlgoPerf | null;
    if (this.mode.deterministic) {
      perf = chooseAlgorithm(ranked, this.mode);
    } else {
      const need = Math.max(
        0,
        ...ranked.filter((p) => p.status === 0).map((p) => p.memory),
      );
      const bytes = Math.min(need, FIND_WORKSPACE_LIMIT);
      const ws = workspace.alloc(bytes);
      try {
        perf = chooseAlgorithm(
          handle.findAlgorithms(dir, this.desc, b.x, b.w, b.y, ws, bytes),
          this.mode,
        ) ?? chooseAlgorithm(ranked, this.mode);
      } finally {
        workspace.free(ws);
      }
    }
    if (perf === null) {
      throw new Error(
        `cuDNN has no ${
          this.mode.deterministic ? "deterministic " : ""
        }algorithm for this convolution's ${dir} pass`,
      );
    }
    // Exact float32 runs with FMA math whatever cuDNN reported: its default
    // math lets Ampere and newer GPUs use TF32.
    const mathType = this.mode.tf32 ? perf.mathType : FMA_MATH;
    this.desc.conv.setMathType(mathType);
    this.#mathType = mathType;
    const exact = handle.workspaceSize(dir, this.desc, perf.algo);
    return { ...perf, mathType, memory: exact };
  }

  dispose(): void {
    this.desc.x.dispose();
    this.desc.w.dispose();
    this.desc.conv.dispose();
    this.desc.y.dispose();
  }
}
