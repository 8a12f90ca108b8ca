/** What the end-to-end tests of the tools share: paths, images, permissions. */

/** The repository's root folder, with a trailing slash. */
export const ROOT: string = new URL("..", import.meta.url).pathname;
/** The committed fixtures. */
export const FIXTURES: string =
  new URL("./fixtures/", import.meta.url).pathname;
/** Real JPEGs of several kinds, for small class folders. */
export const JPEGS: readonly string[] = [
  "go-image/video-001.jpeg",
  "go-image/video-001.q50.420.jpeg",
  "go-image/video-001.progressive.jpeg",
  "go-image/video-005.gray.jpeg",
  "go-image/video-001.q50.444.jpeg",
  "go-image/video-001.rgb.jpeg",
  "photo/coffee-500x375.jpg",
  "go-image/video-001.q50.422.jpeg",
];
/** The permissions of the tools' tasks in deno.json. */
export const PERMISSIONS: readonly string[] = [
  "--allow-read",
  "--allow-write",
  "--allow-ffi",
  "--allow-env",
  "--allow-sys=systemMemoryInfo,hostname",
];

/**
 * `<root>/{train,val}/{a,b}/img<i>.jpg`: the {@link JPEGS}, alternating
 * between the two classes, in both splits.
 */
export async function makeImageFolders(root: string): Promise<void> {
  for (const split of ["train", "val"]) {
    for (const [i, file] of JPEGS.entries()) {
      const dir = `${root}/${split}/${i % 2 === 0 ? "a" : "b"}`;
      await Deno.mkdir(dir, { recursive: true });
      await Deno.copyFile(`${FIXTURES}${file}`, `${dir}/img${i}.jpg`);
    }
  }
}

/**
 * A tiny network and schedule for the tools: a ResNet-18 of width 4 on
 * 16 px views, batch 4, two epochs with one of warm-up, one worker. With
 * the 8 images of {@link makeImageFolders}, an epoch is two iterations.
 * A flag given again after it replaces its value (`[...TINY, "-j", "0"]`).
 */
export const TINY: readonly string[] = [
  "--arch",
  "resnet18",
  "--width",
  "4",
  "--small-stem",
  "--image-size",
  "16",
  "--dim",
  "16",
  "--pred-dim",
  "8",
  "-b",
  "4",
  "--epochs",
  "2",
  "--warmup-epochs",
  "1",
  "-j",
  "1",
];

/** What a program run as a subprocess left: its exit code and output. */
export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The environment of tool runs that must repeat bit for bit: a fixed thread
 * count, since a count that follows the machine's load (cpu/threads.ts)
 * changes float32 rounding when the load changes between the runs.
 */
export const FIXED_THREADS: Readonly<Record<string, string>> = {
  MEC_THREADS: String(navigator.hardwareConcurrency),
};

/**
 * Runs `deno run` with the tools' {@link PERMISSIONS} on `script` (relative
 * to the repository root) and `args`, without colours, with `env` added.
 */
export async function runDeno(
  script: string,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, script, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}
