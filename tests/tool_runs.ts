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
