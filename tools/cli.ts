/**
 * What the command-line tools share besides their flags (tools/flags.ts):
 * exit codes, the device choice, Ctrl-C handling, and the one place that
 * turns an Error into one sentence on stderr and an exit code. Library code
 * throws; only this file exits.
 *
 * @module
 */

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

/** The first line of a message, trimmed. */
export function firstLine(text: string): string {
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
