/**
 * NCCL (`libnccl.so.2`): collectives between GPUs, in one process or many.
 *
 * A communicator is made from a 128-byte unique id that one rank creates
 * and every rank receives (over MPI, say); `ncclCommInitRank` takes the id
 * as a struct by value, which Deno FFI passes as `{ struct: [128 x u8] }`.
 * Collectives are queued on a stream and count elements, not bytes.
 *
 * @module
 */

import { lazyLibrary, type Opened } from "./find.ts";
import { checker, out, pointer, pointerOut, readCString } from "./ffi.ts";

/** `ncclUniqueId`: `struct { char internal[128]; }`, alignment 1. */
const UNIQUE_ID: "u8"[] = new Array<"u8">(128).fill("u8");
export const UNIQUE_ID_BYTES = 128;

export const NCCL_SYMBOLS = {
  ncclGetVersion: { parameters: ["buffer"], result: "i32" },
  ncclGetErrorString: { parameters: ["i32"], result: "pointer" },
  ncclGetLastError: { parameters: ["pointer"], result: "pointer" },
  ncclGetUniqueId: { parameters: ["buffer"], result: "i32" },
  ncclCommInitRank: {
    parameters: ["buffer", "i32", { struct: UNIQUE_ID }, "i32"],
    result: "i32",
  },
  ncclCommInitAll: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  ncclCommFinalize: { parameters: ["pointer"], result: "i32" },
  ncclCommDestroy: { parameters: ["pointer"], result: "i32" },
  ncclCommAbort: { parameters: ["pointer"], result: "i32" },
  ncclCommGetAsyncError: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclCommCount: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclCommCuDevice: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclCommUserRank: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclAllReduce: {
    parameters: [
      "pointer",
      "pointer",
      "usize",
      "i32",
      "i32",
      "pointer",
      "pointer",
    ],
    result: "i32",
  },
  ncclBroadcast: {
    parameters: [
      "pointer",
      "pointer",
      "usize",
      "i32",
      "i32",
      "pointer",
      "pointer",
    ],
    result: "i32",
  },
  ncclAllGather: {
    parameters: ["pointer", "pointer", "usize", "i32", "pointer", "pointer"],
    result: "i32",
  },
  ncclReduceScatter: {
    parameters: [
      "pointer",
      "pointer",
      "usize",
      "i32",
      "i32",
      "pointer",
      "pointer",
    ],
    result: "i32",
  },
  ncclGroupStart: { parameters: [], result: "i32" },
  ncclGroupEnd: { parameters: [], result: "i32" },
} as const;

/** `ncclDataType_t` and `ncclRedOp_t` values the toolkit uses. */
export const FLOAT32 = 7;
export const SUM = 0;
export const AVG = 4;

/** NCCL, opened on first use; throws one sentence if it is missing. */
export const ncclLibrary: () => Opened<typeof NCCL_SYMBOLS> = lazyLibrary(
  "nccl",
  NCCL_SYMBOLS,
);

const sym = () => ncclLibrary().symbols;

/** The status's name and NCCL's last error message, which says more. */
export function ncclStatusString(status: number): string {
  const s = sym();
  const text = readCString(s.ncclGetErrorString(status));
  const last = readCString(s.ncclGetLastError(null));
  return last ? `${text}: ${last}` : text;
}

const check = checker("NCCL", ncclStatusString);

/** NCCL's version, e.g. "2.30.7". */
export function ncclVersion(): string {
  const v = out.i32();
  check(sym().ncclGetVersion(v), "ncclGetVersion");
  const code = v[0];
  // NCCL_VERSION(X, Y, Z) is X*10000 + Y*100 + Z since 2.9, X*1000 + ... before.
  if (code >= 20900) {
    return `${Math.floor(code / 10000)}.${Math.floor(code / 100) % 100}.${
      code % 100
    }`;
  }
  return `${Math.floor(code / 1000)}.${Math.floor(code / 100) % 10}.${
    code % 100
  }`;
}

/** A fresh unique id: made by one rank, sent to all (needs no GPU). */
export function uniqueId(): Uint8Array<ArrayBuffer> {
  const id = new Uint8Array(UNIQUE_ID_BYTES);
  check(sym().ncclGetUniqueId(id), "ncclGetUniqueId");
  return id;
}

