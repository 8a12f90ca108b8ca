/**
 * The pretraining loop: batches from the loader, one MEC step each with the
 * iteration's schedules, the progress line and log, and a checkpoint at
 * every epoch end and on Ctrl-C. A checkpoint's position is the next batch
 * to train, so `--resume` continues exactly (tools/pretrain.ts says why).
 *
 * @module
 */

import { join } from "node:path";
import {
  type Backend,
  type Batch,
  batchTensors,
  cosineSchedule,
  type DataLoader,
  formatEpochSummary,
  formatLoaderTiming,
  lamdaInvSchedule,
  type MEC,
  mecConstants,
  mecStep,
  NonFiniteLossError,
  saveCheckpoint,
  scope,
  type SGD,
  unreadableFiles,
} from "../mod.ts";
import type { DataParallel } from "../dist/parallel.ts";
import { EXIT, type Interrupt } from "./cli.ts";
import type { KnnMonitor } from "./knn_monitor.ts";
import type { PretrainArgs, PretrainMetadata } from "./pretrain_args.ts";
import {
  fmt,
  formatDuration,
  type JsonLog,
  progressLine,
  StepTimer,
} from "./progress.ts";

/** Where a run starts: the next epoch and batch, and the last checkpoint. */
export interface Position {
  epoch: number;
  batch: number;
  lastCheckpoint: string | null;
}

