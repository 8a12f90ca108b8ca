/**
 * Devices by name, as plug-ins. `useDevice("cuda:0")` loads the module of the
 * device's kind with a dynamic import on first use and opens the backend, so
 * nn/ never imports a particular backend and a CPU-only program never loads a
 * GPU library. Each plug-in module (cpu/mod.ts, cuda/mod.ts) exports
 * {@linkcode DevicePlugin.openBackend}.
 *
 * ```ts
 * import { device, setDefaultDevice, useDevice, zeros } from "../mod.ts";
 *
 * await useDevice("cpu");
 * setDefaultDevice("cpu");
 * console.log(zeros([2, 3]).device, device().name); // cpu cpu
 * ```
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { envProfiler } from "./profile.ts";

/** What a device plug-in module exports. */
export interface DevicePlugin {
  /**
   * Opens the backend of a device of the plug-in's kind, given its normalised
   * name ("cpu", "cuda:0", "cuda:1", ...). Synchronous; throws an Error with
   * one clear sentence when the device cannot be used (no driver, no such
   * GPU, a library missing).
   */
  openBackend(name: string): Backend;
}

/** The kinds of device there are plug-ins for. */
type DeviceKind = "cpu" | "cuda";

const VALID_NAMES = `"cpu", "cuda" (the same as "cuda:0") and "cuda:N"`;

/** The plug-in modules by kind, each imported once. */
const plugins = new Map<DeviceKind, Promise<DevicePlugin>>();
/** Opened backends by normalised name. */
const instances = new Map<string, Backend>();
/** Backends being opened, so that concurrent calls open one. */
const opening = new Map<string, Promise<Backend>>();
let defaultName = "cpu";

/**
 * The normalised name and kind of a device name: "cpu", "cuda" (which is
 * "cuda:0") or "cuda:N". Throws an Error naming the valid names otherwise.
 */
export function parseDeviceName(
  name: string,
): { name: string; kind: DeviceKind } {
  if (name === "cpu") return { name, kind: "cpu" };
  const cuda = /^cuda(?::(\d+))?$/.exec(name);
  if (cuda) return { name: `cuda:${Number(cuda[1] ?? 0)}`, kind: "cuda" };
  throw new Error(
    `unknown device "${name}"; valid names are ${VALID_NAMES}`,
  );
}

/** The plug-in module of a kind; the literal paths keep the graph static. */
function plugin(kind: DeviceKind): Promise<DevicePlugin> {
  let loaded = plugins.get(kind);
  if (loaded === undefined) {
    const imported: Promise<DevicePlugin> = kind === "cpu"
      ? import("../cpu/mod.ts")
      : import("../cuda/mod.ts");
    loaded = imported.catch((e) => {
      // A plug-in that failed to load is imported again by the next call.
      plugins.delete(kind);
      const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
      const message = `the ${kind} device plug-in could not be loaded: ${why}`;
      throw new Error(message, { cause: e });
    });
    plugins.set(kind, loaded);
  }
  return loaded;
}

/**
 * Loads and opens a device ("cpu", "cuda", "cuda:N") and returns its backend;
 * later calls, and `device(name)`, return the same one. The plug-in's module
 * is imported on the first call for its kind. Rejects with the plug-in's
 * Error when the device cannot be used (the next call tries again), and with
 * an Error naming the valid names for any other name.
 */
export async function useDevice(name: string): Promise<Backend> {
  const parsed = parseDeviceName(name);
  const have = instances.get(parsed.name);
  if (have) return have;
  let pending = opening.get(parsed.name);
  if (pending === undefined) {
    pending = (async () => {
      try {
        const opened = (await plugin(parsed.kind)).openBackend(parsed.name);
        // MEC_PROFILE: every op of the device is timed and counted.
        const backend = envProfiler()?.wrap(opened) ?? opened;
        instances.set(parsed.name, backend);
        return backend;
      } finally {
        opening.delete(parsed.name);
      }
    })();
    opening.set(parsed.name, pending);
  }
  return await pending;
}

/**
 * The backend of a loaded device; the default device when no name is given.
 * Throws if the device has not been loaded by `useDevice`.
 */
export function device(name: string = defaultName): Backend {
  const full = parseDeviceName(name).name;
  const have = instances.get(full);
  if (have) return have;
  throw new Error(
    `device "${full}" is not loaded; call await useDevice("${full}") first`,
  );
}

/**
 * Sets the device that tensor factories use when none is given. The device
 * must have been loaded by `useDevice`.
 */
export function setDefaultDevice(name: string): void {
  device(name);
  defaultName = parseDeviceName(name).name;
}

/** The name of the default device. */
export function defaultDevice(): string {
  return defaultName;
}
