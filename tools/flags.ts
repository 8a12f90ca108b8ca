/**
 * The tools' flags: one declarative table per tool, parsed with
 * `node:util`'s parseArgs and checked value by value. Each flag sets the
 * argument field named after it in camelCase (`--batch-size` sets
 * `batchSize`), so a table is all a tool declares. The flags both tools take
 * are defined once here, each tool giving its own help text; a checkpoint's
 * record of the flags is held to the same rules as the command line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { resnets } from "../nn/resnet.ts";
import { chooseDevice, firstLine, UsageError } from "./cli.ts";

/** One flag: its long name, optional short name, kind, help and default. */
export interface FlagSpec {
  name: string;
  short?: string;
  kind: "int" | "number" | "string" | "bool";
  /** The value placeholder shown in the help (e.g. "N", "PATH"). */
  meta?: string;
  help: string;
  /** Smallest allowed value of a number. */
  min?: number;
  /** Whether the smallest value itself is excluded (lr > 0, say). */
  exclusiveMin?: boolean;
  /** Largest allowed value of a number (integers: at most 2^53 - 1 anyway). */
  max?: number;
  /** Whether the largest value itself is excluded (momentum < 1, say). */
  exclusiveMax?: boolean;
  /** Allowed values of a string. */
  choices?: readonly string[];
  /**
   * Checks and normalises a string's value (throwing a UsageError that
   * names the flag), where choices cannot say it.
   */
  parse?: (value: string) => string;
}

export type FlagValue = string | number | boolean;

