/**
 * Float32, contiguous, NCHW tensors with deterministic memory release.
 *
 * A tensor is a shape over a reference-counted storage. Reshapes are views that
 * share the storage; `dispose()` drops one reference, and the storage returns
 * to its backend's allocator when the last view goes. Every tensor created
 * inside `scope()` is disposed when the scope ends unless it is returned or
 * `keep()`-ed, so a training step frees its intermediates without waiting for
 * the garbage collector.
 *
 * What an op's backward needs (its input, its output, its batch statistics)
 * the op saves as views owned by the graph, not by the caller: the caller's
 * tensors may be disposed as soon as the forward has used them (a module's
 * `forwardScope()` does so), and each saved view is freed as soon as its
 * backward has run, or when the enclosing `scope()` ends. Under `noGrad`
 * nothing is saved. A version counter per storage, raised by in-place ops,
 * makes a backward whose saved tensor was overwritten fail instead of
 * computing a wrong gradient, as PyTorch's does.
 *
 * @module
 */

import type { Backend, DataBuffer } from "./backend.ts";

/** What a backward pass tells its caller while it runs. */
export interface BackwardOptions {
  /**
   * Called once a leaf's gradient for this pass is complete (every consumer
   * has contributed), in the order the pass finishes them: data-parallel
   * training starts reducing a bucket of gradients while the rest of the
   * pass still runs.
   */
  onLeafGrad?: (leaf: Tensor) => void;
}

/** A node of the autograd graph: how to send a gradient to the inputs. */
export interface GradFn {
  /** The op's name, for error messages. */
  readonly name: string;
  readonly inputs: readonly Tensor[];
  /**
   * Views of the tensors the backward reads, owned by the graph; the engine
   * disposes them once the backward has run.
   */
  readonly saved: readonly Tensor[];
  /** The storage version of each saved tensor when it was saved. */
  readonly savedVersions: readonly number[];
  /**
   * Gradients with respect to each input (null where none is needed), given
   * the gradient of the output and the saved views. Runs with autograd off;
   * returns new tensors.
   */
  backward(grad: Tensor, saved: readonly Tensor[]): (Tensor | null)[];
}

class Storage {
  refs = 0;
  /** Raised by every in-place write (see `Tensor.markModified`). */
  version = 0;
  constructor(readonly backend: Backend, readonly buffer: DataBuffer) {}
}

const counters = { tensors: 0, bytes: 0 };
/** Every open scope, innermost last: each disposes what was made in it. */
const scopes: Set<Tensor>[] = [];
/**
 * The open `scope()`s (not `forwardScope()`s), innermost last: the owners
 * of the views that ops save for backward.
 */
const savedOwners: Set<Tensor>[] = [];
let noGradDepth = 0;

/** Live tensors (views included) and the bytes of their storages. */
export function memoryStats(): { tensors: number; bytes: number } {
  return { tensors: counters.tensors, bytes: counters.bytes };
}

function shapeSize(shape: readonly number[], op: string): number {
  let size = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(`${op}: invalid shape [${shape.join(", ")}]`);
    }
    size *= d;
  }
  return size;
}

