import { assert } from "./assert.ts";
import { runWith } from "./subprocess.ts";
import { chooseThreads } from "../cpu/threads.ts";
import { coresBetween, parseCpuTimes, readCpuTimes } from "../cpu/load.ts";
import { tryDnnl } from "../cpu/dnnl.ts";
import { peakResidentBytes, readProc } from "../nn/proc.ts";

const linux = readCpuTimes() !== null;
const onLinux = linux ? "" : " (skipped: /proc cannot be read here)";
const url = (p: string) => new URL(p, import.meta.url).href;

/** Two cores' counters and a process whose name holds spaces and parens. */
const STAT = `cpu  100 5 50 800 10 2 3 30 0 0
cpu0 50 2 25 400 5 1 1 15 0 0
cpu1 50 3 25 400 5 1 2 15 0 0
intr 12345 0 0
ctxt 999
`;
const SELF =
  "4242 (deno (main) x) R 1 4242 4242 0 -1 4194304 100 0 0 0 37 5 0 0 20 0 9";

Deno.test("/proc's counters parse into busy, total and own ticks, stolen time counted as busy, niced time only when we are niced", () => {
  assert.deepEqual(parseCpuTimes(STAT, SELF), {
    busy: 100 + 50 + 2 + 3 + 30,
    total: 1000,
    self: 37 + 5,
    cores: 2,
  });
  const niced = SELF.replace(" 20 0 9", " 30 10 9");
  assert.equal(parseCpuTimes(STAT, niced)?.busy, 100 + 5 + 50 + 2 + 3 + 30);
  assert.equal(parseCpuTimes("intr 1 2 3\n", SELF), null);
  assert.equal(parseCpuTimes("cpu  1 2 x 4 5 6 7 8\ncpu0 1\n", SELF), null);
  assert.equal(parseCpuTimes(STAT, "4242 (deno) R"), null);
});

Deno.test(
  `/proc reads through libc: this process's peak resident memory is at least what it holds now${onLinux}`,
  {
    ignore: !linux,
  },
  () => {
    const peak = peakResidentBytes();
    assert.ok(
      peak !== null && peak >= Deno.memoryUsage().rss * 0.99,
      `${peak}`,
    );
    assert.match(readProc("/proc/self/stat")!, new RegExp(`^${Deno.pid} \\(`));
    assert.equal(readProc("/proc/no-such-file"), null);
  },
);

Deno.test("the cores other processes kept busy are the machine's busy cores less this process's", () => {
  const a = { busy: 190, total: 1000, self: 40, cores: 2 };
  // 100 ticks of each core elapsed: 1.5 cores busy, 0.5 of them ours.
  const b = { busy: 340, total: 1200, self: 90, cores: 2 };
  assert.deepEqual(coresBetween(a, b), { others: 1, self: 0.5 });
  assert.deepEqual(coresBetween(a, a), { others: 0, self: 0 });
  // Rounding can make ours exceed the machine's: never below zero.
  assert.equal(coresBetween(a, { ...b, busy: 230 }).others, 0);
});

Deno.test("a core counts as taken from 0.6 of it busy, and at least one thread is left", () => {
  const table: [number, number, number][] = [
    [2, 0, 2],
    [2, 0.55, 2],
    [2, 0.65, 1],
    [2, 1, 1],
    [2, 1.9, 1],
    [8, 0.59, 8],
    [8, 0.61, 7],
    [8, 2.1, 6],
    [8, 3.7, 4],
    [1, 5, 1],
  ];
  for (const [max, others, threads] of table) {
    assert.equal(chooseThreads(max, others), threads, `${others} of ${max}`);
  }
});

Deno.test(
  `this process's busy loop counts as its own, another's as others'${onLinux}`,
  {
    ignore: !linux,
  },
  async () => {
    const a = readCpuTimes()!;
    const t0 = performance.now();
    // A core's worth of our own; a shared host may give us part of it.
    while (performance.now() - t0 < 400) { /* spin */ }
    const b = readCpuTimes()!;
    assert.ok(
      coresBetween(a, b).self >= 0.25,
      JSON.stringify(coresBetween(a, b)),
    );
    const hog = new Deno.Command("sh", { args: ["-c", "while :; do :; done"] })
      .spawn();
    try {
      await new Promise((r) => setTimeout(r, 300));
      const c = readCpuTimes()!;
      await new Promise((r) => setTimeout(r, 1000));
      const d = readCpuTimes()!;
      const { others } = coresBetween(c, d);
      assert.ok(others >= 0.5, `others ${others}`);
    } finally {
      hog.kill();
      await hog.status;
    }
  },
);