/** The training loop; returns the exit code. */
export async function train(
  args: PretrainArgs,
  backend: Backend,
  model: MEC,
  optimizer: SGD,
  loader: DataLoader,
  position: Position,
  log: Pick<JsonLog, "write">,
  interrupt: Interrupt,
  monitor: KnnMonitor | null = null,
  parallel: DataParallel | null = null,
): Promise<number> {
  // Under mpirun: rank 0 alone saves, and the ranks stop at the same step.
  const saves = parallel === null || parallel.ranks.isRoot;
  const stopRequested = () =>
    parallel === null
      ? interrupt.requested
      : parallel.ranks.any(interrupt.requested, "the Ctrl-C check");
  const itersPerEpoch = loader.length;
  const shape = {
    epochs: args.epochs,
    itersPerEpoch,
    warmupEpochs: args.warmupEpochs,
  };
  const total = args.epochs * itersPerEpoch;
  const baseLr = args.lr * args.batchSize / 256;
  const { lamda, mu } = mecConstants(args.batchSize, args.dim, args.eps);
  const timer = new StepTimer();
  const first = position.epoch * itersPerEpoch + position.batch;
  const last = args.maxIters === null
    ? total
    : Math.min(total, first + args.maxIters);
  let steps = 0;
  // The latest kNN top-1, shown in the progress lines after the first.
  const knn: { top1: number | null } = { top1: null };

  /** The monitor's measurement after `done` iterations, printed and logged. */
  const measureKnn = async (epoch: number, done: number, when: string) => {
    const r = await monitor!.measure(model.teacher);
    knn.top1 = r.acc1;
    console.log(
      ` * kNN top-1 ${r.acc1.toFixed(2)} % ${when} (${r.seconds.toFixed(1)} s)`,
    );
    log.write({
      event: "knn",
      epoch,
      iteration: done,
      acc1: r.acc1,
      k: monitor!.k,
      temperature: monitor!.temperature,
      bank: monitor!.bank.length,
      queries: monitor!.queries.length,
      seconds: r.seconds,
    });
  };

  const save = async (epoch: number, batch: number, name: string) => {
    const path = join(args.out, name);
    const metadata: PretrainMetadata = {
      kind: "mec-pretrain",
      epoch,
      batch,
      iteration: epoch * itersPerEpoch + batch,
      itersPerEpoch,
      args: { ...args, resume: null, overwrite: false, maxIters: null },
    };
    try {
      if (saves) await saveCheckpoint(path, { model, optimizer, metadata });
    } catch (e) {
      throw new Error(
        `${
          (e as Error).message.replace(/\.$/, "")
        }; the last good checkpoint is ${
          position.lastCheckpoint ?? "none (no epoch had finished)"
        }.`,
        { cause: e },
      );
    }
    position.lastCheckpoint = path;
    log.write({ event: "checkpoint", path, epoch, batch });
    return path;
  };

  for (let epoch = position.epoch; epoch < args.epochs; epoch++) {
    const startBatch = epoch === position.epoch ? position.batch : 0;
    let mark = performance.now();
    const epochStart = mark;
    let stopped: "interrupt" | "max-iters" | null = null;
    let nextBatch = startBatch;
    // The summary (the generator's return value) is read from the loader.
    const batches: AsyncGenerator<Batch, unknown> = loader.epoch(
      epoch,
      startBatch,
    );
    // Ranks stop together after a step, so under mpirun none stops a wait.
    const interrupted = parallel === null
      ? interrupt.requestedSignal.then(() => null)
      : new Promise<null>(() => {});
    while (true) {
      // Ctrl-C while waiting for data stops the wait: there is no step to
      // finish, so the position before the awaited batch is saved at once.
      const pending = batches.next();
      const next = await Promise.race([pending, interrupted]);
      if (next === null) {
        pending.catch(() => {});
        stopped = "interrupt";
        break;
      }
      if (next.done) break;
      const batch = next.value;
      const dataSeconds = (performance.now() - mark) / 1000;
      const iteration = epoch * itersPerEpoch + batch.index;
      const lrNow = cosineSchedule(iteration, baseLr, 0, shape);
      const teacherMomentum = cosineSchedule(
        iteration,
        args.teacherMomentum,
        1,
        { epochs: args.epochs, itersPerEpoch },
      );
      const lamdaInv = lamdaInvSchedule(iteration, lamda, shape);
      let result;
      try {
        result = scope(() => {
          const [x1, x2] = batchTensors(batch);
          return mecStep(model, optimizer, x1, x2, {
            iteration,
            lr: lrNow,
            teacherMomentum,
            lamdaInv,
            mu,
            order: args.order,
          }, parallel ?? undefined);
        });
      } catch (e) {
        if (e instanceof NonFiniteLossError) {
          throw new Error(
            `Training stopped: ${e.message}; the last good checkpoint is ${
              position.lastCheckpoint ?? "none (no epoch had finished)"
            }.`,
          );
        }
        throw e;
      }
      loader.recycle(batch);
      // The optimizer's and the teacher's updates may still be queued.
      backend.synchronize();
      const now = performance.now();
      const seconds = (now - mark) / 1000;
      mark = now;
      timer.record(seconds, dataSeconds, args.batchSize);
      steps++;
      nextBatch = batch.index + 1;
      const imagesPerSecond = args.batchSize / seconds;
      // Fewer CPU threads while other processes keep cores busy.
      const threads = backend.threadsUnderLoad?.() ?? null;
      log.write({
        event: "step",
        epoch,
        batch: batch.index,
        iteration,
        loss: result.loss,
        mec: result.mec,
        lr: lrNow,
        lamdaInv,
        teacherMomentum,
        time: seconds,
        data: dataSeconds,
        imagesPerSecond,
        ...(threads === null ? {} : { threads }),
      });
      if (batch.index % args.printFreq === 0 || iteration + 1 === last) {
        const remaining = (last - iteration - 1) * timer.batchTime.average;
        console.log(progressLine(epoch, batch.index, itersPerEpoch, [
          `Time ${seconds.toFixed(3)} (${timer.batchTime.average.toFixed(3)})`,
          `Data ${dataSeconds.toFixed(3)} (${
            timer.dataTime.average.toFixed(3)
          })`,
          `Loss ${fmt(result.loss)}`,
          `MEC ${fmt(result.mec)}`,
          `lr ${fmt(lrNow)}`,
          ...(knn.top1 === null ? [] : [`kNN ${knn.top1.toFixed(2)}`]),
          `${imagesPerSecond.toFixed(1)} img/s`,
          ...(threads === null ? [] : [`threads ${threads}`]),
          `ETA ${formatDuration(remaining)}`,
        ]));
      }
      // Once per step on every rank: under mpirun it is a collective.
      const stopNow = stopRequested();
      // Every --knn-every iterations, except where an epoch's end measures.
      if (
        monitor !== null && args.knnEvery > 0 &&
        (iteration + 1) % args.knnEvery === 0 &&
        nextBatch < itersPerEpoch && !stopNow &&
        iteration + 1 < last
      ) {
        await measureKnn(epoch, iteration + 1, `at iteration ${iteration + 1}`);
        // The measurement is not the next step's data wait.
        mark = performance.now();
      }
      if (stopNow) {
        stopped = "interrupt";
        await batches.return(undefined);
        break;
      }
      if (iteration + 1 >= last && args.maxIters !== null) {
        stopped = "max-iters";
        await batches.return(undefined);
        break;
      }
    }
    if (stopped === "max-iters") {
      reportSpeed(timer, steps, log);
      return EXIT.ok;
    }
    if (stopped === "interrupt") {
      const name = nextBatch >= itersPerEpoch
        ? `checkpoint_${pad(epoch)}.safetensors`
        : `checkpoint_${pad(epoch)}_partial.safetensors`;
      const path = nextBatch >= itersPerEpoch
        ? await save(epoch + 1, 0, name)
        : await save(epoch, nextBatch, name);
      console.log(
        `Stopped by Ctrl-C at epoch ${epoch}, batch ${nextBatch}; saved ${path} (continue with --resume ${path}).`,
      );
      return EXIT.interrupted;
    }
    const summary = loader.lastSummary;
    if (summary !== null) {
      console.log(formatEpochSummary(summary));
      console.log(
        formatLoaderTiming(
          summary.timing,
          summary.samples,
          (performance.now() - epochStart) / 1000,
        ),
      );
      log.write({
        event: "epoch",
        epoch,
        batches: summary.batches,
        samples: summary.samples,
        skipped: summary.skipped,
        unreadable: unreadableFiles(summary),
        timing: summary.timing,
      });
    }
    if (monitor !== null) {
      await measureKnn(
        epoch,
        (epoch + 1) * itersPerEpoch,
        `after epoch ${epoch}`,
      );
    }
    const path = await save(
      epoch + 1,
      0,
      `checkpoint_${pad(epoch)}.safetensors`,
    );
    console.log(`Saved ${path}.`);
  }
  reportSpeed(timer, steps, log);
  return EXIT.ok;
}

function pad(epoch: number): string {
  return String(epoch).padStart(4, "0");
}

/** The steady-state throughput line (and log record) at the end of a run. */
function reportSpeed(
  timer: StepTimer,
  steps: number,
  log: Pick<JsonLog, "write">,
): void {
  const s = timer.steady();
  if (s.steps === 0) {
    console.log(`Done: ${steps} iterations (too few to time steadily).`);
    return;
  }
  log.write({
    event: "speed",
    steps: s.steps,
    imagesPerSecond: s.imagesPerSecond,
    dataShare: s.dataShare,
  });
  console.log(
    `Done: ${steps} iterations; steady state ${
      s.imagesPerSecond.toFixed(1)
    } images/s (pairs of views), ${
      (100 * s.dataShare).toFixed(1)
    } % of the time waiting for data (${s.steps} iterations after the first ${timer.skip}).`,
  );
}