/** Formats a shape as PyTorch prints it: [2, 3]. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

export class Tensor {
  readonly shape: readonly number[];
  /** Number of elements. */
  readonly size: number;
  /** Whether gradients flow to this tensor. */
  requiresGrad = false;
  /** The accumulated gradient of a leaf tensor after `backward()`. */
  grad: Tensor | null = null;
  /** How this tensor was computed; null for leaves. */
  gradFn: GradFn | null = null;
  #storage: Storage | null;
  /** Set when an in-place op has given this tensor's data a new graph node. */
  #superseded: string | null = null;

  private constructor(
    storage: Storage,
    shape: readonly number[],
    owner: Set<Tensor> | undefined = scopes.at(-1),
  ) {
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(shape, "Tensor");
    this.#storage = storage;
    storage.refs++;
    counters.tensors++;
    if (owner) adopt(this, owner);
  }

  /** A tensor over a new buffer of `backend` with undefined contents. */
  static empty(backend: Backend, shape: readonly number[]): Tensor {
    const size = shapeSize(shape, "empty");
    const storage = new Storage(backend, backend.alloc(size));
    counters.bytes += 4 * size;
    return new Tensor(storage, shape);
  }

  /** The backend holding the data. */
  get backend(): Backend {
    return this.#live().backend;
  }

  /** The device name ("cpu", "cuda:0"). */
  get device(): string {
    return this.#live().backend.name;
  }

  /** The backend buffer, for ops. Throws if the tensor was disposed. */
  get buffer(): DataBuffer {
    return this.#live().buffer;
  }

  get ndim(): number {
    return this.shape.length;
  }

  get isDisposed(): boolean {
    return this.#storage === null;
  }

  /** How many tensors share this tensor's storage (1 if none other does). */
  get storageRefs(): number {
    return this.#live().refs;
  }

  /**
   * How many times the storage has been written in place (PyTorch's
   * `_version`); a saved tensor whose version changed before its backward
   * ran makes that backward throw.
   */
  get version(): number {
    return this.#live().version;
  }

  /**
   * Records an in-place write to this tensor's storage. Ops that overwrite
   * an input (in-place ReLU, residual add) and optimisers call it.
   */
  markModified(): void {
    this.#live().version++;
  }

  /**
   * A view for the autograd graph to keep until backward: owned by the
   * innermost `scope()`, so that disposing this tensor, or the end of a
   * `forwardScope()`, leaves it alive.
   */
  saveForBackward(): Tensor {
    return new Tensor(this.#live(), this.shape, savedOwners.at(-1));
  }

  /**
   * Why this tensor can no longer enter a recorded op (an in-place op moved
   * its data on to a new tensor), or null.
   */
  get superseded(): string | null {
    return this.#superseded;
  }

  /** Marks the tensor as replaced by the result of the in-place op `op`. */
  supersede(op: string): void {
    this.#superseded = op;
  }

  #live(): Storage {
    if (this.#storage === null) {
      throw new Error(
        `a disposed tensor of shape ${formatShape(this.shape)} was used`,
      );
    }
    return this.#storage;
  }

  /** A tensor of another shape over the same storage (no autograd link). */
  viewAs(shape: readonly number[]): Tensor {
    const size = shapeSize(shape, "view");
    if (size !== this.size) {
      throw new RangeError(
        `view: cannot view a tensor of shape ${formatShape(this.shape)} as ${
          formatShape(shape)
        }`,
      );
    }
    return new Tensor(this.#live(), shape);
  }

  /**
   * The same data with another shape (a view, sharing storage). One dimension
   * may be -1 and is then inferred, as in PyTorch.
   */
  reshape(...shape: number[]): Tensor {
    const target = inferShape(this.shape, shape);
    const out = this.viewAs(target);
    const from = this.shape;
    recordGrad(out, "reshape", [this], (g) => [g.viewAs(from)]);
    return out;
  }

  /** Flattens dimensions `start..end` (inclusive) into one, as a view. */
  flatten(start = 0, end = -1): Tensor {
    const n = this.ndim;
    const s = start < 0 ? start + n : start;
    const e = end < 0 ? end + n : end;
    if (n === 0) return this.reshape(1);
    if (s < 0 || e >= n || s > e) {
      throw new RangeError(
        `flatten: dimensions ${start}..${end} are out of range for shape ${
          formatShape(this.shape)
        }`,
      );
    }
    const merged = this.shape.slice(s, e + 1).reduce((a, b) => a * b, 1);
    return this.reshape(
      ...this.shape.slice(0, s),
      merged,
      ...this.shape.slice(e + 1),
    );
  }

  /** A view that shares the data but not the autograd history. */
  detach(): Tensor {
    return this.viewAs(this.shape);
  }

  /** A copy of the data on the host. */
  toArray(): Float32Array {
    return this.#live().backend.read(this.buffer, 0, this.size);
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) {
      throw new RangeError(
        `item: the tensor has ${this.size} elements (shape ${
          formatShape(this.shape)
        }), not 1`,
      );
    }
    return this.toArray()[0];
  }

  /** Computes gradients of this tensor with respect to every leaf. */
  backward(grad?: Tensor, options?: BackwardOptions): void {
    backwardHook(this, grad, options);
  }

  /**
   * Drops this tensor's reference to its storage (and its gradient's). Safe to
   * call twice. The storage is freed when no view uses it.
   */
  dispose(): void {
    const storage = this.#storage;
    if (storage === null) return;
    this.#storage = null;
    adopt(this, null);
    counters.tensors--;
    if (--storage.refs === 0) {
      counters.bytes -= 4 * storage.buffer.length;
      storage.backend.free(storage.buffer);
    }
    // gradFn stays: tensors computed from this one still reach their graph
    // through it, and what that graph needs it saved as views of its own.
    this.grad?.dispose();
    this.grad = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    const dev = this.#storage ? this.device : "disposed";
    return `Tensor(${formatShape(this.shape)}, ${dev}${
      this.requiresGrad ? ", requiresGrad" : ""
    })`;
  }
}