/** The argument field a flag sets: its name in camelCase. */
export function fieldOf(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** The ResNets `--arch` accepts. */
export const ARCHS: readonly string[] = Object.keys(resnets);

/**
 * The flags both tools take: kind, range and placeholder once. Those whose
 * meaning and default are the same in both carry their help text; the
 * others get theirs from each tool (`flag(name, help)`).
 */
const COMMON = {
  arch: { short: "a", kind: "string", meta: "ARCH", choices: ARCHS },
  width: { kind: "int", min: 1 },
  "small-stem": { kind: "bool" },
  "image-size": { kind: "int", min: 8 },
  "eval-size": { kind: "int", min: 8 },
  epochs: { kind: "int", min: 1 },
  "start-epoch": { kind: "int", min: 0 },
  "batch-size": { short: "b", kind: "int", min: 2 },
  lr: { kind: "number", min: 0, exclusiveMin: true, meta: "LR" },
  momentum: {
    kind: "number",
    min: 0,
    max: 1,
    exclusiveMax: true,
    meta: "M",
  },
  wd: { kind: "number", min: 0, meta: "W" },
  resume: { kind: "string", meta: "PATH" },
  out: { kind: "string", meta: "DIR" },
  overwrite: { kind: "bool" },
  seed: { kind: "int", min: 0, help: "random seed (default 0)" },
  workers: {
    short: "j",
    kind: "int",
    min: 0,
    help: "data-loading worker threads (default 2; at most the CPU cores)",
  },
  "print-freq": {
    short: "p",
    kind: "int",
    min: 1,
    help: "progress line every N iterations (default 10)",
  },
  device: {
    kind: "string",
    meta: "DEV",
    help: "cpu or cuda[:N] (default cpu)",
    parse: chooseDevice,
  },
  tensorboard: { kind: "bool" },
  tf32: {
    kind: "bool",
    help:
      "TF32 tensor cores for GEMM and convolutions (CUDA; default exact float32)",
  },
  deterministic: {
    kind: "bool",
    help:
      "deterministic convolution algorithms, for a bit-exact --resume (CUDA)",
  },
  help: { short: "h", kind: "bool", help: "show this help" },
} as const satisfies Record<
  string,
  Omit<FlagSpec, "name" | "help"> & { help?: string }
>;

/** A flag both tools take, with `help` where its text differs between them. */
export function flag(name: keyof typeof COMMON, help?: string): FlagSpec {
  const common: Omit<FlagSpec, "name" | "help"> & { help?: string } =
    COMMON[name];
  const text = help ?? common.help;
  if (text === undefined) {
    throw new Error(`The flag --${name} needs the tool's own help text.`);
  }
  return { ...common, name, help: text };
}

/** Parsed flags: the values given and the positional arguments. */
export class Flags {
  constructor(
    readonly given: ReadonlyMap<string, FlagValue>,
    readonly positionals: readonly string[],
  ) {}

  has(name: string): boolean {
    return this.given.has(name);
  }
}

/** The help text: usage line, description, then one line per flag. */
export function helpText(
  usage: string,
  description: string,
  specs: readonly FlagSpec[],
): string {
  const rows = specs.map((s) => {
    const names = (s.short ? `-${s.short}, ` : "    ") + `--${s.name}` +
      (s.kind === "bool" ? "" : ` ${s.meta ?? "N"}`);
    return [names, s.help] as const;
  });
  const width = Math.max(...rows.map(([n]) => n.length)) + 2;
  return [
    `usage: ${usage}`,
    "",
    description,
    "",
    "flags:",
    ...rows.map(([n, h]) => `  ${n.padEnd(width)}${h}`),
  ].join("\n");
}

/** A tool's command line: `--help`, the flags by argument field, DATA_DIR. */
export interface Command<A> {
  help: boolean;
  /** The flags given, each under its field ({@link fieldOf}). */
  given: Partial<A>;
  /** The one positional argument, or null. */
  data: string | null;
}

/**
 * Parses a tool's command line: flags as `parseFlags` does, each stored
 * under its argument field, and at most one positional DATA_DIR. `A` is the
 * tool's argument record, whose fields the table's flags name.
 */
export function parseCommand<A>(
  argv: readonly string[],
  specs: readonly FlagSpec[],
): Command<A> {
  const flags = parseFlags(argv, specs);
  if (flags.positionals.length > 1) {
    throw new UsageError(
      `Expected at most one DATA_DIR, got ${flags.positionals.length} arguments: ${
        flags.positionals.join(" ")
      }.`,
    );
  }
  const given: Record<string, FlagValue> = {};
  for (const [name, value] of flags.given) {
    if (name !== "help") given[fieldOf(name)] = value;
  }
  return {
    help: flags.has("help"),
    given: given as Partial<A>,
    data: flags.positionals[0] ?? null,
  };
}

/**
 * Parses `args` against the table. Unknown flags, missing values and values
 * of the wrong kind or range are UsageErrors naming the flag.
 */
export function parseFlags(
  args: readonly string[],
  specs: readonly FlagSpec[],
): Flags {
  const options: Record<
    string,
    { type: "string" | "boolean"; short?: string }
  > = {};
  for (const s of specs) {
    options[s.name] = {
      type: s.kind === "bool" ? "boolean" : "string",
      ...(s.short ? { short: s.short } : {}),
    };
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options,
      allowPositionals: true,
      // --no-knn turns off a switch that a default (the demo's) turned on.
      allowNegative: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError(parseArgsMessage(e));
  }
  const given = new Map<string, FlagValue>();
  for (const s of specs) {
    const raw = (parsed.values as Record<string, string | boolean | undefined>)[
      s.name
    ];
    if (raw === undefined) continue;
    given.set(s.name, checkValue(s, raw));
  }
  return new Flags(given, parsed.positionals);
}

function checkValue(s: FlagSpec, raw: string | boolean): FlagValue {
  if (s.kind === "bool") return raw === true;
  const text = String(raw);
  if (s.kind === "string") return checkSetting(s, text);
  const value = text.trim() === "" ? NaN : Number(text);
  return checkNumber(s, value, text);
}

/**
 * Checks a value against its flag's kind, choices and range, whether it came
 * from the command line or from a checkpoint's record of the flags, so both
 * are held to the same rules; returns it, or throws a UsageError naming the
 * flag ("--arch must be one of ..., not "resnet7".").
 */
export function checkSetting(s: FlagSpec, value: unknown): FlagValue {
  const shown = typeof value === "string"
    ? `"${value}"`
    : JSON.stringify(value) ?? String(value);
  switch (s.kind) {
    case "bool":
      if (typeof value !== "boolean") {
        throw new UsageError(
          `--${s.name} must be true or false, not ${shown}.`,
        );
      }
      return value;
    case "string":
      if (typeof value !== "string") {
        throw new UsageError(`--${s.name} must be a string, not ${shown}.`);
      }
      if (s.choices && !s.choices.includes(value)) {
        throw new UsageError(
          `--${s.name} must be one of ${s.choices.join(", ")}, not ${shown}.`,
        );
      }
      return s.parse ? s.parse(value) : value;
    default:
      return checkNumber(
        s,
        typeof value === "number" ? value : NaN,
        typeof value === "number" ? String(value) : shown,
      );
  }
}

function checkNumber(s: FlagSpec, value: number, text: string): number {
  const what = s.kind === "int" ? "an integer" : "a number";
  if (
    !Number.isFinite(value) || (s.kind === "int" && !Number.isInteger(value))
  ) {
    throw new UsageError(`--${s.name} must be ${what}, not ${quoted(text)}.`);
  }
  if (
    s.min !== undefined &&
    (s.exclusiveMin ? !(value > s.min) : !(value >= s.min))
  ) {
    throw new UsageError(
      `--${s.name} must be ${
        s.exclusiveMin ? "above" : "at least"
      } ${s.min}, not ${text}.`,
    );
  }
  // Integers past 2^53 are not exact: 1e20 + 1 === 1e20.
  const max = s.max ??
    (s.kind === "int" ? Number.MAX_SAFE_INTEGER : Infinity);
  if (s.exclusiveMax ? !(value < max) : !(value <= max)) {
    throw new UsageError(
      `--${s.name} must be ${
        s.exclusiveMax ? "below" : "at most"
      } ${max}, not ${text}.`,
    );
  }
  return value;
}

/** A flag's text as the user typed it: quoted unless it reads as a number. */
function quoted(text: string): string {
  return text.startsWith('"') ? text : `"${text}"`;
}

/** parseArgs's TypeErrors, rephrased as one sentence about the flag. */
function parseArgsMessage(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `Unknown flag ${unknown[1]}; see --help.`;
  const missing = /Option '([^']+)' argument missing/.exec(message);
  if (missing) {
    return `The flag ${missing[1].replace(/^-\w, /, "")} needs a value.`;
  }
  const ambiguous = /Option '([^']+)' argument is ambiguous/.exec(message);
  if (ambiguous) {
    const flag = ambiguous[1].replace(/^-\w, /, "");
    return `The value after ${flag} looks like a flag; write ${flag}=VALUE for a negative number.`;
  }
  const bool = /Option '([^']+)' does not take an argument/.exec(message);
  if (bool) return `The flag ${bool[1].replace(/^-\w, /, "")} takes no value.`;
  return firstLine(message);
}

