/**
 * The device tables of the multi-tensor launches (sgd_update_many,
 * axpby_many; optim_source.ts gives their layout), cached on the device.
 *
 * A table holds the tensors' prefix offsets and, one column per operand,
 * their addresses: nothing that changes while the tensors stay where they
 * are, so one upload can serve every later launch over the same tensors.
 * Each launch builds its table on the host (in one array reused from launch
 * to launch: 5 KiB for ResNet-50's 161 parameters with three operands) and
 * compares it word by word with the cached tables; the key is the content,
 * so a table found is correct whatever the allocator does.
 *
 * Where the addresses come from: parameters, momentum buffers and the
 * teacher's parameters are allocated once and keep their addresses for the
 * whole run, so the EMA's table is uploaded once. Gradients are freed by
 * `zeroGrad` and allocated again by every backward pass; the caching
 * allocator hands them blocks of their size class again, but permuted
 * (last freed, first reused, with the step's other requests in between), so
 * their addresses do not repeat from one step to the next
 * (tests/cuda_tables_test.ts follows a MEC run through the CUDA allocator).
 * A launch therefore names its gradients' column *volatile*: it is not part
 * of the key, and a cached table that matches in everything else gets that
 * column rewritten in place when it differs (1.3 KiB for ResNet-50), rather
 * than a new table made for each step. So SGD's table is uploaded whole
 * once, for the first step, and later steps write its gradient column.
 *
 * Every write goes through `TableMemory.write`, the backend's pinned
 * staging: a host-to-device copy queued on the stream, after the launches
 * that read the old contents and before the launch that reads the new, with
 * no wait for the device. A table that matches no cached one is uploaded
 * whole into a new block; when `capacity` (4) tables are held, the least
 * recently used is evicted and its block freed first, so that the new table
 * usually gets the same block back and device memory does not grow
 * (freeing a block that a queued kernel still reads is safe: the
 * allocator's reuse is in stream order, cuda/allocator.ts). A training step
 * uses two tables (SGD's and the EMA's, or LARS's); four leave room for a
 * second optimiser or model.
 *
 * @module
 */

/** Device memory for tables, from the backend's caching allocator. */
export interface TableMemory {
  /** A block of at least `bytes` bytes; its address. */
  alloc(bytes: number): bigint;
  free(address: bigint): void;
  /**
   * Queues a copy of `data`'s bytes to `address` on the stream (the
   * backend's `write`, through pinned staging); `data` may be reused once
   * it returns. The bytes are copied as they are: `data` is a view of the
   * 64-bit words, not float values.
   */
  write(address: bigint, data: Float32Array): void;
}

/** Tables a cache holds at most, unless told otherwise. */
export const TABLE_CACHE_SIZE = 4;

/** How a cache has been used. */
export interface TableCacheStats {
  /** Launches that found their table on the device as it was. */
  hits: number;
  /** Launches that found their table and rewrote its volatile columns. */
  updates: number;
  /** Whole tables written to the device (the misses). */
  uploads: number;
  /** Tables dropped to make room. */
  evictions: number;
  /** Tables held now. */
  tables: number;
  /** Bytes of the tables held now. */
  bytes: number;
}

interface Entry {
  /** The table's 64-bit words as pairs of 32-bit halves, as last written. */
  halves: Uint32Array<ArrayBuffer>;
  /** The volatile columns, which a lookup may rewrite in place. */
  volatile: readonly number[];
  address: bigint;
}

/**
 * Tables of multi-tensor launches on the device, at most `capacity` of them,
 * least recently used evicted first.
 *
 * @example
 * ```ts ignore
 * const tables = new TableCache(memory);
 * // Two tensors of 3 and 5 elements, each with an x and a y.
 * const table = tables.address([0, 3, 8], [[x0, x1], [y0, y1]]);
 * tables.address([0, 3, 8], [[x0, x1], [y0, y1]]); // the same: no upload
 * ```
 */
export class TableCache {
  readonly #memory: TableMemory;
  readonly #capacity: number;
  /** Least recently used first. */
  readonly #entries: Entry[] = [];
  /** The table being built, reused from launch to launch. */
  #words = new BigUint64Array(0);
  #hits = 0;
  #updates = 0;
  #uploads = 0;
  #evictions = 0;