function inferShape(
  from: readonly number[],
  to: readonly number[],
): number[] {
  const size = from.reduce((a, b) => a * b, 1);
  const unknown = to.indexOf(-1);
  if (unknown >= 0 && to.indexOf(-1, unknown + 1) >= 0) {
    throw new RangeError(
      `reshape: only one dimension can be -1, got ${formatShape(to)}`,
    );
  }
  if (unknown < 0) return [...to];
  const known = to.reduce((a, b, i) => (i === unknown ? a : a * b), 1);
  if (known === 0 || size % known !== 0) {
    throw new RangeError(
      `reshape: cannot reshape ${formatShape(from)} to ${formatShape(to)}`,
    );
  }
  const out = [...to];
  out[unknown] = size / known;
  return out;
}

// --- autograd recording -------------------------------------------------------

/** Whether ops record the graph now (false inside `noGrad`). */
export function isGradEnabled(): boolean {
  return noGradDepth === 0;
}

/** Runs `fn` without recording the autograd graph. */
export function noGrad<T>(fn: () => T): T {
  noGradDepth++;
  try {
    return fn();
  } finally {
    noGradDepth--;
  }
}

/** The backward of a recorded op: the output's gradient and saved views. */
export type BackwardFn = (
  grad: Tensor,
  saved: readonly Tensor[],
) => (Tensor | null)[];

/** Whether an op on `inputs` is recorded (autograd on, an input needs it). */
export function needsGrad(inputs: readonly (Tensor | null)[]): boolean {
  return noGradDepth === 0 && inputs.some((t) => t !== null && t.requiresGrad);
}

/**
 * Links `out` to its inputs when autograd is on and an input needs a gradient.
 * `backward` receives the output's gradient and returns one per input. The
 * tensors in `saved` (what backward reads) are kept as views for it, which
 * it receives in the same order, and are freed once it has run; a backward
 * must read them, not the op's own tensors, which its caller may dispose.
 */
