/**
 * The CPU MEC step of this toolkit against PyTorch's, alternating the two
 * programs so that both see the same load on a shared machine: `--rounds`
 * times bench/mec_step.ts, then bench/cpu_reference.py, each in its own
 * process at `--threads` threads. Prints each run's JSON line, then the
 * ratios of the best runs (pairs/s by wall time and by CPU time, peak
 * resident memory).
 *
 *     deno run -A bench/compare_cpu.ts [--rounds 2] [--threads 2] [--batch 16]
 *         [--size 224] [--steps 2] [--demo]
 *
 * `--demo`: the demo's network (a ResNet-18 of width 16 with the small
 * stem) instead of ResNet-50; `--demo --batch 256 --size 28` is the
 * demo's step at the paper's batch.
 *
 * PyTorch is `/usr/bin/python3` (Debian's python3-torch) unless
 * `MEC_TORCH_PYTHON` names another interpreter.
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "2" },
    threads: { type: "string", default: "2" },
    batch: { type: "string", default: "16" },
    size: { type: "string", default: "224" },
    steps: { type: "string", default: "2" },
    demo: { type: "boolean", default: false },
  },
});
const here = new URL(".", import.meta.url).pathname;
const python = Deno.env.get("MEC_TORCH_PYTHON") ?? "/usr/bin/python3";

interface Run {
  name: string;
  pairsPerSecond: number;
  seconds: number;
  cpuSeconds: number;
  peakResidentBytes: number;
}

async function run(cmd: string, args: string[], env: Record<string, string>) {
  const out = await new Deno.Command(cmd, {
    args,
    env,
    cwd: here,
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!;
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed`);
  console.log(text);
  return JSON.parse(text) as Run;
}

const ours: Run[] = [];
const theirs: Run[] = [];
const sizeArgs = [
  "--batch",
  values.batch,
  "--size",
  values.size,
  "--steps",
  values.steps,
  ...(values.demo ? ["--demo"] : []),
];
for (let r = 0; r < Number(values.rounds); r++) {
  ours.push(
    await run(Deno.execPath(), ["run", "-A", "mec_step.ts", ...sizeArgs], {
      MEC_THREADS: values.threads,
    }),
  );
  theirs.push(
    await run(python, [
      "cpu_reference.py",
      ...sizeArgs,
      "--threads",
      values.threads,
    ], { OMP_NUM_THREADS: values.threads }),
  );
}
const best = (runs: Run[]) =>
  runs.reduce((a, b) => (b.pairsPerSecond > a.pairsPerSecond ? b : a));
const [a, b] = [best(ours), best(theirs)];
const gb = (bytes: number) => (bytes / 2 ** 30).toFixed(2);
console.log(
  `pairs/s ${a.pairsPerSecond.toFixed(3)} vs ${b.pairsPerSecond.toFixed(3)} (x${
    (a.pairsPerSecond / b.pairsPerSecond).toFixed(2)
  }); CPU s/step ${a.cpuSeconds.toFixed(1)} vs ${b.cpuSeconds.toFixed(1)} (x${
    (b.cpuSeconds / a.cpuSeconds).toFixed(2)
  } by CPU time); peak resident ${gb(a.peakResidentBytes)} GiB vs ${
    gb(b.peakResidentBytes)
  } GiB`,
);
