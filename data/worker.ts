/**
 * The loader's worker: runs the batch jobs it is sent and sends the arrays
 * back transferred, not copied. Started by {@link DataLoader} as a module
 * worker; it inherits the main thread's permissions (file reads for
 * ImageFolder happen in the main thread, so it needs none of its own).
 *
 * @module
 */

import { type BatchJob, BatchRunner } from "./task.ts";

/** The part of a worker's global scope used here. */
interface WorkerScope {
  onmessage: ((event: MessageEvent<BatchJob>) => void) | null;
  postMessage(message: unknown, transfer: Transferable[]): void;
}

const scope = globalThis as unknown as WorkerScope;
const runner = new BatchRunner();

scope.onmessage = (event) => {
  const job = event.data;
  try {
    const result = runner.run(job);
    scope.postMessage(
      { ok: true, result },
      result.views.map((v) => v.buffer as ArrayBuffer),
    );
  } catch (e) {
    const message = e instanceof Error ? `${e.message}\n${e.stack}` : String(e);
    scope.postMessage({ ok: false, id: job.id, message }, []);
  }
};
