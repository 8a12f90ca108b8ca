/**
 * Open MPI (`libmpi.so.40`) through Deno FFI: the calls that launch,
 * bootstrap and connect the ranks of a data-parallel run, and the
 * collectives between CPU processes.
 *
 * Open MPI's predefined handles (`MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM`,
 * ...) are the addresses of exported data symbols (`ompi_mpi_comm_world`,
 * ...), which Deno binds as statics of type pointer. Every collective is
 * started non-blocking and completed by polling `MPI_Test` against a
 * deadline, so that a rank that died or hangs turns into an error on the
 * others instead of a process that waits for ever. Errors are returned, not
 * fatal (`MPI_ERRORS_RETURN`), and thrown as {@linkcode MpiError}.
 *
 * The library is opened only when a program asks for it, which the toolkit
 * does only when it was started by `mpirun` (or `srun` with PMIx).
 *
 * @module
 */

import { pollUntil } from "./poll.ts";

export { CollectiveTimeout } from "./poll.ts";

export const MPI_SYMBOLS = {
  MPI_Initialized: { parameters: ["buffer"], result: "i32" },
  MPI_Init_thread: {
    parameters: ["pointer", "pointer", "i32", "buffer"],
    result: "i32",
  },
  MPI_Finalized: { parameters: ["buffer"], result: "i32" },
  MPI_Finalize: { parameters: [], result: "i32" },
  MPI_Abort: { parameters: ["pointer", "i32"], result: "i32" },
  MPI_Comm_rank: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Comm_size: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Comm_split_type: {
    parameters: ["pointer", "i32", "i32", "pointer", "buffer"],
    result: "i32",
  },
  MPI_Comm_free: { parameters: ["buffer"], result: "i32" },
  MPI_Comm_set_errhandler: {
    parameters: ["pointer", "pointer"],
    result: "i32",
  },
  MPI_Error_string: {
    parameters: ["i32", "buffer", "buffer"],
    result: "i32",
  },
  MPI_Get_library_version: { parameters: ["buffer", "buffer"], result: "i32" },
  MPI_Iallreduce: {
    parameters: [
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "buffer",
    ],
    result: "i32",
  },
  MPI_Iallgather: {
    parameters: [
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "buffer",
    ],
    result: "i32",
  },
  MPI_Ibcast: {
    parameters: ["pointer", "i32", "pointer", "i32", "pointer", "buffer"],
    result: "i32",
  },
  MPI_Ibarrier: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Test: { parameters: ["buffer", "buffer", "pointer"], result: "i32" },
  ompi_mpi_comm_world: { type: "pointer" },
  ompi_mpi_float: { type: "pointer" },
  ompi_mpi_double: { type: "pointer" },
  ompi_mpi_byte: { type: "pointer" },
  ompi_mpi_op_sum: { type: "pointer" },
  ompi_mpi_op_max: { type: "pointer" },
  ompi_mpi_op_min: { type: "pointer" },
  ompi_mpi_info_null: { type: "pointer" },
  ompi_mpi_errors_return: { type: "pointer" },
} as const;

type MpiSymbols = Deno.DynamicLibrary<typeof MPI_SYMBOLS>["symbols"];

/** `MPI_THREAD_SERIALIZED` in Open MPI's mpi.h. */
const THREAD_SERIALIZED = 2;
/** `MPI_COMM_TYPE_SHARED`: the ranks that share a node's memory. */
const COMM_TYPE_SHARED = 0;
/** `MPI_IN_PLACE` is `(void *) 1` in Open MPI. */
const IN_PLACE = Deno.UnsafePointer.create(1n);
/** `MPI_MAX_ERROR_STRING` and `MPI_MAX_LIBRARY_VERSION_STRING`. */
const MAX_ERROR_STRING = 256;
const MAX_LIBRARY_VERSION_STRING = 256;

