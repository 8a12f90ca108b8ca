/**
 * Appending to the files a run writes as it goes (log.jsonl, TensorBoard's
 * event files) so that they only ever hold whole records.
 *
 * @module
 */

/** An error's message without its final full stop, to go inside a sentence. */
export function errorText(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).replace(/\.$/, "");
}

/**
 * Appends `bytes` to `file`, which holds `whole` bytes of whole records. One
 * call writes a whole record; a second is only needed after a short write,
 * and on a full disk it fails with the system's reason. A write that fails
 * part-way is cut back to `whole` bytes before the error, which names
 * `what` ("the log runs/demo/log.jsonl"), is thrown.
 */
export function appendWhole(
  file: Deno.FsFile,
  bytes: Uint8Array,
  whole: number,
  what: string,
): void {
  let written = 0;
  try {
    while (written < bytes.length) {
      written += file.writeSync(bytes.subarray(written));
    }
  } catch (e) {
    if (written > 0) {
      try {
        file.truncateSync(whole);
      } catch {
        // Nothing more to do: the error below stops the run.
      }
    }
    throw new Error(`cannot write ${what}: ${errorText(e)}`, { cause: e });
  }
}
