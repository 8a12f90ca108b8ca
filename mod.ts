/**
 * deno-mec: Maximum Entropy Coding pretraining of ResNet encoders, and linear
 * probing, in TypeScript on Deno.
 *
 * ```ts
 * import { Generator, matmul, randn, scope, sum, useDevice } from "./mod.ts";
 *
 * await useDevice("cpu"); // loads the CPU plug-in; the default device is "cpu"
 * const gen = new Generator(0);
 * const w = randn([3, 4], gen, { requiresGrad: true });
 * const loss = scope(() => sum(matmul(randn([2, 3], gen), w)));
 * loss.backward();
 * console.log(w.grad?.shape); // [3, 4]
 * ```
 *
 * @module
 */

export * from "./nn/mod.ts";
export * from "./mec/mod.ts";
export * from "./data/mod.ts";