/** A communicator of one rank; the device must be current already. */
export class NcclComm {
  readonly #comm: Deno.PointerValue;

  private constructor(comm: Deno.PointerValue) {
    this.#comm = comm;
  }

  /** Joins `ranks` ranks as `rank`; blocks until every rank has joined. */
  static initRank(
    ranks: number,
    id: Uint8Array<ArrayBuffer>,
    rank: number,
  ): NcclComm {
    if (id.length !== UNIQUE_ID_BYTES) {
      throw new RangeError(
        `an NCCL unique id has ${UNIQUE_ID_BYTES} bytes, not ${id.length}`,
      );
    }
    const c = out.u64();
    check(sym().ncclCommInitRank(c, ranks, id, rank), "ncclCommInitRank");
    return new NcclComm(pointerOut(c));
  }

  /** One communicator per listed device, in this process. */
  static initAll(devices: readonly number[]): NcclComm[] {
    const comms = new BigUint64Array(devices.length);
    check(
      sym().ncclCommInitAll(comms, devices.length, new Int32Array(devices)),
      "ncclCommInitAll",
    );
    return [...comms].map((c) => new NcclComm(pointer(c)));
  }

  get count(): number {
    const n = out.i32();
    check(sym().ncclCommCount(this.#comm, n), "ncclCommCount");
    return n[0];
  }

  get rank(): number {
    const n = out.i32();
    check(sym().ncclCommUserRank(this.#comm, n), "ncclCommUserRank");
    return n[0];
  }

  get device(): number {
    const n = out.i32();
    check(sym().ncclCommCuDevice(this.#comm, n), "ncclCommCuDevice");
    return n[0];
  }

  /** Throws the error a queued collective met, if any. */
  checkAsync(): void {
    const e = out.i32();
    check(sym().ncclCommGetAsyncError(this.#comm, e), "ncclCommGetAsyncError");
    check(e[0], "an NCCL collective");
  }

  /** `recv = op over ranks of send`, float32 (in place when they are equal). */
  allReduce(
    send: bigint,
    recv: bigint,
    count: number,
    op: number,
    stream: Deno.PointerValue,
  ): void {
    check(
      sym().ncclAllReduce(
        pointer(send),
        pointer(recv),
        BigInt(count),
        FLOAT32,
        op,
        this.#comm,
        stream,
      ),
      "ncclAllReduce",
    );
  }

  /** `recv = rank 0's send ++ rank 1's send ++ ...`; count per rank. */
  allGather(
    send: bigint,
    recv: bigint,
    count: number,
    stream: Deno.PointerValue,
  ): void {
    check(
      sym().ncclAllGather(
        pointer(send),
        pointer(recv),
        BigInt(count),
        FLOAT32,
        this.#comm,
        stream,
      ),
      "ncclAllGather",
    );
  }

  broadcast(
    send: bigint,
    recv: bigint,
    count: number,
    root: number,
    stream: Deno.PointerValue,
  ): void {
    check(
      sym().ncclBroadcast(
        pointer(send),
        pointer(recv),
        BigInt(count),
        FLOAT32,
        root,
        this.#comm,
        stream,
      ),
      "ncclBroadcast",
    );
  }

  /** Each rank receives its `count`-element slice of the reduction. */
  reduceScatter(
    send: bigint,
    recv: bigint,
    count: number,
    op: number,
    stream: Deno.PointerValue,
  ): void {
    check(
      sym().ncclReduceScatter(
        pointer(send),
        pointer(recv),
        BigInt(count),
        FLOAT32,
        op,
        this.#comm,
        stream,
      ),
      "ncclReduceScatter",
    );
  }

  /** Finalises (flushes queued work) and frees the communicator. */
  destroy(): void {
    check(sym().ncclCommFinalize(this.#comm), "ncclCommFinalize");
    check(sym().ncclCommDestroy(this.#comm), "ncclCommDestroy");
  }

  /** Frees the communicator at once, abandoning queued work (after errors). */
  abort(): void {
    check(sym().ncclCommAbort(this.#comm), "ncclCommAbort");
  }
}

/** Collectives queued between groupStart and groupEnd launch together. */
export function groupStart(): void {
  check(sym().ncclGroupStart(), "ncclGroupStart");
}

export function groupEnd(): void {
  check(sym().ncclGroupEnd(), "ncclGroupEnd");
}
