import { CpuBackend } from "../cpu/backend.ts";
import { formatProfile, Profiler } from "../nn/profile.ts";
import { assert } from "./assert.ts";

Deno.test("Profiler counts each op's kind, calls and bytes, and the peak of live bytes", () => {
  const profiler = new Profiler();
  const be = profiler.wrap(new CpuBackend());
  const keep = be.alloc(100);
  profiler.begin();
  const x = be.alloc(1000);
  const y = be.alloc(1000);
  be.fill({ y: x, value: 2 });
  be.reluForward({ x, y, length: 1000 });
  be.reluForward({ x, y, length: 10 });
  be.free(x);
  const z = be.alloc(500);
  be.gemm({
    transA: false,
    transB: false,
    m: 2,
    n: 3,
    k: 4,
    alpha: 1,
    a: z,
    aOffset: 0,
    lda: 4,
    b: z,
    bOffset: 8,
    ldb: 3,
    beta: 0,
    c: z,
    cOffset: 20,
    ldc: 3,
  });
  be.free(y);
  be.free(z);
  const p = profiler.end();
  const kind = (k: string) => p.kinds.find((r) => r.kind === k);
  // Two ReLUs: x and y of 1000 elements, then of 10, 4 bytes each.
  assert.equal(kind("relu")?.calls, 2);
  assert.equal(kind("relu")?.bytes, 4 * (2000 + 20));
  assert.equal(kind("elementwise")?.bytes, 4 * 1000);
  // A, B and a C that is only written (beta 0).
  assert.equal(kind("gemm")?.bytes, 4 * (8 + 12 + 6));
  assert.equal(kind("allocation")?.calls, 6);
  assert.equal(kind("conv fwd"), undefined);
  // The peak: the kept 100 plus x and y; z came after x was freed.
  assert.equal(p.peakLiveBytes, 4 * 2100);
  assert.equal(p.liveBytes, 4 * 100);
  assert.equal(p.cachedBytes, 4 * 2500);
  assert.ok(p.rssBytes > 0 && p.wallMs >= 0);
  const text = formatProfile(p, "test");
  assert.match(text, /^test: \d+\.\d{3} s$/m);
  assert.match(text, /^ {2}relu +\d+\.\d +\d+\.\d% +2 +0 /m);
  assert.match(text, /peak live 0 MB, live 0 MB, cached 0 MB, resident \d+ MB/);
  be.free(keep);
});

Deno.test("a wrapped backend still runs its ops and reads back the same values", () => {
  const profiler = new Profiler();
  const plain = new CpuBackend();
  const be = profiler.wrap(plain);
  assert.ok(be instanceof CpuBackend);
  const x = be.alloc(4);
  be.write(x, Float32Array.from([-1, 2, -3, 4]));
  be.reluForward({ x, y: x, length: 4 });
  assert.deepEqual([...be.read(x)], [0, 2, 0, 4]);
  assert.equal(be.memory().allocated, 16);
  be.free(x);
});
