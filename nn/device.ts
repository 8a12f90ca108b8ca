/**
 * Devices by name. Backends register themselves here; nn/ never imports a
 * particular backend, so a CPU-only program never loads a GPU library.
 *
 * @module
 */

import type { Backend } from "./backend.ts";

const factories = new Map<string, () => Backend>();
const instances = new Map<string, Backend>();
let defaultName = "cpu";

/**
 * Makes a backend available under `kind` ("cpu", "cuda"). The factory runs on
 * first use and receives nothing: device indices are parsed by the factory
 * registered for "cuda:N" names through `registerDevice("cuda:1", ...)`.
 */
export function registerDevice(name: string, factory: () => Backend): void {
  factories.set(name, factory);
}

/** The backend for a device name such as "cpu"; created on first use. */
export function device(name: string = defaultName): Backend {
  const have = instances.get(name);
  if (have) return have;
  const factory = factories.get(name);
  if (!factory) {
    const known = [...factories.keys()].join(", ") || "none";
    throw new Error(
      `unknown device "${name}" (devices available: ${known})`,
    );
  }
  const backend = factory();
  instances.set(name, backend);
  return backend;
}

/** Sets the device that tensor factories use when none is given. */
export function setDefaultDevice(name: string): void {
  device(name);
  defaultName = name;
}

/** The name of the default device. */
export function defaultDevice(): string {
  return defaultName;
}