Deno.test(
  `without MEC_THREADS the pools give a thread to a busy loop and take it back when it ends, and the backend says so${onLinux}`,
  {
    ignore: !linux || tryDnnl() === null,
  },
  async () => {
    const code = `import { adaptThreads, keyForThreads, loadSeen } from "${
      url("../cpu/threads.ts")
    }";
    import { blas } from "${url("../cpu/blas.ts")}";
    import { tryDnnl } from "${url("../cpu/dnnl.ts")}";
    import { CpuBackend } from "${url("../cpu/backend.ts")}";
    tryDnnl();
    const b = blas();
    const backend = new CpuBackend();
    const gomp = Deno.dlopen("libgomp.so.1", {
      omp_get_max_threads: { parameters: [], result: "i32" },
    }).symbols;
    const max = gomp.omp_get_max_threads();
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const state = () => ({
      blas: b.threads(),
      omp: gomp.omp_get_max_threads(),
      key: keyForThreads("k"),
      progress: backend.threadsUnderLoad(),
    });
    // The parent starts a busy loop, then tells us on stdin.
    const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
    const reader = lines.getReader();
    await reader.read();
    let now = 0;
    adaptThreads(now);
    await sleep(1200);
    const busy = adaptThreads(now += 5000);
    const underLoad = state();
    console.log("loaded");
    await reader.read();
    // Each window's count and the load it was chosen from, until all the
    // cores are back (a host whose other tenants keep a core busy keeps
    // the count down, and the windows show why).
    const windows = [];
    let threads = busy;
    for (let i = 0; i < 5 && threads !== max; i++) {
      await sleep(1200);
      threads = adaptThreads(now += 5000) ?? threads;
      windows.push({ threads, others: loadSeen() });
    }
    console.log(JSON.stringify({ max, busy, underLoad, windows, after: state() }));`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", code],
      env: { MEC_THREADS: "", MEC_BLAS_THREADS: "", OMP_NUM_THREADS: "" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let hog: Deno.ChildProcess | null = new Deno.Command("sh", {
      args: ["-c", "while :; do :; done"],
    }).spawn();
    let text = "";
    try {
      await new Promise((r) => setTimeout(r, 300));
      await writer.write(new TextEncoder().encode("go\n"));
      while (!text.includes("loaded")) {
        const { value, done } = await out.read();
        if (done) break;
        text += value;
      }
      hog.kill();
      await hog.status;
      hog = null;
      await writer.write(new TextEncoder().encode("go\n"));
      await writer.close();
      for (;;) {
        const { value, done } = await out.read();
        if (done) break;
        text += value;
      }
    } finally {
      if (hog !== null) {
        hog.kill();
        await hog.status;
      }
      const status = await child.status;
      const stderr = await new Response(child.stderr).text();
      assert.equal(status.code, 0, stderr);
    }
    const r = JSON.parse(text.slice(text.indexOf("{")));
    if (r.max === 1) return; // One core: nothing to give.
    assert.ok(r.busy !== null && r.busy < r.max, JSON.stringify(r));
    const unit = r.busy === 1 ? "thread" : "threads";
    assert.deepEqual(r.underLoad, {
      blas: r.busy,
      omp: r.busy,
      key: `k, ${r.busy} ${unit}`,
      progress: r.busy,
    });
    for (const w of r.windows) {
      assert.equal(
        w.threads,
        chooseThreads(r.max, w.others),
        JSON.stringify(r),
      );
    }
    // A window of others under OTHERS_TAKE ends with all the cores back.
    if (r.windows.at(-1).threads === r.max) {
      assert.deepEqual(r.after, {
        blas: r.max,
        omp: r.max,
        key: "k",
        progress: null,
      });
    }
  },
);

Deno.test("MEC_THREADS fixes the count, busy loop or not", {
  ignore: !linux,
}, async () => {
  const code = `import { adaptThreads } from "${url("../cpu/threads.ts")}";
    adaptThreads(0);
    const t0 = performance.now();
    while (performance.now() - t0 < 300) {}
    console.log(adaptThreads(5000));`;
  const hog = new Deno.Command("sh", { args: ["-c", "while :; do :; done"] })
    .spawn();
  try {
    const fixed: Record<string, string>[] = [
      { MEC_THREADS: "2" },
      { OMP_NUM_THREADS: "2" },
    ];
    for (const env of fixed) {
      const r = await runWith({ MEC_THREADS: "", ...env }, code);
      assert.equal(r.stdout.trim(), "null", r.stderr);
    }
  } finally {
    hog.kill();
    await hog.status;
  }
});

Deno.test("oneDNN's plans are built per thread count and agree across counts", {
  ignore: tryDnnl() === null,
}, async () => {
  const code = `import { DnnlOps } from "${url("../cpu/dnnl_ops.ts")}";
    import { tryDnnl } from "${url("../cpu/dnnl.ts")}";
    import { Scratch } from "${url("../cpu/allocator.ts")}";
    import { Layouts } from "${url("../cpu/layout.ts")}";
    import { SMALL_OP, setThreadCount } from "${url("../cpu/threads.ts")}";
    const scratch = new Scratch();
    const ops = new DnnlOps(tryDnnl(), (n) => scratch.get(n), new Layouts(tryDnnl()));
    const c = 16, spatial = 4 * SMALL_OP / c, size = c * spatial;
    const x = new Float32Array(size).map((_, i) => Math.sin(i) * (1 + i % 7));
    const run = () => {
      const y = new Float32Array(size), m = new Float32Array(c), s = new Float32Array(c);
      ops.batchNormForwardTraining(x, y, null, null, null, null, m, s, { n: 1, c, spatial, eps: 1e-5, momentum: 0.1 });
      return y;
    };
    const two = run();
    setThreadCount(1);
    const one = run();
    let worst = 0;
    for (let i = 0; i < size; i++) worst = Math.max(worst, Math.abs(one[i] - two[i]));
    console.log(JSON.stringify({ worst, keys: ops.implementations().map(([k]) => k) }));`;
  const r = await runWith({ MEC_THREADS: "2" }, code);
  const out = JSON.parse(r.stdout.trim() || "null");
  assert.ok(out !== null, r.stderr);
  assert.ok(out.worst < 1e-5, `worst difference ${out.worst}`);
  const bn = out.keys.filter((k: string) => k.startsWith("bn training"));
  assert.equal(bn.length, 2, out.keys.join("; "));
  assert.ok(bn[1].includes(", 1 thread"), bn[1]);
  assert.ok(!bn[0].includes("thread"), bn[0]);
});