/** A failed MPI call, with MPI's own description of its error code. */
export class MpiError extends Error {
  constructor(
    readonly call: string,
    readonly code: number,
    description: string,
  ) {
    super(`MPI: ${call} failed with ${description} (error ${code})`);
    this.name = "MpiError";
  }
}

/**
 * The environment variables a launcher sets: `mpirun` (Open MPI) sets
 * `OMPI_COMM_WORLD_SIZE`, PMIx launchers (`srun --mpi=pmix`, prterun) set
 * `PMIX_RANK`. Without either the program is a single process and no MPI
 * library is opened.
 */
export function launchedByMpi(env: (name: string) => string | undefined = (
  name,
) => Deno.env.get(name)): boolean {
  return env("OMPI_COMM_WORLD_SIZE") !== undefined ||
    env("PMIX_RANK") !== undefined;
}

/** The library file: `MEC_MPI` when set, else Open MPI's soname. */
function libraryPath(): string {
  const path = Deno.env.get("MEC_MPI");
  return path === undefined || path === "" ? "libmpi.so.40" : path;
}

function open(): Deno.DynamicLibrary<typeof MPI_SYMBOLS> {
  const path = libraryPath();
  try {
    return Deno.dlopen(path, MPI_SYMBOLS);
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new Error(
      `Open MPI (${path}) could not be opened (${why}); install it with \`apt-get install openmpi-bin\` or set MEC_MPI to its libmpi.so.40`,
      { cause: e },
    );
  }
}

export type ReduceOp = "sum" | "max" | "min";

/** Element types the collectives move. */
export type Elements = Float32Array | Float64Array | Uint8Array;

/**
 * The world of ranks this process belongs to: `MPI_COMM_WORLD`, with the
 * ranks of this node as a second communicator (for the local rank, which
 * picks the GPU). Made once per process by {@linkcode MpiWorld.init}.
 */
export class MpiWorld {
  readonly rank: number;
  readonly size: number;
  /** The rank among the processes of this node (0 .. localSize - 1). */
  readonly localRank: number;
  readonly localSize: number;
  /** Open MPI's version line. */
  readonly version: string;
  /** Seconds a collective may take before it is called failed. */
  timeoutSeconds: number;
  /** Milliseconds spent waiting for collectives so far (for measuring). */
  waitedMs = 0;
  readonly #lib: Deno.DynamicLibrary<typeof MPI_SYMBOLS>;
  readonly #s: MpiSymbols;
  readonly #request = new BigUint64Array(1);
  readonly #flag = new Int32Array(1);
  #finalized = false;

