/**
 * Reverse-mode automatic differentiation over the graph that ops record.
 *
 * Gradients flow in reverse topological order. A gradient that two consumers
 * receive is shared by storage, so accumulation writes in place only when the
 * storage has a single owner (copy on write); leaf gradients are owned by
 * their leaf and outlive any scope. Each op's saved views are disposed as
 * soon as its backward has run, so the memory of the activations falls as
 * the backward pass goes; a second backward through the same graph fails
 * with a message saying so, as PyTorch's does without `retain_graph`.
 *
 * @module
 */

import {
  type BackwardOptions,
  formatShape,
  type GradFn,
  keep,
  noGrad,
  setBackwardEngine,
  Tensor,
} from "./tensor.ts";

function topologicalOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>([root]);
  // Iterative post-order: deep networks would overflow a recursive walk.
  const stack: [Tensor, number][] = [[root, 0]];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, next] = top;
    const inputs = t.gradFn?.inputs ?? [];
    if (next < inputs.length) {
      top[1]++;
      const input = inputs[next];
      if (input.requiresGrad && !visited.has(input)) {
        visited.add(input);
        stack.push([input, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order.reverse();
}

/** `acc + g`, in place when acc's storage has no other owner. */
function accumulate(acc: Tensor, g: Tensor): Tensor {
  const backend = acc.backend;
  if (acc.storageRefs === 1) {
    backend.axpby({
      n: acc.size,
      alpha: 1,
      x: g.buffer,
      beta: 1,
      y: acc.buffer,
    });
    g.dispose();
    return acc;
  }
  if (g.storageRefs === 1) {
    backend.axpby({
      n: acc.size,
      alpha: 1,
      x: acc.buffer,
      beta: 1,
      y: g.buffer,
    });
    acc.dispose();
    return g;
  }
  const sum = Tensor.empty(backend, acc.shape);
  backend.copy({
    src: acc.buffer,
    srcOffset: 0,
    dst: sum.buffer,
    dstOffset: 0,
    length: acc.size,
  });
  backend.axpby({ n: acc.size, alpha: 1, x: g.buffer, beta: 1, y: sum.buffer });
  acc.dispose();
  g.dispose();
  return sum;
}

function runBackward(
  root: Tensor,
  seed?: Tensor,
  options?: BackwardOptions,
): void {
  if (!root.requiresGrad) {
    throw new Error(
      "backward(): the tensor does not require grad (no input of it has requiresGrad, or it was computed under noGrad)",
    );
  }
  let first: Tensor;
  if (seed === undefined) {
    if (root.size !== 1) {
      throw new RangeError(
        `backward(): a gradient is needed for a non-scalar tensor of shape ${
          formatShape(root.shape)
        }`,
      );
    }
    first = Tensor.empty(root.backend, root.shape);
    root.backend.fill({ y: first.buffer, value: 1 });
  } else {
    if (seed.size !== root.size) {
      throw new RangeError(
        `backward(): the gradient's shape ${
          formatShape(seed.shape)
        } does not match the tensor's ${formatShape(root.shape)}`,
      );
    }
    first = seed.viewAs(root.shape);
  }

  noGrad(() => {
    const grads = new Map<Tensor, Tensor>([[root, first]]);
    for (const t of topologicalOrder(root)) {
      const g = grads.get(t);
      if (g === undefined) continue;
      grads.delete(t);
      const fn = t.gradFn;
      if (fn === null) {
        accumulateLeaf(t, g);
        options?.onLeafGrad?.(t);
        continue;
      }
      let inputGrads: (Tensor | null)[];
      try {
        checkSaved(fn);
        inputGrads = fn.backward(g, fn.saved);
      } catch (e) {
        throw new Error(`${fn.name} backward: ${(e as Error).message}`, {
          cause: e,
        });
      } finally {
        g.dispose();
      }
      for (const s of fn.saved) s.dispose();
      fn.inputs.forEach((input, i) => {
        const gi = inputGrads[i];
        if (!gi) return;
        if (!input.requiresGrad) {
          gi.dispose();
          return;
        }
        if (gi.size !== input.size) {
          throw new Error(
            `${fn.name} backward produced a gradient of shape ${
              formatShape(gi.shape)
            } for an input of shape ${formatShape(input.shape)}`,
          );
        }
        const shaped = sameShape(gi, input.shape);
        const prev = grads.get(input);
        grads.set(input, prev ? accumulate(prev, shaped) : shaped);
      });
    }
    for (const g of grads.values()) g.dispose();
  });
}

/** Throws when a saved view was freed or its storage written since. */
function checkSaved(fn: GradFn): void {
  fn.saved.forEach((s, i) => {
    if (s.isDisposed) {
      throw new Error(
        "the tensors it saved were already freed, by an earlier backward() " +
          "through this graph or at the end of the scope() that made them",
      );
    }
    if (s.version !== fn.savedVersions[i]) {
      throw new Error(
        `a tensor of shape ${
          formatShape(s.shape)
        } that it saved was modified by an in-place operation ` +
          `(version ${s.version}, saved at version ${fn.savedVersions[i]})`,
      );
    }
  });
}

function sameShape(g: Tensor, shape: readonly number[]): Tensor {
  if (
    g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])
  ) {
    return g;
  }
  const view = g.viewAs(shape);
  g.dispose();
  return view;
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  keep(g);
  leaf.grad = leaf.grad === null ? g : keep(accumulate(leaf.grad, g));
}

setBackwardEngine(runBackward);
