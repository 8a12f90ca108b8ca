/**
 * A caching allocator for host memory: freed arrays are kept by length and
 * handed out again. Shapes repeat every training step, so after the first
 * step no large array is allocated; a fresh one costs page faults and zeroing
 * several times the cost of the op that writes it.
 *
 * @module
 */

import type { MemoryInfo } from "../nn/backend.ts";

export class CachingAllocator {
  #free = new Map<number, Float32Array[]>();
  #allocated = 0;
  #cached = 0;

  /** An array of exactly `length` elements with undefined contents. */
  alloc(length: number): Float32Array {
    const list = this.#free.get(length);
    const reused = list?.pop();
    this.#allocated += 4 * length;
    if (reused) {
      this.#cached -= 4 * length;
      return reused;
    }
    return new Float32Array(length);
  }

  /** Returns an array to the cache. */
  free(array: Float32Array): void {
    const length = array.length;
    this.#allocated -= 4 * length;
    this.#cached += 4 * length;
    let list = this.#free.get(length);
    if (!list) {
      list = [];
      this.#free.set(length, list);
    }
    list.push(array);
  }

  /** Drops every cached array, leaving them to the garbage collector. */
  empty(): void {
    this.#free.clear();
    this.#cached = 0;
  }

  memory(): MemoryInfo {
    return { allocated: this.#allocated, cached: this.#cached };
  }
}

/**
 * One growing scratch array for kernels that need temporary space (im2col
 * columns). Never hold the result across calls: the next call may reuse it.
 */
export class Scratch {
  #array = new Float32Array(0);

  get(length: number): Float32Array {
    if (this.#array.length < length) {
      // Grow by half again so that slowly rising sizes do not reallocate often.
      this.#array = new Float32Array(
        Math.max(length, this.#array.length * 1.5 | 0),
      );
    }
    return this.#array;
  }

  get bytes(): number {
    return 4 * this.#array.length;
  }

  release(): void {
    this.#array = new Float32Array(0);
  }
}
