/**
 * How often the multi-tensor ops' device tables are written in training,
 * checked without a GPU: a MEC run and a classifier run on the CPU backend,
 * with every buffer also given an address by the CUDA backend's caching
 * allocator (over a fake driver), and every `sgdUpdateMany` and `axpbyMany`
 * looking its table up in a `TableCache` as the CUDA kernels do (the
 * gradients' column volatile). The allocator sees the requests that the
 * layers above the Backend interface make, in their order; the CUDA
 * backend's own scratch and workspaces, freed within the op that takes
 * them, are not modelled.
 *
 * What it shows: parameters, momentum buffers and the teacher keep their
 * addresses, so every table is uploaded whole in the first step only, and
 * the device memory the tables hold is flat from then on. Gradients are
 * freed and allocated again every step, and come back permuted among the
 * blocks of their size class (last freed, first reused): their column of
 * SGD's table is rewritten in place, one small copy per step, and the EMA's
 * table is found as it was. Correctness never depends on any of it: a
 * table is found by its content.
 */

import { CachingAllocator, type RawMemory } from "../cuda/allocator.ts";
import type { Block } from "../cuda/buffer.ts";
import { multiTensor } from "../cuda/kernels/launch.ts";
import { TableCache, type TableCacheStats } from "../cuda/kernels/tables.ts";
import {
  crossEntropy,
  Generator,
  MEC,
  mecStep,
  randn,
  resnet18,
  scope,
  SGD,
  useDevice,
} from "../mod.ts";
import type {
  AxpbyManyArgs,
  Backend,
  DataBuffer,
  SgdUpdateManyArgs,
} from "../nn/backend.ts";
import { assert } from "./assert.ts";

/** A driver that hands out fresh 256-byte-aligned addresses. */
class FakeDriver implements RawMemory {
  #next = 0x7f00_0000_0000n;
  alloc(bytes: number): { status: number; address: bigint } {
    const address = this.#next;
    this.#next += BigInt(Math.ceil(bytes / 256) * 256 + 256);
    return { status: 0, address };
  }
  free(): void {}
  info(): { free: number; total: number } {
    return { free: 2 ** 40, total: 2 ** 40 };
  }
}

/**
 * Runs `run` with the CPU backend's buffers given device addresses and its
 * multi-tensor ops looking their tables up; the cache's stats after each
 * call of `step` come back.
 */
function traceTables(
  cpu: Backend,
  run: (step: () => void) => void,
): TableCacheStats[] {
  const allocator = new CachingAllocator(new FakeDriver());
  const blocks = new Map<DataBuffer, Block>();
  const tableBlocks = new Map<bigint, Block>();
  const tables = new TableCache({
    alloc(bytes) {
      const block = allocator.alloc(bytes);
      tableBlocks.set(block.address, block);
      return block.address;
    },
    free(address) {
      allocator.free(tableBlocks.get(address)!);
      tableBlocks.delete(address);
    },
    write() {},
  });
  const address = (b: DataBuffer) => blocks.get(b)!.address;
  const { alloc, free, sgdUpdateMany, axpbyMany } = cpu;
  const patched: Partial<Backend> = {
    alloc(length: number): DataBuffer {
      const b = alloc.call(cpu, length);
      blocks.set(b, allocator.alloc(length * 4));
      return b;
    },
    free(b: DataBuffer): void {
      allocator.free(blocks.get(b)!);
      blocks.delete(b);
      free.call(cpu, b);
    },
    sgdUpdateMany(a: SgdUpdateManyArgs): void {
      tables.address(multiTensor(a.lengths).offsets, [
        a.params.map(address),
        a.grads.map(address),
        a.momentumBuffers?.map(address) ?? a.params.map(() => 0n),
      ], [1]);
      sgdUpdateMany.call(cpu, a);
    },
    axpbyMany(a: AxpbyManyArgs): void {
      tables.address(multiTensor(a.lengths).offsets, [
        a.xs.map(address),
        a.ys.map(address),
      ]);
      axpbyMany.call(cpu, a);
    },
  };
  Object.assign(cpu, patched);
  const stats: TableCacheStats[] = [];
  try {
    run(() => stats.push(tables.stats()));
  } finally {
    for (const op of Object.keys(patched)) Reflect.deleteProperty(cpu, op);
  }
  return stats;
}

/** What each step did to the tables: whole uploads, column rewrites, hits. */
function perStep(stats: TableCacheStats[]) {
  const delta = (key: "uploads" | "updates" | "hits") =>
    stats.map((s, i) => s[key] - (i > 0 ? stats[i - 1][key] : 0));
  return {
    uploads: delta("uploads"),
    updates: delta("updates"),
    hits: delta("hits"),
  };
}

/** Steps after the first: nothing uploaded, at most one column rewritten. */
function assertSteady(
  stats: TableCacheStats[],
  launches: number,
  what: string,
): void {
  const s = perStep(stats);
  const later = (a: number[]) => a.slice(1);
  assert.deepEqual(
    s.uploads,
    [launches, ...later(s.uploads).map(() => 0)],
    `${what}: uploads ${s.uploads}`,
  );
  later(s.updates).forEach((u, i) =>
    assert.ok(u <= 1, `${what}: step ${i + 2} rewrote ${u} tables`)
  );
  later(s.updates).forEach((u, i) =>
    assert.equal(u + later(s.hits)[i], launches, `${what}: step ${i + 2}`)
  );
  assert.equal(stats.at(-1)!.tables, launches, `${what}: tables held`);
}

const cpu = await useDevice("cpu");

/** Training steps traced. */
const STEPS = 12;

Deno.test("in MEC training, the SGD and EMA tables are uploaded in the first step only, then at most the gradients' column is rewritten", () => {
  const stats = traceTables(cpu, (step) => {
    const model = new MEC({
      arch: "resnet18",
      width: 4,
      smallStem: true,
      dim: 16,
      predDim: 8,
      gen: new Generator(0),
      device: "cpu",
    });
    const opt = new SGD(model.trainableParameters(), {
      lr: 0.05,
      momentum: 0.9,
      weightDecay: 1e-5,
    });
    const gen = new Generator(1);
    const x1 = randn([8, 3, 8, 8], gen, { device: "cpu" });
    const x2 = randn([8, 3, 8, 8], gen, { device: "cpu" });
    for (let i = 0; i < STEPS; i++) {
      mecStep(model, opt, x1, x2, {
        iteration: i,
        lr: 0.05,
        teacherMomentum: 0.99,
        lamdaInv: 2,
        mu: 12,
      });
      step();
    }
    for (const t of [x1, x2]) t.dispose();
    opt.dispose();
    model.dispose();
  });
  // SGD's table (first step and later ones alike) and the EMA's.
  assertSteady(stats, 2, "MEC");
});

Deno.test("in classifier training, the SGD table is uploaded in the first step only, then at most the gradients' column is rewritten", () => {
  const stats = traceTables(cpu, (step) => {
    const net = resnet18({
      numClasses: 10,
      smallStem: true,
      width: 8,
      gen: new Generator(2),
      device: "cpu",
    });
    const opt = new SGD(net.parameters(), {
      lr: 0.05,
      momentum: 0.9,
      weightDecay: 1e-4,
    });
    const x = randn([4, 3, 16, 16], new Generator(3), { device: "cpu" });
    for (let i = 0; i < STEPS; i++) {
      scope(() => {
        opt.zeroGrad();
        crossEntropy(net.forward(x), [1, 4, 4, 8]).backward();
        opt.step();
      });
      step();
    }
    x.dispose();
    opt.dispose();
    net.dispose();
  });
  assertSteady(stats, 1, "classifier");
});