  constructor(memory: TableMemory, capacity: number = TABLE_CACHE_SIZE) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(
        `a table cache holds at least one table, not ${capacity}`,
      );
    }
    this.#memory = memory;
    this.#capacity = capacity;
  }

  /**
   * The device address of the table with these prefix `offsets` (tensors +
   * 1 of them, from `multiTensor`) and, for each operand, the `columns`
   * list of the tensors' addresses: words offsets[0 .. tensors], then each
   * column in turn (column k of tensor t is word tensors + 1 + k * tensors
   * + t). The columns listed in `volatile` (the gradients', which move
   * from step to step) are not part of the key: a cached table that
   * matches in everything else gets them rewritten in place, when they
   * differ, instead of a new table. Anything else that differs from every
   * cached table is a new table, uploaded whole.
   */
  address(
    offsets: readonly number[],
    columns: readonly (readonly bigint[])[],
    volatile: readonly number[] = [],
  ): bigint {
    const tensors = offsets.length - 1;
    const length = tensors + 1 + tensors * columns.length;
    if (this.#words.length < length) this.#words = new BigUint64Array(length);
    const words = this.#words;
    for (let t = 0; t <= tensors; t++) words[t] = BigInt(offsets[t]);
    columns.forEach((column, k) => {
      if (column.length !== tensors) {
        throw new RangeError(
          `table column ${k} has ${column.length} addresses for ${tensors} tensors`,
        );
      }
      words.set(column, tensors + 1 + k * tensors);
    });
    const halves = new Uint32Array(words.buffer, 0, 2 * length);
    /** Halves [begin, end) of column k. */
    const span = (k: number): [number, number] => [
      2 * (tensors + 1 + k * tensors),
      2 * (tensors + 1 + (k + 1) * tensors),
    ];
    const volatileSpans = volatile.map(span);
    const entries = this.#entries;
    for (let e = entries.length - 1; e >= 0; e--) {
      const entry = entries[e];
      if (!sameKey(entry, halves, volatile, volatileSpans)) continue;
      let rewritten = false;
      for (const [begin, end] of volatileSpans) {
        if (equal(entry.halves, halves, begin, end)) continue;
        entry.halves.set(halves.subarray(begin, end), begin);
        // Stream order puts this copy after the launches that read the
        // old column, and before the next one.
        this.#memory.write(
          entry.address + BigInt(4 * begin),
          new Float32Array(entry.halves.buffer, 4 * begin, end - begin),
        );
        rewritten = true;
      }
      if (rewritten) this.#updates++;
      else this.#hits++;
      if (e !== entries.length - 1) {
        entries.splice(e, 1);
        entries.push(entry);
      }
      return entry.address;
    }
    if (entries.length >= this.#capacity) {
      const old = entries.shift()!;
      this.#evictions++;
      this.#memory.free(old.address);
    }
    const copy = halves.slice();
    const address = this.#memory.alloc(copy.byteLength);
    try {
      this.#memory.write(address, new Float32Array(copy.buffer));
    } catch (e) {
      this.#memory.free(address);
      throw e;
    }
    this.#uploads++;
    entries.push({ halves: copy, volatile: [...volatile], address });
    return address;
  }

  stats(): TableCacheStats {
    return {
      hits: this.#hits,
      updates: this.#updates,
      uploads: this.#uploads,
      evictions: this.#evictions,
      tables: this.#entries.length,
      bytes: this.#entries.reduce((s, e) => s + e.halves.byteLength, 0),
    };
  }

  /** Frees every table; the cache may be used again (it starts empty). */
  clear(): void {
    while (this.#entries.length > 0) {
      this.#memory.free(this.#entries.pop()!.address);
    }
  }
}

/**
 * Whether a cached table has the key of `halves`: the same length, the same
 * volatile columns, and the same words outside them.
 */
function sameKey(
  entry: Entry,
  halves: Uint32Array,
  volatile: readonly number[],
  spans: readonly (readonly [number, number])[],
): boolean {
  if (entry.halves.length !== halves.length) return false;
  if (entry.volatile.length !== volatile.length) return false;
  if (!entry.volatile.every((k, i) => k === volatile[i])) return false;
  // The stable stretches between the volatile columns, in order.
  const sorted = [...spans].sort((a, b) => a[0] - b[0]);
  let from = 0;
  for (const [begin, end] of sorted) {
    if (!equal(entry.halves, halves, from, begin)) return false;
    from = end;
  }
  return equal(entry.halves, halves, from, halves.length);
}

/** Whether a and b agree on [begin, end). */
function equal(
  a: Uint32Array,
  b: Uint32Array,
  begin: number,
  end: number,
): boolean {
  for (let i = begin; i < end; i++) if (a[i] !== b[i]) return false;
  return true;
}
