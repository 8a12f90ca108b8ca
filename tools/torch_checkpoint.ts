/**
 * PyTorch checkpoints as the tools read them: the official MEC code's
 * `checkpoint_NNNN.pth.tar` (`{'epoch', 'arch', 'state_dict', 'optimizer'}`
 * with `module.encoder.*`, `module.predictor.*` and `module.teacher.*`
 * keys), or a bare ResNet state dict such as torchvision's own `.pth`
 * files, turned into this toolkit's {@link Checkpoint}: the same names
 * without the `module.` of DistributedDataParallel, the architecture read
 * from the tensors' names and shapes, and the optimiser's state left out.
 *
 * @module
 */

import type { Checkpoint } from "../nn/checkpoint.ts";
import { PyDict } from "../nn/pickle.ts";
import type { HostTensor } from "../nn/safetensors.ts";
import {
  readTorchFile,
  tensorEntries,
  TorchFileError,
} from "../nn/torch_file.ts";
import type { ArchArgs } from "./models.ts";

/** Blocks per stage and block kind of each ResNet this toolkit builds. */
const RESNETS: Record<string, { depths: number[]; bottleneck: boolean }> = {
  resnet18: { depths: [2, 2, 2, 2], bottleneck: false },
  resnet34: { depths: [3, 4, 6, 3], bottleneck: false },
  resnet50: { depths: [3, 4, 6, 3], bottleneck: true },
  resnet101: { depths: [3, 4, 23, 3], bottleneck: true },
  resnet152: { depths: [3, 8, 36, 3], bottleneck: true },
};
const NAMES = Object.keys(RESNETS);
const BUILDS = `${NAMES.slice(0, -1).join(", ")} and ${NAMES.at(-1)}`;

/**
 * The ResNet whose tensors `state` holds under `prefix` (`"encoder."` or
 * `""`): its depth from the blocks per stage and the block kind, its base
 * width from conv1's output channels, its stem from conv1's kernel; or why
 * it is none this toolkit builds. Shapes beyond these are left to the
 * strict load, which names the first that differs.
 */
export function inferArch(
  state: ReadonlyMap<string, HostTensor>,
  prefix: string,
): ArchArgs | { reason: string } {
  const conv1 = state.get(`${prefix}conv1.weight`)?.shape;
  if (conv1 === undefined) {
    return { reason: `it has no ${prefix}conv1.weight, so it is not a ResNet` };
  }
  const k = conv1[2];
  if (
    conv1.length !== 4 || conv1[1] !== 3 || k !== conv1[3] ||
    (k !== 7 && k !== 3)
  ) {
    return {
      reason: `its ${prefix}conv1.weight has shape [${
        conv1.join(", ")
      }], not a ResNet stem's (7x7, or 3x3 for small images, on 3 channels)`,
    };
  }
  const depths = [1, 2, 3, 4].map((stage) => {
    let n = 0;
    while (state.has(`${prefix}layer${stage}.${n}.conv1.weight`)) n++;
    return n;
  });
  const bottleneck = state.has(`${prefix}layer1.0.conv3.weight`);
  const arch = NAMES.find((name) =>
    RESNETS[name].bottleneck === bottleneck &&
    RESNETS[name].depths.every((d, i) => d === depths[i])
  );
  if (arch === undefined) {
    return {
      reason: `its ResNet has ${depths.join(", ")} ${
        bottleneck ? "bottleneck" : "basic"
      } blocks per stage, which is none of ${BUILDS}`,
    };
  }
  return { arch, width: conv1[0], smallStem: k === 3 };
}

/** The names without DistributedDataParallel's `module.`, where all have it. */
function withoutModulePrefix<T>(entries: Map<string, T>): Map<string, T> {
  const keys = [...entries.keys()];
  if (keys.length === 0 || !keys.every((k) => k.startsWith("module."))) {
    return entries;
  }
  return new Map(
    [...entries].map(([k, v]) => [k.slice("module.".length), v]),
  );
}

/** A sentence already addressed to the user. */
class Sentence extends Error {}

/**
 * Reads a `torch.save` checkpoint (see the module comment) as a
 * {@link Checkpoint} whose metadata records `kind: "pytorch"`, the file's
 * `epoch` and `arch` where it has them, and `args` (arch, width,
 * smallStem) as the tensors show them, as a pretraining checkpoint's
 * flags would.
 *
 * @throws Error with one sentence naming `what` and `path`.
 */
export async function readTorchCheckpoint(
  path: string,
  what: string,
): Promise<Checkpoint> {
  const sentence = (detail: string) =>
    new Sentence(`The ${what} ${path} ${detail}.`);
  try {
    return await readTorchFile(path, async (file) => {
      const root = file.root;
      const inner = root instanceof PyDict ? root.get("state_dict") : undefined;
      const dict = inner instanceof PyDict ? inner : root;
      const tensors = dict instanceof PyDict
        ? withoutModulePrefix(tensorEntries(dict))
        : new Map();
      if (tensors.size === 0) {
        throw sentence(
          "holds no state dict (a dict of tensor names to tensors, alone or under 'state_dict')",
        );
      }
      const model = await file.read(tensors);
      const official = [...model.keys()].some((k) => k.startsWith("encoder."));
      const arch = inferArch(model, official ? "encoder." : "");
      const recorded = root instanceof PyDict ? root.get("arch") : undefined;
      const named = typeof recorded === "string" ? recorded : null;
      if ("reason" in arch) {
        throw sentence(
          `holds ${
            named === null ? "a network" : `a ${named}`
          } this toolkit does not build: ${arch.reason} (it builds ${BUILDS})`,
        );
      }
      if (named !== null && named !== arch.arch) {
        throw sentence(
          `says it holds a ${named}, but its tensors are those of a ${arch.arch}`,
        );
      }
      const epoch = root instanceof PyDict ? root.get("epoch") : undefined;
      return {
        model,
        optimizer: null,
        metadata: {
          kind: "pytorch",
          ...(typeof epoch === "number" ? { epoch } : {}),
          ...(named !== null ? { arch: named } : {}),
          args: { ...arch },
        },
      };
    });
  } catch (e) {
    if (e instanceof Sentence) throw e;
    if (!(e instanceof TorchFileError)) {
      // The file system's own errors (the file shrank while being read).
      throw sentence(
        `cannot be read as a PyTorch checkpoint: ${
          (e as Error).message.replace(/\.$/, "")
        }`,
      );
    }
    if (e.refused !== null) {
      throw sentence(
        `was not loaded: its pickle asks to run ${e.refused}, and only PyTorch's tensor, storage and OrderedDict constructors are allowed (a pickle can run any code)`,
      );
    }
    throw sentence(`cannot be read as a PyTorch checkpoint: ${e.message}`);
  }
}
