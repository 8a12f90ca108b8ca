/**
 * Checkpoints as the tools read them: one sentence when a file is missing,
 * unreadable or made for another network, and the backbone's weights picked
 * out of a pretraining checkpoint, a probe checkpoint or a torchvision-named
 * state dict, in safetensors or as PyTorch's `torch.save` wrote it (the
 * official MEC code's `checkpoint_NNNN.pth.tar`, torchvision's `.pth`).
 *
 * @module
 */

import type { Checkpoint } from "../nn/checkpoint.ts";
import { loadCheckpoint } from "../nn/checkpoint.ts";
import type { Module } from "../nn/module.ts";
import { describeFileType, type HostTensor } from "../nn/safetensors.ts";
import { formatShape } from "../nn/tensor.ts";
import { isTorchFile } from "../nn/torch_file.ts";
import { availableMemory, formatBytes } from "./memory.ts";
import { inferArch, readTorchCheckpoint } from "./torch_checkpoint.ts";

/** The architecture flags a checkpoint's network was built with. */
export interface ArchArgs {
  arch: string;
  width: number;
  smallStem: boolean;
}

/** "resnet18 (width 16, small stem)". */
export function describeArch(a: ArchArgs): string {
  return `${a.arch} (width ${a.width}${a.smallStem ? ", small stem" : ""})`;
}

/** The first bytes of a file (fewer where it is shorter). */
async function head(path: string, length: number): Promise<Uint8Array> {
  using file = await Deno.open(path, { read: true });
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await file.read(out.subarray(done));
    if (n === null) break;
    done += n;
  }
  return out.subarray(0, done);
}

/** Whether bytes 257.. of a file read "ustar", a tar archive's mark. */
function isTar(bytes: Uint8Array): boolean {
  return new TextDecoder().decode(bytes.subarray(257, 262)) === "ustar";
}

/**
 * Reads a checkpoint, or throws one sentence saying why it cannot. Only a
 * regular file is opened (a FIFO or a device would block or never end),
 * and only one that fits in the memory available (reading it takes its
 * size, and float32 copies of its tensors as much again). A file that
 * `torch.save` wrote (by its first bytes) is read by
 * {@link readTorchCheckpoint}, anything else as safetensors.
 */
export async function readCheckpoint(
  path: string,
  what: string,
): Promise<Checkpoint> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`The ${what} ${path} does not exist.`);
    }
    throw new Error(
      `The ${what} ${path} cannot be read (${
        (e as Error).message.replace(/\.$/, "")
      }).`,
    );
  }
  if (!info.isFile) {
    throw new Error(
      `The ${what} ${path} is ${
        describeFileType(info)
      }, not a checkpoint file.`,
    );
  }
  const available = availableMemory();
  if (available !== null && 2 * info.size > available) {
    throw new Error(
      `The ${what} ${path} is ${
        formatBytes(info.size)
      }, more than the memory available can load (${formatBytes(available)}).`,
    );
  }
  const first = await head(path, 512).catch(() => new Uint8Array());
  if (isTorchFile(first)) return await readTorchCheckpoint(path, what);
  if (isTar(first)) {
    throw new Error(
      `The ${what} ${path} is a tar archive (PyTorch's oldest checkpoint format), which this toolkit does not read; load it and save it again with torch.save in PyTorch 1.6 or later.`,
    );
  }
  let ckpt: Checkpoint;
  try {
    ckpt = await loadCheckpoint(path);
  } catch (e) {
    const reason = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new Error(
      `The ${what} ${path} cannot be read as a safetensors checkpoint (${
        reason.replace(/\.$/, "")
      }).`,
    );
  }
  // A state dict from elsewhere (a torchvision export) records no flags:
  // its architecture is read from its tensors, as for PyTorch files.
  if (Object.keys(ckpt.metadata).length === 0) {
    const official = [...ckpt.model.keys()].some((k) =>
      k.startsWith("encoder.")
    );
    const arch = inferArch(ckpt.model, official ? "encoder." : "");
    if (!("reason" in arch)) ckpt.metadata = { args: { ...arch } };
  }
  return ckpt;
}

/**
 * Loads `state` into `module` strictly; a missing or surplus key or a shape
 * mismatch becomes one sentence naming the file, the expected network and
 * the first difference.
 */
export function loadInto(
  module: Module,
  state: Map<string, HostTensor>,
  path: string,
  expected: string,
): void {
  const own = module.stateDict();
  let detail: string | null = null;
  for (const [key, t] of own) {
    const have = state.get(key);
    if (have === undefined) {
      detail = `it has no ${key}`;
      break;
    }
    const same = have.shape.length === t.ndim &&
      have.shape.every((d, i) => d === t.shape[i]);
    const scalar = t.size === 1 &&
      have.shape.reduce((a, b) => a * b, 1) === 1;
    if (!same && !scalar) {
      detail = `its ${key} has shape ${formatShape(have.shape)} where ${
        formatShape(t.shape)
      } is expected`;
      break;
    }
  }
  if (detail === null) {
    const extra = [...state.keys()].find((k) => !own.has(k));
    if (extra !== undefined) detail = `it has an unexpected tensor ${extra}`;
  }
  if (detail !== null) {
    throw new Error(
      `The checkpoint ${path} does not fit a ${expected}: ${detail}.`,
    );
  }
  module.loadStateDict(state);
}

/**
 * The backbone's tensors (torchvision names, `fc` left out) from any of:
 * a pretraining checkpoint (the student `encoder.*`), a probe checkpoint or
 * a torchvision state dict (top-level names).
 */
export function backboneState(
  ckpt: Checkpoint,
): Map<string, HostTensor> {
  const model = ckpt.model;
  const fromEncoder = [...model.keys()].some((k) => k.startsWith("encoder."));
  const out = new Map<string, HostTensor>();
  for (const [key, t] of model) {
    let name = key;
    if (fromEncoder) {
      if (!key.startsWith("encoder.")) continue;
      name = key.slice("encoder.".length);
    }
    if (name.startsWith("fc.")) continue;
    out.set(name, t);
  }
  return out;
}
