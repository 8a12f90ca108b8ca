/**
 * The tools' flag tables: every flag sets the field named after it, the
 * flags both tools take are the same flag in both, a recorded setting is
 * checked as the command line is, and the progress line keeps its columns.
 */

import {
  fieldOf,
  type FlagSpec,
  parseCommand,
  recordedSettings,
} from "../tools/flags.ts";
import { LINCLS_FLAGS, OFFICIAL, recordedArch } from "../tools/lincls_args.ts";
import { evalSizeOf, PAPER, PRETRAIN_FLAGS } from "../tools/pretrain_args.ts";
import { progressLine } from "../tools/progress.ts";
import { assert, assertThrows } from "./assert.ts";

Deno.test("a flag's field is its name in camelCase", () => {
  assert.equal(fieldOf("batch-size"), "batchSize");
  assert.equal(fieldOf("teacher-momentum"), "teacherMomentum");
  assert.equal(fieldOf("tf32"), "tf32");
  assert.equal(fieldOf("print-freq"), "printFreq");
});

Deno.test("every flag sets a field the tool's defaults or inputs hold", () => {
  const check = (
    specs: readonly FlagSpec[],
    fields: readonly string[],
    tool: string,
  ) => {
    for (const s of specs) {
      if (s.name === "help") continue;
      assert.ok(
        fields.includes(fieldOf(s.name)),
        `${tool}'s --${s.name} sets ${fieldOf(s.name)}, which it does not have`,
      );
    }
    const names = specs.map((s) => s.name);
    assert.equal(new Set(names).size, names.length, `${tool} repeats a flag`);
  };
  check(
    PRETRAIN_FLAGS,
    [...Object.keys(PAPER), "resume", "maxIters", "overwrite", "profile"],
    "pretrain",
  );
  check(
    LINCLS_FLAGS,
    [...Object.keys(OFFICIAL), "pretrained", "resume", "overwrite"],
    "lincls",
  );
});

Deno.test("a flag both tools take has the same kind, range and choices in both", () => {
  const lincls = new Map(LINCLS_FLAGS.map((s) => [s.name, s]));
  let shared = 0;
  for (const p of PRETRAIN_FLAGS) {
    const l = lincls.get(p.name);
    if (l === undefined) continue;
    shared++;
    const { help: _a, ...rest1 } = p;
    const { help: _b, ...rest2 } = l;
    assert.deepEqual(rest1, rest2, `--${p.name} differs between the tools`);
  }
  assert.ok(shared >= 19, `only ${shared} shared flags`);
});

Deno.test("parsed and recorded flags land in the same fields, by the same rules", () => {
  const c = parseCommand<Record<string, unknown>>(
    ["-b", "64", "--small-stem", "--lr=0.1", "data"],
    PRETRAIN_FLAGS,
  );
  assert.deepEqual(c.given, { batchSize: 64, smallStem: true, lr: 0.1 });
  assert.equal(c.data, "data");
  const recorded = recordedSettings<Record<string, unknown>>(
    { batchSize: 64, smallStem: true, resume: null, unknownField: 3 },
    PRETRAIN_FLAGS,
    "ckpt.safetensors",
    ["resume"],
  );
  assert.deepEqual(recorded, { batchSize: 64, smallStem: true, resume: null });
  assertThrows(
    () =>
      recordedSettings({ batchSize: 1 }, PRETRAIN_FLAGS, "ckpt.safetensors"),
    /^The checkpoint ckpt\.safetensors records a setting the flags do not allow: --batch-size must be at least 2, not 1\.$/,
  );
});

Deno.test("the probe takes the backbone from a pretraining's record, at its evaluation side", () => {
  const pretrained = {
    ...PAPER,
    arch: "resnet18",
    width: 16,
    smallStem: true,
    imageSize: 24,
    evalSize: 28,
  };
  const arch = { arch: "resnet18", width: 16, smallStem: true };
  assert.deepEqual(recordedArch(pretrained, "a.safetensors"), {
    ...arch,
    imageSize: 28,
  });
  assert.equal(evalSizeOf(pretrained), 28);
  // Without an evaluation side (null, or a checkpoint older than the
  // flag), the side it trained on.
  const { evalSize: _, ...older } = pretrained;
  for (const r of [{ ...pretrained, evalSize: null }, older]) {
    assert.deepEqual(recordedArch(r, "b.safetensors"), {
      ...arch,
      imageSize: 24,
    });
  }
  assert.equal(evalSizeOf({ imageSize: 24, evalSize: null }), 24);
  assertThrows(
    () => recordedArch({ ...pretrained, evalSize: 4 }, "c.safetensors"),
    /^The checkpoint c\.safetensors records a setting the flags do not allow: --eval-size must be at least 8, not 4\.$/,
  );
  // Given on the command line, pretraining's flag parses into the field.
  const parsed = parseCommand<Record<string, unknown>>(
    ["--eval-size", "36"],
    PRETRAIN_FLAGS,
  );
  assert.equal(parsed.given.evalSize, 36);
});

Deno.test("the progress line pads the batch index to the width of the count", () => {
  assert.equal(
    progressLine(3, 7, 120, ["Loss 1.5", "lr 0.1"]),
    "Epoch: [3][  7/120]  Loss 1.5  lr 0.1",
  );
  assert.equal(progressLine(0, 0, 2, []), "Epoch: [0][0/2]");
});
