/**
 * What the command-line tools share: a declarative flag table parsed with
 * `node:util`'s parseArgs and checked value by value, the device choice,
 * and the one place that turns an Error into one sentence on stderr and an
 * exit code. Library code throws; only this file exits.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Backend, BackendOptions } from "../nn/backend.ts";
import { parseDeviceName, setDefaultDevice, useDevice } from "../nn/device.ts";

/** Bad command-line input: exit code 2, as getopt-style tools use. */
export class UsageError extends Error {}

/** Exit codes of the tools. */
export const EXIT = {
  ok: 0,
  /** A run that failed: unreadable data or checkpoint, NaN loss, ... */
  failure: 1,
  usage: 2,
  /** Stopped by Ctrl-C after saving (128 + SIGINT, as shells report it). */
  interrupted: 130,
} as const;

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

/** Flags both tools take, with the same meaning and default. */
export const SHARED_FLAGS = {
  seed: { name: "seed", kind: "int", min: 0, help: "random seed (default 0)" },
  workers: {
    name: "workers",
    short: "j",
    kind: "int",
    min: 0,
    help: "data-loading worker threads (default 2; at most the CPU cores)",
  },
  printFreq: {
    name: "print-freq",
    short: "p",
    kind: "int",
    min: 1,
    help: "progress line every N iterations (default 10)",
  },
  device: {
    name: "device",
    kind: "string",
    meta: "DEV",
    help: "cpu or cuda[:N] (default cpu)",
    parse: chooseDevice,
  },
  tf32: {
    name: "tf32",
    kind: "bool",
    help:
      "TF32 tensor cores for GEMM and convolutions (CUDA; default exact float32)",
  },
  deterministic: {
    name: "deterministic",
    kind: "bool",
    help:
      "deterministic convolution algorithms, for a bit-exact --resume (CUDA)",
  },
} as const satisfies Record<string, FlagSpec>;

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
export interface Command<F extends string> {
  help: boolean;
  given: Partial<Record<F, FlagValue>>;
  /** The one positional argument, or null. */
  data: string | null;
}

/**
 * Parses a tool's command line: flags as `parseFlags` does, each stored
 * under its argument field (`fields` maps flag names to fields), and at most
 * one positional DATA_DIR.
 */