/**
 * The flags a checkpoint recorded, held to the rules of the flag table:
 * each field a flag sets is checked by {@link checkSetting} (null is
 * allowed for the fields in `nullable`), fields no flag sets are left out,
 * and the first bad value is an Error (exit 1) naming the checkpoint and the
 * flag.
 */
export function recordedSettings<A>(
  recorded: unknown,
  specs: readonly FlagSpec[],
  path: string,
  nullable: readonly (keyof A & string)[] = [],
): Partial<A> {
  if (typeof recorded !== "object" || recorded === null) {
    throw new Error(
      `The checkpoint ${path} has no record of the flags it was made with.`,
    );
  }
  const r = recorded as Record<string, unknown>;
  const out: Record<string, FlagValue | null> = {};
  for (const s of specs) {
    const field = fieldOf(s.name);
    if (s.name === "help" || !Object.hasOwn(r, field)) continue;
    const value = r[field];
    if (value === null && (nullable as readonly string[]).includes(field)) {
      out[field] = null;
      continue;
    }
    try {
      out[field] = checkSetting(s, value);
    } catch (e) {
      throw new Error(
        `The checkpoint ${path} records a setting the flags do not allow: ${
          (e as Error).message.replace(/\.$/, "")
        }.`,
      );
    }
  }
  return out as Partial<A>;
}
