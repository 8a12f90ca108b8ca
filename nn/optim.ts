/**
 * Optimisers: PyTorch's SGD, and LARS in the form of NVIDIA apex's LARC
 * wrapped around it, as MEC's linear probe uses it. A step is one fused
 * backend op (`sgdUpdateMany`) for all the parameters of a backend: one
 * kernel launch on a GPU.
 *
 * @module
 */

import type { Backend, DataBuffer } from "./backend.ts";
import { formatShape, keep, noGrad, Tensor } from "./tensor.ts";

export interface SGDOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** Hyper-parameters and step count, the JSON half of an optimiser's state. */
export interface OptimizerHyper {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  /** LARC's trust coefficient and eps, for LARS. */
  trustCoefficient?: number;
  eps?: number;
}

/** An optimiser's state: tensors by PyTorch-like key, plus hyper-parameters. */
export interface OptimizerState {
  tensors: Map<string, Tensor>;
  hyper: OptimizerHyper;
}

/**
 * `torch.optim.SGD`: d = g + wd * p; with momentum, buf = d on the first step
 * and momentum * buf + (1 - dampening) * d after; d = buf (or d + momentum *
 * buf with Nesterov); p -= lr * d. Parameters without a gradient are skipped.
 * Set `lr` before any step to schedule it.
 */
export class SGD {
  lr: number;
  readonly momentum: number;
  readonly dampening: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;
  protected readonly params: Tensor[];
  #buffers: (Tensor | null)[];

  constructor(params: Tensor[], opts: SGDOptions) {
    this.params = params;
    this.lr = opts.lr;
    this.momentum = opts.momentum ?? 0;
    this.dampening = opts.dampening ?? 0;
    this.weightDecay = opts.weightDecay ?? 0;
    this.nesterov = opts.nesterov ?? false;
    for (
      const [name, v] of Object.entries({
        lr: this.lr,
        momentum: this.momentum,
        weightDecay: this.weightDecay,
      })
    ) {
      if (!(v >= 0)) {
        throw new RangeError(`SGD: ${name} must be a number >= 0, got ${v}`);
      }
    }
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw new RangeError(
        "SGD: Nesterov momentum requires a momentum and zero dampening",
      );
    }
    this.#buffers = params.map(() => null);
  }

  /** One update of every parameter that has a gradient. */
  step(): void {
    noGrad(() => this.updateAll(this.weightDecay));
  }

  /**
   * Updates every parameter that has a gradient, with weight decay `wd`
   * (LARS passes 0): one `sgdUpdateMany` per backend, or two when some
   * momentum buffers are new (made here, zero-filled, as PyTorch's first
   * step makes them) and others not, since `firstStep` is one flag per call.
   * Each tensor's update is independent of the others', so this computes
   * what one `sgdUpdate` per parameter did.
   */
  protected updateAll(wd: number): void {
    const useMomentum = this.momentum !== 0;
    const groups = new Map<Backend, [UpdateGroup, UpdateGroup]>();
    this.params.forEach((p, i) => {
      const g = p.grad;
      if (g === null) return;
      let buf = this.#buffers[i];
      const firstStep = useMomentum && buf === null;
      if (firstStep) buf = this.#buffers[i] = zerosLike(p);
      let pair = groups.get(p.backend);
      if (pair === undefined) {
        pair = [updateGroup(), updateGroup()];
        groups.set(p.backend, pair);
      }
      const group = pair[firstStep ? 0 : 1];
      group.params.push(p.buffer);
      group.grads.push(g.buffer);
      if (useMomentum) group.buffers.push(buf!.buffer);
      group.lengths.push(p.size);
    });
    for (const [backend, pair] of groups) {
      pair.forEach((group, k) => {
        if (group.params.length === 0) return;
        backend.sgdUpdateMany({
          params: group.params,
          grads: group.grads,
          momentumBuffers: useMomentum ? group.buffers : null,
          lengths: group.lengths,
          step: {
            lr: this.lr,
            momentum: this.momentum,
            dampening: this.dampening,
            weightDecay: wd,
            nesterov: this.nesterov,
            firstStep: k === 0,
          },
        });
      });
    }
  }

  /** Drops every gradient (PyTorch's `zero_grad(set_to_none=True)`). */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  protected hyper(): OptimizerHyper {
    return {
      lr: this.lr,
      momentum: this.momentum,
      dampening: this.dampening,
      weightDecay: this.weightDecay,
      nesterov: this.nesterov,
    };
  }

  /**
   * Momentum buffers keyed `state.<index>.momentum_buffer` as in PyTorch's
   * optimizer state_dict (index = position in the parameter list), and the
   * hyper-parameters. The tensors are the optimiser's own.
   */
  stateDict(): OptimizerState {
    const tensors = new Map<string, Tensor>();
    this.#buffers.forEach((b, i) => {
      if (b) tensors.set(`state.${i}.momentum_buffer`, b);
    });
    return { tensors, hyper: this.hyper() };
  }

  /** Restores momentum buffers and the learning rate from `stateDict()`. */
  loadStateDict(
    state: {
      tensors: Map<
        string,
        { shape: readonly number[]; data?: Float32Array } | Tensor
      >;
      hyper: Partial<OptimizerHyper>;
    },
  ): void {
    for (const [key, value] of state.tensors) {
      const m = /^state\.(\d+)\.momentum_buffer$/.exec(key);
      const i = m ? Number(m[1]) : -1;
      if (i < 0 || i >= this.params.length) {
        throw new Error(
          `optimizer loadStateDict: unexpected key ${key} for ${this.params.length} parameters`,
        );
      }
      const p = this.params[i];
      const same = value.shape.length === p.ndim &&
        value.shape.every((d, j) => d === p.shape[j]);
      if (!same) {
        throw new Error(
          `optimizer loadStateDict: ${key} has shape ${
            formatShape(value.shape)
          }, its parameter ${formatShape(p.shape)}`,
        );
      }
      const buf = this.#buffers[i] ?? (this.#buffers[i] = zerosLike(p));
      const data = "data" in value && value.data instanceof Float32Array
        ? value.data
        : (value as Tensor).toArray();
      buf.backend.write(buf.buffer, data);
    }
    if (state.hyper.lr !== undefined) this.lr = state.hyper.lr;
  }

  /** Frees the momentum buffers. */
  dispose(): void {
    for (const b of this.#buffers) b?.dispose();
    this.#buffers = this.params.map(() => null);
  }
}