export function parseCommand<F extends string>(
  argv: readonly string[],
  specs: readonly FlagSpec[],
  fields: Record<string, F>,
): Command<F> {
  const flags = parseFlags(argv, specs);
  if (flags.positionals.length > 1) {
    throw new UsageError(
      `Expected at most one DATA_DIR, got ${flags.positionals.length} arguments: ${
        flags.positionals.join(" ")
      }.`,
    );
  }
  const given: Partial<Record<F, FlagValue>> = {};
  for (const [name, value] of flags.given) {
    if (name !== "help") given[fields[name]] = value;
  }
  return { help: flags.has("help"), given, data: flags.positionals[0] ?? null };
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
 * The device name of `--device`, validated and normalised: "cpu", or
 * "cuda:N" for "cuda" (N = 0) or "cuda:N". Whether the device can be used
 * is for `useDevice` to find out.
 */
export function chooseDevice(name: string): string {
  try {
    return parseDeviceName(name).name;
  } catch {
    throw new UsageError(
      `--device must be cpu, cuda or cuda:N, not "${name}".`,
    );
  }
}

/**
 * Opens the device (after the usage checks: a device that cannot be used is
 * a failure, exit 1), makes it the default and applies the numerics flags.
 */
export async function openDevice(
  name: string,
  options: BackendOptions,
): Promise<Backend> {
  const backend = await useDevice(name);
  setDefaultDevice(name);
  backend.configure?.(options);
  return backend;
}

function firstLine(text: string): string {
  return text.split("\n")[0].trim();
}

/** An error as one sentence: first line, capitalised, ending with a stop. */
export function sentence(e: unknown): string {
  let text = firstLine(e instanceof Error ? e.message : String(e));
  if (text === "") text = "An unknown error occurred";
  text = text[0].toUpperCase() + text.slice(1);
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/**
 * Runs a tool's main function and exits with its code, or with one sentence
 * on stderr and a non-zero code if it throws. `MEC_TRACE=1` adds the stack,
 * for whoever debugs the toolkit itself.
 */
export async function runMain(main: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main();
  } catch (e) {
    console.error(sentence(e));
    if (Deno.env.get("MEC_TRACE") === "1" && e instanceof Error) {
      console.error(e.stack);
    }
    code = e instanceof UsageError ? EXIT.usage : EXIT.failure;
  }
  Deno.exit(code);
}

/** Whether a file or folder exists (other stat errors propagate). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * How long after the first Ctrl-C has been acknowledged a second one must
 * come to count. A terminal sends SIGINT to the whole process group, so
 * under `deno task` one key press reaches the tool twice within
 * milliseconds (from the terminal, and again forwarded by `deno task`); a
 * user who presses again on purpose has read the message first.
 */
export const REPEAT_INTERRUPT_MS = 1000;

/**
 * Ctrl-C handling: the first SIGINT sets a flag that the training loop
 * reads after each step (so the step finishes and a checkpoint is saved)
 * and resolves {@link Interrupt.requestedSignal}, so that a loop waiting for
 * data stops waiting; a second one, at least {@link REPEAT_INTERRUPT_MS}
 * after the first was acknowledged, exits at once, for a user who does not
 * want to wait.
 */
export class Interrupt {
  requested = false;
  /** Resolves at the first Ctrl-C. */
  readonly requestedSignal: Promise<void>;
  #resolve!: () => void;
  #acknowledged = 0;
  #handler = () => {
    if (this.requested) {
      if (performance.now() - this.#acknowledged >= REPEAT_INTERRUPT_MS) {
        Deno.exit(EXIT.interrupted);
      }
      return;
    }
    this.requested = true;
    console.error(
      "Interrupted: finishing this step and saving (Ctrl-C again to quit at once).",
    );
    this.#acknowledged = performance.now();
    this.#resolve();
  };

  constructor() {
    this.requestedSignal = new Promise((resolve) => this.#resolve = resolve);
    Deno.addSignalListener("SIGINT", this.#handler);
  }

  [Symbol.dispose](): void {
    Deno.removeSignalListener("SIGINT", this.#handler);
  }
}

/**
 * The flags a checkpoint recorded, held to the rules of the flag table:
 * each field a flag sets is checked by {@link checkSetting} (null is
 * allowed for the fields in `nullable`), fields no flag sets are left out,
 * and the first bad value is an Error (exit 1) naming the checkpoint and the
 * flag.
 */
export function recordedSettings<F extends string>(
  recorded: unknown,
  specs: readonly FlagSpec[],
  fields: Record<string, F>,
  path: string,
  nullable: readonly string[] = [],
): Partial<Record<F, FlagValue | null>> {
  if (typeof recorded !== "object" || recorded === null) {
    throw new Error(
      `The checkpoint ${path} has no record of the flags it was made with.`,
    );
  }
  const r = recorded as Record<string, unknown>;
  const out: Partial<Record<F, FlagValue | null>> = {};
  for (const s of specs) {
    const field = fields[s.name];
    if (field === undefined || !Object.hasOwn(r, field)) continue;
    const value = r[field];
    if (value === null && nullable.includes(field)) {
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
  return out;
}

/**
 * The number of worker threads to start: `-j` capped at the machine's core
 * count (more threads than cores only add memory and switching), with a
 * note on stdout when it was lowered.
 */
export function capWorkers(workers: number): number {
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  if (workers <= cores) return workers;
  console.log(
    `Note: -j ${workers} is more than the ${cores} CPU cores; using ${cores} workers.`,
  );
  return cores;
}
