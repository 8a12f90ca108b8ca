/**
 * Data parallelism on CPU processes under `mpirun`: each case starts ranks
 * with a time limit and checks what they print. Skipped, in one line, where
 * Open MPI's `mpirun` is not installed.
 */

import { assert } from "./assert.ts";
import { haveMpirun, mpirun } from "./dist/mpirun.ts";

const MPI = await haveMpirun();
if (!MPI) {
  console.log(
    "dist_test: mpirun is not installed; data-parallel tests skipped",
  );
}

interface RankReport {
  rank: number;
  size: number;
  engine: string;
  report: Record<string, number>;
}

function reports(stdout: string): RankReport[] {
  return stdout.split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l) as RankReport
  ).sort((a, b) => a.rank - b.rank);
}

/**
 * The device of the suite (MEC_TEST_DEVICE): on a GPU the ranks run on
 * NCCL, one GPU each, so as many ranks as there are GPUs to test with (one
 * on the machines we have).
 */
const DEVICE = Deno.env.get("MEC_TEST_DEVICE") || "cpu";
const GPU = DEVICE !== "cpu";

for (const np of GPU ? [1] : [2, 3]) {
  Deno.test({
    name:
      `${np} ranks: one MEC step equals one process with the global batch; SyncBN equals BatchNorm over the concatenated batch; shards cover the epoch`,
    ignore: !MPI,
    fn: async () => {
      const env: Record<string, string> = { MEC_TEST_DEVICE: DEVICE };
      const libs = Deno.env.get("MEC_CUDA_LIBS");
      if (libs !== undefined) env.MEC_CUDA_LIBS = libs;
      const run = await mpirun(np, "tests/dist/step_ranks.ts", [], 120, env);
      assert.equal(run.code, 0, run.stderr);
      const all = reports(run.stdout);
      assert.equal(all.length, np, run.stdout);
      for (const { rank, size, engine, report: r } of all) {
        const at = `rank ${rank}`;
        assert.equal(size, np);
        assert.equal(engine, GPU ? "NCCL" : "Open MPI");
        // Every index of a 10-sample epoch visited; the padding repeats
        // np * ceil(10 / np) - 10 of them, as PyTorch's sampler does.
        assert.equal(r.samplerMissing, 0, at);
        assert.equal(r.samplerExtra, np * Math.ceil(10 / np) - 10, at);
        // The gather moves floats exactly; its backward sums small integers.
        assert.equal(r.gatherForward, 0, at);
        assert.equal(r.gatherBackward, 0, at);
        // SyncBN: the same float32 quantities summed in another order
        // (global statistics through E[x^2] - mean^2 from each rank's
        // mean and variance): a few units of float32 rounding (1.2e-7).
        for (
          const k of [
            "syncbnY",
            "syncbnDx",
            "syncbnDweight",
            "syncbnDbias",
            "syncbnRunningMean",
            "syncbnRunningVar",
          ]
        ) {
          assert.ok(r[k] < 1e-6, `${at}: ${k} ${r[k]}`);
        }
        // The MEC step: a ResNet-18 forward and backward, four powers of
        // a 12 x 12 matrix, and BN statistics, each summed in another
        // order on each side; measured up to 5e-6 relative to each
        // tensor's largest value, bounded at 1e-4 (far below the 1e-2 a
        // wrong scale by the world size or a missing rank would give).
        assert.ok(r.loss < 1e-5, `${at}: loss ${r.loss}`);
        assert.ok(r.mec < 1e-5, `${at}: mec ${r.mec}`);
        for (const k of ["grad", "weights", "teacher", "bnStats"]) {
          assert.ok(r[k] < 1e-4, `${at}: ${k} ${r[k]}`);
        }
        // All ranks apply the same average: identical weights, bit for bit.
        assert.equal(r.ranksDiffer, 0, at);
        // Every bucket started while backward still ran.
        assert.equal(r.bucketsStartedInBackward, r.buckets, at);
      }
    },
  });
}

/** Whether NCCL is found (MEC_CUDA_LIBS or NVIDIA's wheels), with no GPU needed. */
async function haveNccl(): Promise<boolean> {
  try {
    const { uniqueId } = await import("../cuda/nccl.ts");
    return uniqueId().length === 128;
  } catch {
    return false;
  }
}

const NCCL = MPI && await haveNccl();
if (MPI && !NCCL) {
  console.log("dist_test: NCCL is not found; the NCCL unique-id test skipped");
}

Deno.test({
  name:
    "2 ranks: rank 0's NCCL unique id reaches every rank over MPI (no GPU needed)",
  ignore: !NCCL,
  fn: async () => {
    const env: Record<string, string> = {};
    const libs = Deno.env.get("MEC_CUDA_LIBS");
    if (libs !== undefined) env.MEC_CUDA_LIBS = libs;
    const run = await mpirun(2, "tests/dist/nccl_id_ranks.ts", [], 60, env);
    assert.equal(run.code, 0, run.stderr);
    const ids = run.stdout.split("\n").filter((l) => l.startsWith("{")).map(
      (l) => JSON.parse(l) as { rank: number; id: number[] },
    );
    assert.equal(ids.length, 2, run.stdout);
    assert.equal(ids[0].id.length, 128);
    assert.deepEqual(ids[0].id, ids[1].id);
    // A fresh id is not all zeros (it carries rank 0's address).
    assert.ok(ids[0].id.some((b) => b !== 0));
  },
});