export function recordGrad(
  out: Tensor,
  name: string,
  inputs: readonly Tensor[],
  backward: BackwardFn,
): Tensor;
export function recordGrad(
  out: Tensor,
  name: string,
  inputs: readonly Tensor[],
  saved: readonly Tensor[],
  backward: BackwardFn,
): Tensor;
export function recordGrad(
  out: Tensor,
  name: string,
  inputs: readonly Tensor[],
  savedOrBackward: readonly Tensor[] | BackwardFn,
  maybeBackward?: BackwardFn,
): Tensor {
  if (!needsGrad(inputs)) return out;
  for (const t of inputs) {
    if (t.superseded !== null) {
      throw new Error(
        `${name}: an input of shape ${
          formatShape(t.shape)
        } was overwritten by ${t.superseded}; use the tensor that ${t.superseded} returned`,
      );
    }
  }
  const [toSave, backward] = typeof savedOrBackward === "function"
    ? [[], savedOrBackward]
    : [savedOrBackward, maybeBackward!];
  const saved = toSave.map((t) => t.saveForBackward());
  out.requiresGrad = true;
  out.gradFn = {
    name,
    inputs,
    saved,
    savedVersions: saved.map((t) => t.version),
    backward,
  };
  return out;
}

// The engine lives in autograd.ts; it registers itself here to avoid an
// import cycle that would run before Tensor is defined.
let backwardHook: (
  root: Tensor,
  grad?: Tensor,
  options?: BackwardOptions,
) => void = () => {
  throw new Error("backward(): the autograd engine is not loaded");
};

/** Installs the autograd engine (called once by autograd.ts). */
export function setBackwardEngine(
  engine: (root: Tensor, grad?: Tensor, options?: BackwardOptions) => void,
): void {
  backwardHook = engine;
}

// --- scopes -------------------------------------------------------------------

/**
 * Runs `fn` and disposes every tensor created inside it, except the tensors
 * it returns (found in arrays and plain objects too) and those `keep()`-ed.
 * Returned tensors belong to the enclosing scope afterwards.
 */
export function scope<T>(fn: () => T): T {
  return runScope(fn, true, "scope()");
}

/**
 * A module's forward pass: like `scope()`, it disposes every tensor made
 * inside except those returned, but the views that ops saved for backward
 * belong to the enclosing `scope()` (or to no scope outside any), so the
 * graph stays whole while the activations nobody needs are freed at once.
 * Under `noGrad` (a teacher, an evaluation) that leaves only the output.
 */
export function forwardScope<T>(fn: () => T): T {
  return runScope(fn, false, "forwardScope()");
}

function runScope<T>(fn: () => T, ownsSaved: boolean, what: string): T {
  const own = new Set<Tensor>();
  scopes.push(own);
  if (ownsSaved) savedOwners.push(own);
  const pop = () => {
    scopes.pop();
    if (ownsSaved) savedOwners.pop();
  };
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) {
      throw new TypeError(`${what} takes a synchronous function`);
    }
  } catch (e) {
    // On an exception everything made inside is released too.
    pop();
    for (const t of own) t.dispose();
    throw e;
  }
  pop();
  const escaping = new Set<Tensor>();
  collectTensors(result, escaping);
  for (const t of own) {
    if (escaping.has(t)) continue;
    t.dispose();
  }
  const parent = scopes.at(-1) ?? null;
  for (const t of escaping) {
    if (own.has(t)) adopt(t, parent);
  }
  return result;
}

function collectTensors(value: unknown, out: Set<Tensor>): void {
  if (value instanceof Tensor) {
    out.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) collectTensors(v, out);
  } else if (value !== null && typeof value === "object") {
    if (Object.getPrototypeOf(value) === Object.prototype) {
      for (const v of Object.values(value)) collectTensors(v, out);
    }
  }
}

/** Excludes tensors from every scope: the caller now owns them. */
export function keep<T extends Tensor | Tensor[]>(tensors: T): T {
  for (const t of tensors instanceof Tensor ? [tensors] : tensors as Tensor[]) {
    adopt(t, null);
  }
  return tensors;
}

/** Which scope will dispose each tracked tensor. */
const owner = new WeakMap<Tensor, Set<Tensor>>();

/** Moves a tensor into scope `s` (null: into none, the caller owns it). */
function adopt(t: Tensor, s: Set<Tensor> | null): void {
  owner.get(t)?.delete(t);
  if (s === null) {
    owner.delete(t);
  } else {
    s.add(t);
    owner.set(t, s);
  }
}
