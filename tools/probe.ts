/**
 * The linear probe's parts that the tool and its tests share: the head of
 * the official `main_lincls.py` and the check that the frozen backbone did
 * not change.
 *
 * @module
 */

import {
  BatchNorm1d,
  type Generator,
  Linear,
  type Module,
  noGrad,
  Sequential,
} from "../mod.ts";

/**
 * BatchNorm1d(features, affine=False, eps=1e-6) then Linear(features,
 * classes) with weight ~ N(0, 0.01) and bias 0, as MEC's probe builds it.
 */
export function probeHead(
  features: number,
  classes: number,
  gen: Generator,
): Sequential {
  const linear = new Linear(features, classes, { gen });
  noGrad(() => {
    const w = new Float32Array(linear.weight.size);
    gen.fillNormal(w, 0, 0.01);
    linear.weight.backend.write(linear.weight.buffer, w);
    linear.bias!.backend.fill({ y: linear.bias!.buffer, value: 0 });
  });
  return new Sequential(
    new BatchNorm1d(features, { affine: false, eps: 1e-6 }),
    linear,
  );
}

/** Copies of every tensor of `module` except those under `skipPrefix`. */
export function snapshotState(
  module: Module,
  skipPrefix = "fc.",
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [key, t] of module.stateDict()) {
    if (!key.startsWith(skipPrefix)) out.set(key, t.toArray().slice());
  }
  return out;
}

/**
 * Throws, naming the first tensor and element that differs, when any
 * backbone tensor (weights and BN statistics alike) is not bit for bit what
 * the snapshot holds: a probe on a backbone that moved is not a linear probe.
 */
export function assertFrozen(
  snapshot: ReadonlyMap<string, Float32Array>,
  module: Module,
): void {
  const state = module.stateDict();
  for (const [key, before] of snapshot) {
    const t = state.get(key);
    if (t === undefined) {
      throw new Error(
        `The frozen backbone lost its tensor ${key} during linear probing; the probe is invalid.`,
      );
    }
    const after = t.toArray();
    for (let i = 0; i < before.length; i++) {
      if (!Object.is(before[i], after[i])) {
        throw new Error(
          `The frozen backbone changed during linear probing: ${key}[${i}] was ${
            before[i]
          } and is now ${after[i]}; the probe is invalid.`,
        );
      }
    }
  }
}
