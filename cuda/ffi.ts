/**
 * What every binding in cuda/ shares: the one error type that names the
 * library, the call and the library's own description of its status, and
 * the few conversions between JavaScript values and C arguments.
 *
 * Nothing outside cuda/ sees a raw pointer or a status code.
 *
 * @module
 */

/** A native call that returned a failure status. */
export class CudaError extends Error {
  constructor(
    /** "CUDA driver", "cuBLAS", "cuDNN", "NVRTC", "NCCL". */
    readonly library: string,
    /** The exported C name of the call. */
    readonly call: string,
    /** The status code the call returned. */
    readonly status: number,
    /** The library's own name and description of the status. */
    readonly description: string,
  ) {
    super(`${library}: ${call} failed with ${description} (status ${status})`);
    this.name = "CudaError";
  }
}

/**
 * Builds the checker of one library: `check(status, call)` returns when the
 * status is success (0 in every NVIDIA library) and otherwise throws a
 * CudaError carrying `describe(status)`.
 */
export function checker(
  library: string,
  describe: (status: number) => string,
): (status: number, call: string) => void {
  return (status, call) => {
    if (status === 0) return;
    let description: string;
    try {
      description = describe(status);
    } catch {
      description = "an unknown error";
    }
    throw new CudaError(library, call, status, description);
  };
}

const encoder = new TextEncoder();

/** A NUL-terminated copy of a string, for a `const char*` argument. */
export function cstr(text: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(text + "\0");
}

/** The string a `const char*` result or out-parameter points at. */
export function readCString(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** The text of a char buffer the library filled, up to its first NUL. */
export function bufferString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end));
}

/** A pointer object for an address (null for 0). */
export function pointer(address: bigint): Deno.PointerValue {
  return Deno.UnsafePointer.create(address);
}

/** The address of a pointer object or of a typed array's first byte. */
export function addressOf(p: Deno.PointerValue | BufferSource): bigint {
  if (p === null) return 0n;
  if (p instanceof ArrayBuffer || ArrayBuffer.isView(p)) {
    return Deno.UnsafePointer.value(Deno.UnsafePointer.of(p));
  }
  return Deno.UnsafePointer.value(p as Deno.PointerObject);
}

/** One-element out-parameters of the widths C uses. */
export const out = {
  i32: (): Int32Array<ArrayBuffer> => new Int32Array(1),
  u64: (): BigUint64Array<ArrayBuffer> => new BigUint64Array(1),
  f32: (): Float32Array<ArrayBuffer> => new Float32Array(1),
};

/** The pointer an out-parameter of pointer width received. */
export function pointerOut(cell: BigUint64Array): Deno.PointerValue {
  return Deno.UnsafePointer.create(cell[0]);
}
