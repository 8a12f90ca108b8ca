import { assert } from "./assert.ts";

Deno.test("the README's TypeScript example type-checks and runs", async () => {
  const readme = await Deno.readTextFile(
    new URL("../README.md", import.meta.url),
  );
  const block = readme.match(/```ts\n([\s\S]*?)```/);
  assert.ok(block, "README.md has a ```ts block");
  const mod = new URL("../mod.ts", import.meta.url).href;
  const code = block[1].replaceAll('"./mod.ts"', JSON.stringify(mod));
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/example.ts`;
    await Deno.writeTextFile(file, code);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--check",
        // The example lives in a temporary folder: use the project's import map.
        `--config=${new URL("../deno.json", import.meta.url).pathname}`,
        "--allow-ffi",
        "--allow-env",
        "--allow-read",
        "--allow-write",
        file,
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(new TextDecoder().decode(out.stdout), /^loss \d+\.\d{3}\n$/);
    const { loadCheckpoint } = await import("../mod.ts");
    const saved = await loadCheckpoint(`${dir}/resnet18.safetensors`);
    assert.equal(saved.model.size, 122);
    assert.deepEqual(saved.metadata, { step: 1 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
