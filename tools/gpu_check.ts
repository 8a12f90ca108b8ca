/**
 * `deno task gpu-check`: everything a GPU machine can tell, in one command
 * and at most eight minutes on one H200.
 *
 * 1. `cuda-info`;
 * 2. the CUDA tests: bindings on the GPU, every op against the CPU backend,
 *    training steps compared step by step, memory over 50 steps;
 * 3. the GPU benchmark (bench/gpu.ts: ResNet-50 forward+backward at batch
 *    64, the MEC step at batch 64 and 128, 224 px), and PyTorch's figures
 *    for the same (bench/gpu_reference.py) where `python3` has PyTorch with
 *    CUDA and torchvision, with the ratio;
 * 4. the whole test suite with `MEC_TEST_DEVICE=cuda`, in the time left.
 *
 * Each step's whole output goes to `$OUT/<step>.log` when `OUT` names a
 * folder (the benchmark's JSON lines to `$OUT/gpu-bench.jsonl`); the
 * terminal gets a summary. Exits 1 if a step failed.
 *
 * @module
 */

const BUDGET_S = Number(Deno.env.get("MEC_GPU_CHECK_SECONDS") ?? 480);
const started = performance.now();
const outDir = Deno.env.get("OUT") || null;
if (outDir) await Deno.mkdir(outDir, { recursive: true });
const deno = Deno.execPath();
const ROOT = new URL("..", import.meta.url).pathname;
const TEST_FLAGS = [
  "--allow-ffi",
  "--allow-env",
  "--allow-read",
  "--allow-write",
  "--allow-run",
];

interface StepResult {
  code: number;
  output: string;
  timedOut: boolean;
}

function secondsLeft(): number {
  return BUDGET_S - (performance.now() - started) / 1000;
}

/** Runs a command with a time limit, its output kept for the log. */
async function run(
  cmd: string,
  args: string[],
  limitS: number,
  env: Record<string, string> = {},
): Promise<StepResult> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }, Math.max(1, limitS) * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout) +
    new TextDecoder().decode(out.stderr);
  return { code: out.code, output: text, timedOut };
}

async function log(name: string, text: string): Promise<void> {
  if (outDir) await Deno.writeTextFile(`${outDir}/${name}.log`, text);
}

let failed = false;

/** Prints a test run's summary: its result lines and the failures' names. */
function summarise(r: StepResult): void {
  const lines = r.output.split("\n");
  const keep = lines.filter((l) =>
    /^(ok|FAILED) \|/.test(l.trim()) || /\.\.\. FAILED/.test(l) ||
    /^CUDA.* skipped/.test(l) || /^GPU: .*\.\.\. ok/.test(l)
  );
  for (const l of keep) console.log(`  ${l.trim()}`);
  if (r.timedOut) console.log("  (stopped: out of time)");
  if (r.code !== 0) failed = true;
}

function step(title: string): void {
  const t = ((performance.now() - started) / 1000).toFixed(0);
  console.log(`\n== ${title} (at ${t} s, ${secondsLeft().toFixed(0)} s left)`);
}

// 1. What is here.
step("cuda-info");
{
  const r = await run(deno, ["run", "-A", "tools/cuda_info.ts"], 30);
  console.log(r.output.trimEnd());
  await log("cuda-info", r.output);
}

// 2. The CUDA tests.
step("CUDA tests");
{
  const files = [...Deno.readDirSync(`${ROOT}tests`)]
    .map((e) => e.name)
    .filter((n) => /^cuda.*_test\.ts$/.test(n))
    .sort()
    .map((n) => `tests/${n}`);
  const r = await run(
    deno,
    ["test", ...TEST_FLAGS, ...files],
    Math.min(180, secondsLeft() - 240),
  );
  summarise(r);
  await log("cuda-tests", r.output);
}

// 3. Speed and memory, and PyTorch's for the same work.
step("GPU benchmark");
const CASES = ["resnet50-64", "mec-64", "mec-128"];
const ours = new Map<string, { imagesPerSecond: number; peakBytes: number }>();
const theirs = new Map<
  string,
  { imagesPerSecond: number; peakBytes: number }
>();
const torch = await run(
  "python3",
  ["-c", "import torch, torchvision; assert torch.cuda.is_available()"],
  60,
).catch(() => null);
const haveTorch = torch !== null && torch.code === 0;
let benchLog = "";
for (const name of CASES) {
  if (secondsLeft() < 120) break;
  const r = await run(
    deno,
    ["run", "-A", "bench/gpu.ts", "--case", name, "--json"],
    Math.min(120, secondsLeft() - 90),
  );
  benchLog += r.output;
  const line = r.output.split("\n").find((l) => l.startsWith("{"));
  if (line) ours.set(name, JSON.parse(line));
  else {
    failed = true;
    const why = r.output.split("\n").filter((l) =>
      l.trim() !== "" && !/^\s+at /.test(l)
    );
    console.log(`  ${name}: failed${r.timedOut ? " (out of time)" : ""}`);
    for (const l of why.slice(-6)) console.log(`    ${l.trim()}`);
  }
  if (haveTorch && secondsLeft() > 100) {
    const p = await run(
      "python3",
      ["bench/gpu_reference.py", "--case", name],
      Math.min(90, secondsLeft() - 90),
    );
    benchLog += p.output;
    const pl = p.output.split("\n").find((l) => l.startsWith("{"));
    if (pl) theirs.set(name, JSON.parse(pl));
  }
}
await log("gpu-bench", benchLog);
if (outDir) {
  const lines = [...ours].map(([k, v]) =>
    JSON.stringify({ case: k, side: "deno-mec", ...v })
  )
    .concat(
      [...theirs].map(([k, v]) =>
        JSON.stringify({ case: k, side: "pytorch", ...v })
      ),
    );
  await Deno.writeTextFile(
    `${outDir}/gpu-bench.jsonl`,
    lines.join("\n") + "\n",
  );
}
const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
for (const name of CASES) {
  const a = ours.get(name);
  if (!a) continue;
  const b = theirs.get(name);
  const vs = b
    ? `  PyTorch ${b.imagesPerSecond.toFixed(1)} images/s, ${
      gib(b.peakBytes)
    }: speed ${(a.imagesPerSecond / b.imagesPerSecond).toFixed(2)}x, memory ${
      (a.peakBytes / b.peakBytes).toFixed(2)
    }x`
    : haveTorch
    ? ""
    : "  (no PyTorch with CUDA and torchvision here)";
  console.log(
    `  ${name.padEnd(12)} ${a.imagesPerSecond.toFixed(1)} images/s, peak ${
      gib(a.peakBytes)
    }${vs}`,
  );
}

// 4. The whole suite on the GPU, in the time left.
step("the whole suite with MEC_TEST_DEVICE=cuda");
if (secondsLeft() > 30) {
  const r = await run(
    deno,
    ["test", ...TEST_FLAGS, "tests/"],
    secondsLeft() - 10,
    { MEC_TEST_DEVICE: "cuda" },
  );
  summarise(r);
  await log("suite-cuda", r.output);
} else {
  console.log("  not run: out of time");
}

console.log(
  `\ngpu-check ${failed ? "FAILED" : "passed"} in ${
    ((performance.now() - started) / 1000).toFixed(0)
  } s${outDir ? `; logs in ${outDir}` : ""}`,
);
Deno.exit(failed ? 1 : 0);
