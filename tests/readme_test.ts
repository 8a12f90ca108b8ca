import { assert } from "./assert.ts";

Deno.test("the README's TypeScript example type-checks and runs", async () => {
  const readme = await Deno.readTextFile(
    new URL("../README.md", import.meta.url),
  );
  const block = readme.match(/```ts\n([\s\S]*?)```/);
  assert.ok(block, "README.md has a ```ts block");
  const mod = new URL("../mod.ts", import.meta.url).href;
  const code = block[1].replaceAll('"./mod.ts"', JSON.stringify(mod)) +
    "\nconsole.log(JSON.stringify({ loss, w: w.grad?.shape, fc: fc.grad?.shape }));\n";
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/example.ts`;
    await Deno.writeTextFile(file, code);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--check",
        "--allow-ffi",
        "--allow-env",
        "--allow-read",
        file,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const result = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.ok(Number.isFinite(result.loss));
    assert.deepEqual(result.w, [16, 3, 3, 3]);
    assert.deepEqual(result.fc, [10, 1024]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
