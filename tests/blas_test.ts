import { runWith } from "./subprocess.ts";
import { blas } from "../cpu/mod.ts";
import { assert } from "./assert.ts";

const blasModule = new URL("../cpu/blas.ts", import.meta.url).href;

Deno.test("a missing BLAS library gives one sentence naming it and the package", async () => {
  const r = await runWith(
    { MEC_BLAS: "/nonexistent/libcblas.so" },
    `import { blas } from "${blasModule}"; try { blas(); } catch (e) { console.error(e.message); Deno.exit(3); }`,
  );
  assert.equal(r.code, 3);
  assert.match(
    r.stderr,
    /MEC_BLAS names "\/nonexistent\/libcblas.so", which could not be loaded; install OpenBLAS \(Debian\/Ubuntu: apt-get install libopenblas0-pthread\)/,
  );
});

Deno.test("MEC_BLAS_THREADS sets OpenBLAS's thread count and rejects nonsense", async () => {
  const ok = await runWith(
    { MEC_BLAS_THREADS: "1" },
    `import { blas } from "${blasModule}"; console.log(blas().threads());`,
  );
  assert.equal(ok.stdout.trim(), "1");
  const bad = await runWith(
    { MEC_BLAS_THREADS: "two" },
    `import { blas } from "${blasModule}"; try { blas(); } catch (e) { console.error(e.message); Deno.exit(3); }`,
  );
  assert.match(
    bad.stderr,
    /MEC_BLAS_THREADS must be a positive integer, got "two"/,
  );
});

Deno.test("MEC_THREADS sets one count for OpenBLAS and oneDNN's OpenMP, over MEC_BLAS_THREADS, and rejects nonsense", async () => {
  const dnnlModule = new URL("../cpu/dnnl.ts", import.meta.url).href;
  const code = `import { blas } from "${blasModule}";
    import { tryDnnl } from "${dnnlModule}";
    tryDnnl();
    console.log(blas().threads(), Deno.env.get("OMP_NUM_THREADS"));`;
  const one = await runWith({ MEC_THREADS: "1", MEC_BLAS_THREADS: "2" }, code);
  assert.equal(one.stdout.trim(), "1 1");
  const user = await runWith({ MEC_THREADS: "1", OMP_NUM_THREADS: "2" }, code);
  assert.equal(user.stdout.trim(), "1 2");
  const bad = await runWith(
    { MEC_THREADS: "0" },
    `import { blas } from "${blasModule}"; try { blas(); } catch (e) { console.error(e.message); Deno.exit(3); }`,
  );
  assert.equal(bad.code, 3);
  assert.equal(
    bad.stderr.trim(),
    'MEC_THREADS must be a positive integer, got "0"',
  );
});

Deno.test("oneDNN's OpenMP threads poll briefly before sleeping unless the user chose a wait policy", async () => {
  const dnnlModule = new URL("../cpu/dnnl.ts", import.meta.url).href;
  const code = `import { tryDnnl } from "${dnnlModule}";
    tryDnnl();
    console.log(Deno.env.get("GOMP_SPINCOUNT") ?? "unset");`;
  const unset = { GOMP_SPINCOUNT: "", OMP_WAIT_POLICY: "" };
  assert.equal((await runWith(unset, code)).stdout.trim(), "10000");
  const count = await runWith({ ...unset, GOMP_SPINCOUNT: "5" }, code);
  assert.equal(count.stdout.trim(), "5");
  const policy = await runWith({ ...unset, OMP_WAIT_POLICY: "active" }, code);
  assert.equal(policy.stdout.trim(), "");
});

Deno.test("a GEMM too small to split runs on one thread and leaves the pool's count as it was", async () => {
  const r = await runWith(
    { MEC_THREADS: "2" },
    `import { blas } from "${blasModule}";
    const b = blas();
    const a = Float32Array.of(1, 2, 3, 4);
    const c = new Float32Array(4);
    b.sgemm(false, false, 2, 2, 2, 1, a, 2, a, 2, 0, c, 2);
    console.log([...c].join(","), b.threads());`,
  );
  assert.equal(r.stdout.trim(), "7,10,15,22 2");
});

Deno.test("sgemm() through FFI computes row-major products with transposes and beta", () => {
  const b = blas();
  const a = Float32Array.of(1, 2, 3, 4, 5, 6); // 2x3
  const m = Float32Array.of(1, 0, 0, 1, 1, 1); // 3x2
  const c = Float32Array.of(1, 1, 1, 1);
  b.sgemm(false, false, 2, 2, 3, 1, a, 3, m, 2, 1, c, 2);
  assert.deepEqual([...c], [1 + 1 + 3, 1 + 2 + 3, 1 + 4 + 6, 1 + 5 + 6]);
  const t = new Float32Array(4);
  b.sgemm(false, true, 2, 2, 3, 2, a, 3, a, 3, 0, t, 2); // 2 * A A^T
  assert.deepEqual([...t], [28, 64, 64, 154]);
});

Deno.test("OpenBLAS's idle threads spin briefly unless the user says otherwise", async () => {
  const code =
    `import { blas } from "${blasModule}"; blas(); console.log(Deno.env.get("OPENBLAS_THREAD_TIMEOUT"));`;
  assert.equal((await runWith({}, code)).stdout.trim(), "4");
  assert.equal(
    (await runWith({ OPENBLAS_THREAD_TIMEOUT: "20" }, code)).stdout.trim(),
    "20",
  );
});
