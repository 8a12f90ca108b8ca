/**
 * Checkpoints: a model's state dict, an optimiser's state and JSON metadata
 * in one safetensors file, written to a temporary name and renamed, so an
 * interrupted save never leaves a broken file.
 *
 * Model tensors keep their state-dict names (`conv1.weight`, ...), so
 * `safetensors.torch.load_file` on the PyTorch side gives a state dict that
 * `load_state_dict(..., strict=False)` takes as is; optimiser tensors are
 * prefixed `optimizer.`. The metadata map holds the format name, the user's
 * metadata as JSON and the optimiser's hyper-parameters as JSON.
 *
 * @module
 */

import type { Module } from "./module.ts";
import type { OptimizerHyper, SGD } from "./optim.ts";
import {
  type HostTensor,
  readSafetensors,
  type TensorEntries,
  writeSafetensors,
} from "./safetensors.ts";
import type { Tensor } from "./tensor.ts";

const FORMAT = "deno-mec checkpoint 1";
const OPTIMIZER_PREFIX = "optimizer.";

/** A checkpoint read back from disk. */
export interface Checkpoint {
  /** The model's state dict (host data). */
  model: Map<string, HostTensor>;
  /** The optimiser's state, if one was saved. */
  optimizer: { tensors: Map<string, HostTensor>; hyper: OptimizerHyper } | null;
  /** The metadata given to `saveCheckpoint`. */
  metadata: Record<string, unknown>;
}

export interface SaveOptions {
  model: Module;
  optimizer?: SGD;
  /** JSON-serialisable metadata: epoch, iteration, arguments, ... */
  metadata?: object;
}

function host(t: Tensor): HostTensor {
  return { shape: t.shape, data: t.toArray() };
}

/** Writes a checkpoint atomically to `path`. */
export async function saveCheckpoint(
  path: string,
  opts: SaveOptions,
): Promise<void> {
  const tensors: [string, HostTensor][] = [];
  for (const [key, t] of opts.model.stateDict()) tensors.push([key, host(t)]);
  const meta: Record<string, string> = {
    format: FORMAT,
    metadata: JSON.stringify(opts.metadata ?? {}),
  };
  if (opts.optimizer) {
    const state = opts.optimizer.stateDict();
    for (const [key, t] of state.tensors) {
      tensors.push([OPTIMIZER_PREFIX + key, host(t)]);
    }
    meta.optimizer = JSON.stringify(state.hyper);
  }
  await writeSafetensors(path, tensors, meta);
}

/**
 * Writes host tensors as a checkpoint with no optimiser state, atomically:
 * a model read from elsewhere (a PyTorch file, say) in this format.
 */
export async function saveTensorCheckpoint(
  path: string,
  model: TensorEntries,
  metadata: object = {},
): Promise<void> {
  await writeSafetensors(path, model, {
    format: FORMAT,
    metadata: JSON.stringify(metadata),
  });
}

/**
 * Reads a checkpoint written by `saveCheckpoint`, or any safetensors state
 * dict (a torchvision export, say): then every tensor is model state and the
 * metadata is empty.
 */
export async function loadCheckpoint(path: string): Promise<Checkpoint> {
  const file = await readSafetensors(path);
  const model = new Map<string, HostTensor>();
  const optimizerTensors = new Map<string, HostTensor>();
  for (const [key, t] of file.tensors) {
    if (key.startsWith(OPTIMIZER_PREFIX)) {
      optimizerTensors.set(key.slice(OPTIMIZER_PREFIX.length), t);
    } else model.set(key, t);
  }
  const meta = file.metadata;
  const parse = (field: string): unknown => {
    try {
      return JSON.parse(meta[field]);
    } catch {
      throw new Error(
        `${path}: the checkpoint's "${field}" metadata is not valid JSON`,
      );
    }
  };
  const ours = meta.format === FORMAT;
  return {
    model,
    optimizer: ours && meta.optimizer !== undefined
      ? {
        tensors: optimizerTensors,
        hyper: parse("optimizer") as OptimizerHyper,
      }
      : null,
    metadata: ours ? parse("metadata") as Record<string, unknown> : {},
  };
}
