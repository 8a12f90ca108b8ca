/**
 * A tool's `--out` folder: one run's checkpoints, log and TensorBoard event
 * files. A second run given the folder of another would replace its
 * checkpoints and append to its log, mixing two runs, so a folder that
 * already holds a run is refused unless the run continues it (`--resume`)
 * or replaces it (`--overwrite`, which removes only the files this tool
 * writes). Temporary files that an interrupted checkpoint write left are
 * removed first, where they are provably this tool's and stale.
 *
 * @module
 */

import { join } from "node:path";
import { removeStaleTemporaries } from "../nn/safetensors.ts";
import { UsageError } from "./cli.ts";
import { isEventFile } from "./tensorboard.ts";

/** The files a tool writes into its run folder. */
export interface RunFiles {
  /** The log's file name. */
  log: string;
  /** Whether a file name is one of the tool's checkpoints. */
  isCheckpoint: (name: string) => boolean;
  /** The flag that continues a run, with its argument for `path`. */
  resumeHint: (checkpoints: { name: string; mtime: number }[]) => string;
}

/** What {@link inspectRunFolder} found, to act on once the run starts. */
export interface RunFolder {
  dir: string;
  /** The tool's own files in the folder, to remove for --overwrite. */
  replace: string[];
}

/** pretrain's files: `checkpoint_NNNN.safetensors`, `..._partial`, `log.jsonl`. */
export const PRETRAIN_FILES: RunFiles = {
  log: "log.jsonl",
  isCheckpoint: (name) =>
    /^checkpoint_\d{4,}(_partial)?\.safetensors$/.test(name),
  resumeHint: (checkpoints) => {
    const newest = [...checkpoints].sort((a, b) => b.mtime - a.mtime)[0];
    return newest === undefined ? "--resume CKPT" : `--resume ${newest.name}`;
  },
};

/** lincls's files: `probe_last.safetensors`, `probe_best.safetensors`, `log.jsonl`. */
export const LINCLS_FILES: RunFiles = {
  log: "log.jsonl",
  isCheckpoint: (name) => /^probe_(last|best)\.safetensors$/.test(name),
  resumeHint: (checkpoints) => {
    const last = checkpoints.find((c) =>
      c.name.endsWith("probe_last.safetensors")
    );
    return `--resume ${last?.name ?? "probe_last.safetensors"}`;
  },
};

/**
 * Checks the run folder before anything is written: removes stale
 * temporary files of the tool's checkpoints (printing a note), and refuses
 * with a UsageError a folder that holds another run, unless `resume` or
 * `overwrite`. Nothing of the old run is removed here; see
 * {@link startRun}.
 */
export async function inspectRunFolder(
  dir: string,
  files: RunFiles,
  options: { resume: boolean; overwrite: boolean },
): Promise<RunFolder> {
  const removed = await removeStaleTemporaries(dir, files.isCheckpoint);
  if (removed.length > 0) {
    console.log(
      `Removed ${removed.length} stale temporary file${
        removed.length === 1 ? "" : "s"
      } of an interrupted checkpoint write from ${dir}: ${removed.join(", ")}.`,
    );
  }
  const own: string[] = [];
  const checkpoints: { name: string; mtime: number }[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.name === files.log || isEventFile(entry.name)) {
        own.push(entry.name);
      } else if (files.isCheckpoint(entry.name)) {
        own.push(entry.name);
        const info = await Deno.lstat(join(dir, entry.name));
        checkpoints.push({
          name: join(dir, entry.name),
          mtime: info.mtime?.getTime() ?? 0,
        });
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  own.sort();
  if (own.length === 0 || options.resume) return { dir, replace: [] };
  if (options.overwrite) return { dir, replace: own };
  const what = [
    ...(own.includes(files.log) ? [files.log] : []),
    ...(checkpoints.length > 0
      ? [
        `${checkpoints.length} checkpoint${
          checkpoints.length === 1 ? "" : "s"
        }`,
      ]
      : []),
  ].join(" and ") || "TensorBoard event files";
  throw new UsageError(
    `The folder ${dir} already holds a run (${what}); continue it with ${
      files.resumeHint(checkpoints)
    }, replace it with --overwrite, or choose another --out.`,
  );
}

/**
 * Creates the folder and, for --overwrite, removes the old run's files
 * (only those the tool writes), printing what it removed.
 */
export async function startRun(folder: RunFolder): Promise<void> {
  await Deno.mkdir(folder.dir, { recursive: true });
  if (folder.replace.length === 0) return;
  for (const name of folder.replace) {
    await Deno.remove(join(folder.dir, name)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
  console.log(
    `Replacing the previous run: removed its ${
      folder.replace.join(", ")
    } from ${folder.dir}.`,
  );
}
