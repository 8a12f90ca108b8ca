/**
 * Recording a backend's optimiser calls: the ops still run, and each call is
 * recorded with its arguments per backend, so a test can say how many
 * launches a step makes and over which tensors.
 *
 * @module
 */

import type {
  AxpbyArgs,
  AxpbyManyArgs,
  Backend,
  LarsAdaptArgs,
  SgdUpdateArgs,
  SgdUpdateManyArgs,
} from "../nn/backend.ts";

/** The ops recorded, with their arguments. */
export interface RecordedArgs {
  sgdUpdate: SgdUpdateArgs;
  sgdUpdateMany: SgdUpdateManyArgs;
  larsAdapt: LarsAdaptArgs;
  axpby: AxpbyArgs;
  axpbyMany: AxpbyManyArgs;
}

export type RecordedOp = keyof RecordedArgs;

export const RECORDED_OPS: readonly RecordedOp[] = [
  "sgdUpdate",
  "sgdUpdateMany",
  "larsAdapt",
  "axpby",
  "axpbyMany",
];

/** One call: the op and its arguments. */
export type Call = {
  [K in RecordedOp]: { op: K; args: RecordedArgs[K] };
}[RecordedOp];

/** Calls of each recorded op. */
export type Counts = Record<RecordedOp, number>;

/**
 * Runs `run` with each backend's recorded ops wrapped (as own properties of
 * the backend object, put back as they were afterwards, even on a throw)
 * and returns the calls made on each backend, in order.
 */
export function recordCalls(
  backends: readonly Backend[],
  run: () => void,
): Map<Backend, Call[]> {
  const calls = new Map<Backend, Call[]>();
  /** What to put back: the backend, the op, and its own method if it had one. */
  const patched: [Backend, RecordedOp, unknown][] = [];
  try {
    for (const backend of backends) {
      if (calls.has(backend)) continue;
      const list: Call[] = [];
      calls.set(backend, list);
      const methods = backend as unknown as Record<
        RecordedOp,
        (args: unknown) => void
      >;
      for (const op of RECORDED_OPS) {
        const original = methods[op];
        const own = Object.hasOwn(backend, op) ? original : undefined;
        methods[op] = (args) => {
          list.push({ op, args } as Call);
          original.call(backend, args);
        };
        patched.push([backend, op, own]);
      }
    }
    run();
  } finally {
    for (const [backend, op, own] of patched) {
      if (own === undefined) Reflect.deleteProperty(backend, op);
      else Reflect.set(backend, op, own);
    }
  }
  return calls;
}

/** How many calls of each op a list holds. */
export function counts(calls: readonly Call[] = []): Counts {
  const c = only({});
  for (const call of calls) c[call.op]++;
  return c;
}

/** Counts with every op at 0 but those given. */
export function only(given: Partial<Counts>): Counts {
  const c = Object.fromEntries(RECORDED_OPS.map((op) => [op, 0])) as Counts;
  return { ...c, ...given };
}
