/** Running code in a fresh Deno process, for tests of loading and env vars. */

/**
 * Runs `code` with `deno eval` (no config) and the given environment, merged
 * with this process's unless `clearEnv`; returns exit code and output.
 */
export async function runWith(
  env: Record<string, string>,
  code: string,
  clearEnv = false,
): Promise<{ code: number; stderr: string; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    env,
    clearEnv,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
    stdout: new TextDecoder().decode(out.stdout),
  };
}