export interface LARSOptions extends SGDOptions {
  /** LARC's trust coefficient (default 0.001). */
  trustCoefficient?: number;
  eps?: number;
}

/**
 * LARS as NVIDIA apex's LARC with clipping off: each parameter's gradient
 * becomes (g + wd * p) * trust * ||p|| / (||g|| + wd * ||p|| + eps) when both
 * norms are non-zero (and is left alone otherwise, weight decay included);
 * then SGD steps without weight decay.
 */
export class LARS extends SGD {
  readonly trustCoefficient: number;
  readonly eps: number;

  constructor(params: Tensor[], opts: LARSOptions) {
    super(params, opts);
    this.trustCoefficient = opts.trustCoefficient ?? 0.001;
    this.eps = opts.eps ?? 1e-8;
  }

  /**
   * LARC's rescaling of each gradient (one `larsAdapt` per parameter: each
   * needs its own norms), then one SGD update of them all. Rescaling every
   * gradient before any parameter moves computes what alternating did: a
   * parameter's rescaling reads only that parameter and its own gradient.
   */
  override step(): void {
    noGrad(() => {
      for (const p of this.params) {
        if (p.grad === null) continue;
        const g = ownGradient(p);
        p.backend.larsAdapt({
          param: p.buffer,
          grad: g.buffer,
          length: p.size,
          trust: this.trustCoefficient,
          weightDecay: this.weightDecay,
          eps: this.eps,
        });
      }
      this.updateAll(0);
    });
  }

  protected override hyper(): OptimizerHyper {
    return {
      ...super.hyper(),
      trustCoefficient: this.trustCoefficient,
      eps: this.eps,
    };
  }
}

/**
 * A kept tensor of zeros of p's shape on p's backend (a momentum buffer):
 * the backend itself, not the device of its name, so that the buffers of a
 * backend's parameters are its own.
 */
function zerosLike(p: Tensor): Tensor {
  const t = keep(Tensor.empty(p.backend, p.shape));
  t.backend.fill({ y: t.buffer, value: 0 });
  return t;
}

/** The tensors of one `sgdUpdateMany` call. */
interface UpdateGroup {
  params: DataBuffer[];
  grads: DataBuffer[];
  buffers: DataBuffer[];
  lengths: number[];
}

function updateGroup(): UpdateGroup {
  return { params: [], grads: [], buffers: [], lengths: [] };
}

/**
 * The parameter's gradient, copied first if its storage is shared (autograd
 * may hand one gradient to two leaves), so that rescaling it in place
 * touches no other tensor.
 */
function ownGradient(p: Tensor): Tensor {
  const g = p.grad!;
  if (g.storageRefs === 1) return g;
  const copy = keep(Tensor.empty(g.backend, g.shape));
  g.backend.copy({
    src: g.buffer,
    srcOffset: 0,
    dst: copy.buffer,
    dstOffset: 0,
    length: g.size,
  });
  g.dispose();
  p.grad = copy;
  return copy;
}
