/**
 * `deno task convert IN OUT.safetensors [--torchvision]`: a checkpoint in
 * this toolkit's format, from any checkpoint the tools read: the official
 * MEC code's `checkpoint_NNNN.pth.tar`, a torchvision `.pth`, or one of
 * this toolkit's own.
 *
 * Without `--torchvision`, OUT holds the whole model under this toolkit's
 * names (`encoder.*`, `predictor.*`, `teacher.*`, which are the official
 * code's without DistributedDataParallel's `module.`), and records the
 * architecture, so `deno task lincls --pretrained OUT` needs no flags. The
 * optimiser's state is not carried over.
 *
 * With `--torchvision`, OUT holds the pretrained backbone alone (the
 * student encoder without its projector) under torchvision's exact keys,
 * so that on the PyTorch side
 * `torchvision.models.resnet50().load_state_dict(safetensors.torch.load_file(OUT), strict=False)`
 * reports only `fc.weight` and `fc.bias` missing.
 *
 * @module
 */

import { resolve } from "node:path";
import { saveTensorCheckpoint } from "../nn/checkpoint.ts";
import { writeSafetensors } from "../nn/safetensors.ts";
import { exists, EXIT, runMain, UsageError } from "./cli.ts";
import { flag, type FlagSpec, helpText, parseFlags } from "./flags.ts";
import {
  type ArchArgs,
  backboneState,
  describeArch,
  readCheckpoint,
} from "./models.ts";
import { inferArch } from "./torch_checkpoint.ts";

const USAGE = "deno task convert IN OUT.safetensors [--torchvision]";

const DESCRIPTION =
  `Converts a checkpoint (the official MEC code's checkpoint_NNNN.pth.tar, a torchvision .pth, or one of this toolkit's) to this toolkit's safetensors format, or with --torchvision to the pretrained backbone alone under torchvision's names.`;

const CONVERT_FLAGS: readonly FlagSpec[] = [
  {
    name: "torchvision",
    kind: "bool",
    help:
      "write the backbone alone with torchvision's keys (load_state_dict(..., strict=False) misses only fc.*)",
  },
  flag("overwrite", "replace OUT if it exists"),
  flag("help"),
];

/** The architecture a checkpoint records, if it records one. */
function recordedArch(metadata: Record<string, unknown>): ArchArgs | null {
  const a = metadata.args as Partial<ArchArgs> | undefined;
  return typeof a?.arch === "string" && typeof a.width === "number"
    ? { arch: a.arch, width: a.width, smallStem: a.smallStem === true }
    : null;
}

/** Runs the tool on `argv`; returns the exit code. */
export async function convert(argv: readonly string[]): Promise<number> {
  const flags = parseFlags(argv, CONVERT_FLAGS);
  if (flags.has("help")) {
    console.log(helpText(USAGE, DESCRIPTION, CONVERT_FLAGS));
    return EXIT.ok;
  }
  if (flags.positionals.length !== 2) {
    throw new UsageError(
      `Expected IN and OUT, got ${flags.positionals.length} arguments (usage: ${USAGE}).`,
    );
  }
  const [input, output] = flags.positionals;
  if (resolve(input) === resolve(output)) {
    throw new UsageError("OUT must be another file than IN.");
  }
  if (!flags.has("overwrite") && await exists(output)) {
    throw new UsageError(
      `${output} exists; give --overwrite to replace it.`,
    );
  }
  const ckpt = await readCheckpoint(input, "checkpoint");
  if (flags.has("torchvision")) {
    const backbone = backboneState(ckpt);
    const found = inferArch(backbone, "");
    if ("reason" in found) {
      throw new Error(
        `The checkpoint ${input} holds no ResNet backbone to export: ${found.reason}.`,
      );
    }
    await writeSafetensors(output, backbone, { format: "pt" });
    console.log(
      `Wrote ${output}: the ${
        describeArch(found)
      } backbone of ${input}, ${backbone.size} tensors under torchvision's names (fc left out).`,
    );
    if (found.width !== 64 || found.smallStem) {
      console.log(
        `Note: torchvision's ${found.arch}() has width 64 and the 7x7 stem; this backbone loads into a ResNet built with the same width and stem.`,
      );
    }
    return EXIT.ok;
  }

  const arch = recordedArch(ckpt.metadata);
  const epoch = ckpt.metadata.epoch;
  // A record of its own: the source's (a pretraining run's, say) would
  // claim a resumable run without the optimiser's state.
  await saveTensorCheckpoint(output, ckpt.model, {
    kind: "mec-converted",
    source: input,
    ...(typeof epoch === "number" ? { epoch } : {}),
    ...(arch !== null ? { args: arch } : {}),
  });
  console.log(
    `Wrote ${output}: ${
      arch === null ? "the network" : `the ${describeArch(arch)}`
    } of ${input}${
      typeof epoch === "number" ? ` (epoch ${epoch})` : ""
    }, ${ckpt.model.size} tensors.`,
  );
  return EXIT.ok;
}

if (import.meta.main) runMain(() => convert(Deno.args));