  private constructor(
    lib: Deno.DynamicLibrary<typeof MPI_SYMBOLS>,
    timeoutSeconds: number,
  ) {
    this.#lib = lib;
    this.#s = lib.symbols;
    this.timeoutSeconds = timeoutSeconds;
    const s = this.#s;
    const world = s.ompi_mpi_comm_world;
    this.#check(
      s.MPI_Comm_set_errhandler(world, s.ompi_mpi_errors_return),
      "MPI_Comm_set_errhandler",
    );
    this.rank = this.#intOut((p) => s.MPI_Comm_rank(world, p), "MPI_Comm_rank");
    this.size = this.#intOut((p) => s.MPI_Comm_size(world, p), "MPI_Comm_size");
    const local = new BigUint64Array(1);
    this.#check(
      s.MPI_Comm_split_type(
        world,
        COMM_TYPE_SHARED,
        this.rank,
        s.ompi_mpi_info_null,
        local,
      ),
      "MPI_Comm_split_type",
    );
    const localComm = Deno.UnsafePointer.create(local[0]);
    this.localRank = this.#intOut(
      (p) => s.MPI_Comm_rank(localComm, p),
      "MPI_Comm_rank",
    );
    this.localSize = this.#intOut(
      (p) => s.MPI_Comm_size(localComm, p),
      "MPI_Comm_size",
    );
    this.#check(s.MPI_Comm_free(local), "MPI_Comm_free");
    const text = new Uint8Array(MAX_LIBRARY_VERSION_STRING);
    const len = new Int32Array(1);
    this.#check(
      s.MPI_Get_library_version(text, len),
      "MPI_Get_library_version",
    );
    this.version = new TextDecoder().decode(text.subarray(0, len[0]))
      .split("\n")[0].replace(/,.*$/, "").trim();
  }

  /**
   * Opens Open MPI and joins the world (`MPI_Init_thread`, serialized:
   * only one thread calls MPI at a time). `timeoutSeconds` bounds every
   * collective.
   */
  static init(timeoutSeconds = 600): MpiWorld {
    const lib = open();
    const s = lib.symbols;
    const flag = new Int32Array(1);
    s.MPI_Initialized(flag);
    if (flag[0] === 0) {
      const provided = new Int32Array(1);
      const status = s.MPI_Init_thread(null, null, THREAD_SERIALIZED, provided);
      if (status !== 0) {
        throw new MpiError("MPI_Init_thread", status, "an error");
      }
    }
    return new MpiWorld(lib, timeoutSeconds);
  }

  /** `recv = op over ranks of send`; in place when recv is omitted. */
  allReduce(
    send: Elements,
    op: ReduceOp = "sum",
    recv?: Elements,
    what = "an all-reduce",
  ): void {
    const s = this.#s;
    const sendPtr = recv === undefined ? IN_PLACE : Deno.UnsafePointer.of(send);
    const out = recv ?? send;
    if (out.length !== send.length || out.constructor !== send.constructor) {
      throw new RangeError(
        `allReduce: the receive array must match the ${send.length} elements sent`,
      );
    }
    this.#wait(
      s.MPI_Iallreduce(
        sendPtr,
        Deno.UnsafePointer.of(out),
        send.length,
        this.#type(send),
        this.#op(op),
        s.ompi_mpi_comm_world,
        this.#request,
      ),
      "MPI_Iallreduce",
      `${what} of ${send.byteLength} bytes`,
    );
  }

  /** `recv = rank 0's send ++ rank 1's send ++ ...`. */
  allGather(send: Elements, recv: Elements, what = "an all-gather"): void {
    if (
      recv.length !== send.length * this.size ||
      recv.constructor !== send.constructor
    ) {
      throw new RangeError(
        `allGather: the receive array needs ${
          send.length * this.size
        } elements, not ${recv.length}`,
      );
    }
    const s = this.#s;
    const type = this.#type(send);
    this.#wait(
      s.MPI_Iallgather(
        Deno.UnsafePointer.of(send),
        send.length,
        type,
        Deno.UnsafePointer.of(recv),
        send.length,
        type,
        s.ompi_mpi_comm_world,
        this.#request,
      ),
      "MPI_Iallgather",
      `${what} of ${send.byteLength} bytes per rank`,
    );
  }

  /** Root's elements into every rank's array (same length everywhere). */
  broadcast(data: Elements, root = 0, what = "a broadcast"): void {
    const s = this.#s;
    this.#wait(
      s.MPI_Ibcast(
        Deno.UnsafePointer.of(data),
        data.length,
        this.#type(data),
        root,
        s.ompi_mpi_comm_world,
        this.#request,
      ),
      "MPI_Ibcast",
      `${what} of ${data.byteLength} bytes`,
    );
  }

  /** Returns when every rank has called it (within the timeout). */
  barrier(what = "a barrier"): void {
    const s = this.#s;
    this.#wait(
      s.MPI_Ibarrier(s.ompi_mpi_comm_world, this.#request),
      "MPI_Ibarrier",
      what,
    );
  }

  /**
   * Starts an in-place float32 sum over ranks and returns a handle to
   * complete it: `test()` moves it on (MPI progresses non-blocking
   * collectives only inside MPI calls) and says whether it is done,
   * `wait()` completes it. The array must not be touched until then.
   */
  startAllReduce(data: Float32Array, what = "an all-reduce"): PendingReduce {
    const s = this.#s;
    const request = new BigUint64Array(1);
    this.#check(
      s.MPI_Iallreduce(
        IN_PLACE,
        Deno.UnsafePointer.of(data),
        data.length,
        s.ompi_mpi_float,
        s.ompi_mpi_op_sum,
        s.ompi_mpi_comm_world,
        request,
      ),
      "MPI_Iallreduce",
    );
    return new PendingReduce(
      this,
      request,
      `${what} of ${data.byteLength} bytes`,
    );
  }

  /** One `MPI_Test` of a request; true when it completed. */
  test(request: BigUint64Array): boolean {
    const flag = this.#flag;
    flag[0] = 0;
    this.#check(this.#s.MPI_Test(request, flag, null), "MPI_Test");
    return flag[0] !== 0;
  }

  /** Polls a request until it completes or the timeout passes (dist/poll.ts). */
  waitFor(request: BigUint64Array, what: string): void {
    this.waitedMs += pollUntil(() => this.test(request), {
      rank: this.rank,
      what,
      timeoutSeconds: this.timeoutSeconds,
    });
  }

  /**
   * Stops every rank of the job (`MPI_Abort`) after writing the message on
   * this rank's stderr. Does not return.
   */
  abort(message: string, code = 1): never {
    try {
      Deno.stderr.writeSync(new TextEncoder().encode(message + "\n"));
    } catch {
      // A closed stderr must not keep the job alive.
    }
    this.#s.MPI_Abort(this.#s.ompi_mpi_comm_world, code);
    Deno.exit(code);
  }

  /** Leaves the world (`MPI_Finalize`); later calls do nothing. */
  finalize(): void {
    if (this.#finalized) return;
    this.#finalized = true;
    this.#check(this.#s.MPI_Finalize(), "MPI_Finalize");
  }

  #wait(status: number, call: string, what: string): void {
    this.#check(status, call);
    this.waitFor(this.#request, what);
  }

  #type(data: Elements): Deno.PointerValue {
    const s = this.#s;
    if (data instanceof Float32Array) return s.ompi_mpi_float;
    if (data instanceof Float64Array) return s.ompi_mpi_double;
    return s.ompi_mpi_byte;
  }

  #op(op: ReduceOp): Deno.PointerValue {
    const s = this.#s;
    return op === "sum"
      ? s.ompi_mpi_op_sum
      : op === "max"
      ? s.ompi_mpi_op_max
      : s.ompi_mpi_op_min;
  }

  #intOut(call: (p: Int32Array) => number, name: string): number {
    const v = new Int32Array(1);
    this.#check(call(v), name);
    return v[0];
  }

  #check(status: number, call: string): void {
    if (status === 0) return;
    const text = new Uint8Array(MAX_ERROR_STRING);
    const len = new Int32Array(1);
    const ok = this.#s.MPI_Error_string(status, text, len) === 0;
    const description = ok
      ? new TextDecoder().decode(text.subarray(0, len[0]))
      : "an unknown error";
    throw new MpiError(call, status, description);
  }

  /** Closes the library handle (after finalize), for tests. */
  close(): void {
    this.#lib.close();
  }
}

/** A started all-reduce (see {@linkcode MpiWorld.startAllReduce}). */
export class PendingReduce {
  #done = false;
  constructor(
    readonly world: MpiWorld,
    readonly request: BigUint64Array,
    readonly what: string,
  ) {}

  /** Moves the collective on; true once it has completed. */
  test(): boolean {
    if (!this.#done) this.#done = this.world.test(this.request);
    return this.#done;
  }

  /** Completes it (within the world's timeout). */
  wait(): void {
    if (this.#done) return;
    this.world.waitFor(this.request, this.what);
    this.#done = true;
  }
}
