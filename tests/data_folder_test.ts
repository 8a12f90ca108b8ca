/**
 * ImageFolder on trees of real JPEG files made in a temporary folder:
 * torchvision's classes, labels and order, the cached index, and one-sentence
 * errors for bad input.
 */

import { join } from "node:path";
import { imageFolder } from "../data/folder.ts";
import { assert } from "./assert.ts";

const GO = new URL("./fixtures/go-image/", import.meta.url);

/** Writes `files` (relative path -> fixture name) under a new temp folder. */
async function tree(files: Record<string, string>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "data_folder_test_" });
  for (const [path, fixture] of Object.entries(files)) {
    const target = join(root, path);
    await Deno.mkdir(join(target, ".."), { recursive: true });
    await Deno.copyFile(new URL(fixture, GO), target);
  }
  return root;
}

async function rejects(promise: Promise<unknown>, pattern: RegExp) {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.match(e.message, pattern);
    // One sentence: no stack-trace-like or multi-line text.
    assert.ok(!e.message.includes("\n"), e.message);
    return true;
  });
}

Deno.test("imageFolder() finds torchvision's classes, labels and order", async () => {
  const root = await tree({
    "zebra/b.jpg": "video-001.jpeg",
    "zebra/a.JPEG": "video-001.q50.420.jpeg",
    "ant/x.jpeg": "video-005.gray.jpeg",
    "ant/sub/y.jpg": "video-001.cmyk.jpeg",
    "ant/notes.txt": "video-001.png",
    "Bee/p.png": "video-001.png",
    "Bee/q.Jpg": "video-001.rgb.jpeg",
  });
  await Deno.writeTextFile(join(root, "README"), "not a class");
  try {
    const folder = await imageFolder(root);
    // Sorted by code point: capitals first, as Python sorts.
    assert.deepEqual(folder.classes, ["Bee", "ant", "zebra"]);
    assert.equal(folder.length, 6);
    assert.deepEqual(folder.counts(), [2, 2, 2]);
    const listed = Array.from({ length: folder.length }, (_, i) => [
      folder.name(i),
      folder.label(i),
    ]);
    assert.deepEqual(listed, [
      ["Bee/p.png", 0],
      ["Bee/q.Jpg", 0],
      ["ant/x.jpeg", 1],
      ["ant/sub/y.jpg", 1],
      ["zebra/a.JPEG", 2],
      ["zebra/b.jpg", 2],
    ]);
    const source = await folder.source(5);
    assert.equal(source.kind, "encoded");
    assert.equal(folder.path(5), join(root, "zebra/b.jpg"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("imageFolder() reuses its index file until a class folder changes", async () => {
  const root = await tree({
    "a/1.jpg": "video-001.jpeg",
    "b/2.jpg": "video-001.jpeg",
  });
  const index = join(root, "..", `${root.split("/").pop()}.index.json`);
  try {
    const first = await imageFolder(root, { index });
    assert.equal(first.fromIndex, false);
    const second = await imageFolder(root, { index });
    assert.equal(second.fromIndex, true);
    assert.deepEqual(second.classes, first.classes);
    assert.equal(second.name(1), "b/2.jpg");
    // A new file changes its folder's time; make sure the clock moved.
    await Deno.copyFile(new URL("video-001.jpeg", GO), join(root, "b/3.jpg"));
    const later = new Date(Date.now() + 5000);
    await Deno.utime(join(root, "b"), later, later);
    const third = await imageFolder(root, { index });
    assert.equal(third.fromIndex, false);
    assert.equal(third.length, 3);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(index).catch(() => {});
  }
});

Deno.test("imageFolder() explains a missing, empty or image-less folder in one sentence", async () => {
  const root = await Deno.makeTempDir({ prefix: "data_folder_test_" });
  try {
    await rejects(
      imageFolder(join(root, "nope")),
      /^The data folder .*nope does not exist\.$/,
    );
    await rejects(
      imageFolder(root),
      /^The data folder .* has no class folders: expected .*<class>/,
    );
    await Deno.writeTextFile(join(root, "file.txt"), "x");
    await rejects(imageFolder(join(root, "file.txt")), /is not a folder\.$/);
    await Deno.mkdir(join(root, "cats"));
    await Deno.mkdir(join(root, "dogs"));
    await Deno.copyFile(
      new URL("video-001.jpeg", GO),
      join(root, "dogs/d.jpg"),
    );
    await Deno.writeTextFile(join(root, "cats/readme.txt"), "no images");
    await rejects(
      imageFolder(root),
      /^The class folder .*cats has no images \(\.jpg, \.jpeg, \.png\)\.$/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("imageFolder() lists special files and broken links named like images, and source() refuses each in one phrase without blocking", async () => {
  const root = await tree({
    "a/1.jpg": "video-001.jpeg",
    "b/2.jpg": "video-001.jpeg",
  });
  try {
    await Deno.symlink("loop.jpg", join(root, "a/loop.jpg"));
    await Deno.symlink("nowhere.jpg", join(root, "a/dangling.jpg"));
    await Deno.symlink("/dev/zero", join(root, "b/zero.jpg"));
    const fifo = await new Deno.Command("mkfifo", {
      args: [join(root, "b/pipe.jpg")],
    }).output().then((o) => o.success, () => false);
    // A self-looping link used to stop the listing with ELOOP.
    const folder = await imageFolder(root);
    const reasons = new Map<string, string>();
    for (let i = 0; i < folder.length; i++) {
      await folder.source(i).then(
        () => reasons.set(folder.name(i), "ok"),
        (e: Error) => reasons.set(folder.name(i), e.message),
      );
    }
    assert.deepEqual(Object.fromEntries(reasons), {
      "a/1.jpg": "ok",
      "a/dangling.jpg": "No such file or directory (os error 2)",
      "a/loop.jpg": "Too many levels of symbolic links (os error 40)",
      "b/2.jpg": "ok",
      ...(fifo
        ? { "b/pipe.jpg": "it is a FIFO (named pipe), not a regular file" }
        : {}),
      "b/zero.jpg": "it is a character device, not a regular file",
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
