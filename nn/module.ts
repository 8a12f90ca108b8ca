/**
 * Modules: parameters, buffers and sub-modules named as PyTorch names them,
 * so that state dicts line up key for key with `torch.nn.Module.state_dict()`.
 *
 * @module
 */

import { formatShape, noGrad, Tensor } from "./tensor.ts";

/** A state-dict value: a tensor, or host data with its shape (from a file). */
export type StateValue = Tensor | {
  readonly shape: readonly number[];
  readonly data: Float32Array;
};

/** What `loadStateDict` did not match. */
export interface LoadResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

export abstract class Module {
  /** Training mode (batch statistics in batch norm) or eval mode. */
  training = true;
  #parameters = new Map<string, Tensor>();
  #buffers = new Map<string, Tensor>();
  #children = new Map<string, Module>();

  /** Registers a parameter (it gets `requiresGrad`) under `name`. */
  protected addParameter(name: string, t: Tensor): Tensor {
    t.requiresGrad = true;
    this.#parameters.set(name, t);
    return t;
  }

  /** Registers a buffer: state that is saved but not trained. */
  protected addBuffer(name: string, t: Tensor): Tensor {
    this.#buffers.set(name, t);
    return t;
  }

  /** Registers a sub-module under `name`, replacing one of the same name. */
  protected addModule<M extends Module>(name: string, m: M): M {
    this.#children.set(name, m);
    return m;
  }

  /** The direct sub-module called `name`. */
  child(name: string): Module {
    const m = this.#children.get(name);
    if (!m) {
      throw new Error(`no sub-module "${name}" in ${this.constructor.name}`);
    }
    return m;
  }

  /** Direct sub-modules with their names, in registration order. */
  children(): [string, Module][] {
    return [...this.#children];
  }

  /** Every parameter with its dotted name, own first, then each child's. */
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, t] of this.#parameters) out.push([prefix + name, t]);
    for (const [name, m] of this.#children) {
      out.push(...m.namedParameters(`${prefix}${name}.`));
    }
    return out;
  }

  /** Every buffer with its dotted name. */
  namedBuffers(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, t] of this.#buffers) out.push([prefix + name, t]);
    for (const [name, m] of this.#children) {
      out.push(...m.namedBuffers(`${prefix}${name}.`));
    }
    return out;
  }

  /** Every module below and including this one, with its dotted name. */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [name, m] of this.#children) {
      out.push(...m.namedModules(prefix ? `${prefix}.${name}` : name));
    }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }

  /**
   * Parameters and buffers by name, in PyTorch's state_dict order (each
   * module's parameters, then its buffers, then its children). The tensors
   * are the module's own, not copies.
   */
  stateDict(prefix = ""): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.#collectState(prefix, out);
    return out;
  }

  #collectState(prefix: string, out: Map<string, Tensor>): void {
    for (const [name, t] of this.#parameters) out.set(prefix + name, t);
    for (const [name, t] of this.#buffers) out.set(prefix + name, t);
    for (const [name, m] of this.#children) {
      m.#collectState(`${prefix}${name}.`, out);
    }
  }

  /**
   * Copies values into the module's parameters and buffers. A shape mismatch
   * is always an error naming the key and both shapes. With `strict` (the
   * default), missing or unexpected keys are an error too; otherwise they
   * are returned.
   */
  loadStateDict(
    dict: Map<string, StateValue> | Record<string, StateValue>,
    { strict = true }: { strict?: boolean } = {},
  ): LoadResult {
    const entries = dict instanceof Map ? dict : new Map(Object.entries(dict));
    const own = this.stateDict();
    const missingKeys = [...own.keys()].filter((k) => !entries.has(k));
    const unexpectedKeys = [...entries.keys()].filter((k) => !own.has(k));
    if (strict && (missingKeys.length > 0 || unexpectedKeys.length > 0)) {
      const parts = [];
      if (missingKeys.length > 0) {
        parts.push(`missing keys: ${missingKeys.join(", ")}`);
      }
      if (unexpectedKeys.length > 0) {
        parts.push(`unexpected keys: ${unexpectedKeys.join(", ")}`);
      }
      throw new Error(
        `loadStateDict: the state dict does not match the model (${
          parts.join("; ")
        })`,
      );
    }
    // Check every shape before writing anything, so a failed load changes nothing.
    for (const [key, target] of own) {
      const value = entries.get(key);
      if (value === undefined) continue;
      const shape = value.shape;
      const sameSize = shape.reduce((a, b) => a * b, 1) === target.size;
      // A scalar saved as [] or [1] loads either way (num_batches_tracked).
      const same = shape.length === target.ndim &&
        shape.every((d, i) => d === target.shape[i]);
      if (!same && !(sameSize && target.size === 1)) {
        throw new Error(
          `loadStateDict: shape mismatch for ${key}: the checkpoint has ${
            formatShape(shape)
          }, the model ${formatShape(target.shape)}`,
        );
      }
    }
    noGrad(() => {
      for (const [key, target] of own) {
        const value = entries.get(key);
        if (value === undefined) continue;
        const backend = target.backend;
        if (value instanceof Tensor) {
          if (value.backend === backend) {
            backend.copy({
              src: value.buffer,
              srcOffset: 0,
              dst: target.buffer,
              dstOffset: 0,
              length: target.size,
            });
          } else backend.write(target.buffer, value.toArray());
        } else {
          backend.write(target.buffer, value.data);
        }
      }
    });
    return { missingKeys, unexpectedKeys };
  }

  /** Sets training mode here and in every sub-module. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  /** Sets eval mode (running statistics in batch norm) everywhere below. */
  eval(): this {
    return this.train(false);
  }

  /** Frees every parameter and buffer (and their gradients). */
  dispose(): void {
    for (const [, t] of this.stateDict()) t.dispose();
  }
}

/**
 * A module with one tensor input and output. Most layers are; the `forward`
 * signature lets `Sequential` chain them.
 */
export abstract class Layer extends Module {
  abstract forward(x: Tensor): Tensor;
}
