/**
 * The linear probe's epochs, as `main_lincls.py` runs them: a half-cosine
 * learning rate per epoch, the head trained on the feeder's batches, the
 * frozen backbone checked after every epoch, top-1/top-5 on the validation
 * split, and `probe_last` (and `probe_best`) saved with the position.
 *
 * @module
 */

import { join } from "node:path";
import {
  type Backend,
  crossEntropy,
  NonFiniteLossError,
  saveCheckpoint,
  scope,
  type SGD,
} from "../mod.ts";
import type { DataParallel } from "../dist/parallel.ts";
import type { LinclsArgs, ProbeMetadata } from "./lincls_args.ts";
import { assertFrozen, evaluate, type Probe } from "./probe.ts";
import type { Feeder } from "./probe_features.ts";
import { fmt, type JsonLog, progressLine } from "./progress.ts";

/** What the probe's loop runs on, and where it starts. */
export interface ProbeRun {
  args: LinclsArgs;
  backend: Backend;
  probe: Probe;
  optimizer: SGD;
  feeder: Feeder;
  /** The backbone's tensors before probing, to check them against. */
  frozen: ReadonlyMap<string, Float32Array>;
  log: Pick<JsonLog, "write">;
  startEpoch: number;
  /** The best top-1 so far (a resumed probe's, or 0). */
  bestAcc1: number;
  /**
   * Under `mpirun`: the head's gradients averaged over the ranks, SyncBN in
   * it, and rank 0 alone saving.
   */
  parallel?: DataParallel | null;
}

/** How the probe ended: its final epoch, and the best by validation top-1. */
export interface ProbeOutcome {
  /** The last epoch trained, and its validation top-1 and top-5. */
  lastEpoch: number;
  lastAcc1: number;
  lastAcc5: number;
  /** The best validation top-1, and the epoch of this run that had it (null: an earlier run's). */
  bestAcc1: number;
  bestEpoch: number | null;
}

/** Trains the head from `startEpoch` to `args.epochs`. */
export async function trainProbe(run: ProbeRun): Promise<ProbeOutcome> {
  const { args, backend, probe, optimizer, feeder, frozen, log } = run;
  const parallel = run.parallel ?? null;
  const ranks = parallel?.ranks ?? null;
  const initLr = args.lr * args.batchSize / 256;
  const k5 = Math.min(5, probe.classes);
  let bestAcc1 = run.bestAcc1;
  let bestEpoch: number | null = null;
  let last = { epoch: run.startEpoch - 1, acc1: NaN, acc5: NaN };
  for (let epoch = run.startEpoch; epoch < args.epochs; epoch++) {
    // main_lincls.py's adjust_learning_rate: a half-cosine over the epochs.
    optimizer.lr = initLr * 0.5 * (1 + Math.cos(Math.PI * epoch / args.epochs));
    probe.head.train();
    const t0 = performance.now();
    let seen = 0;
    // The epoch's mean training loss, weighted by batch size, for the log.
    let lossSum = 0;
    let iteration = 0;
    const count = feeder.trainBatches();
    for await (const { x, labels } of feeder.trainEpoch(epoch)) {
      const loss = scope(() => {
        optimizer.zeroGrad();
        parallel?.checkBatch(labels.length);
        const l = crossEntropy(probe.head.forward(x), labels);
        l.backward(undefined, parallel?.backwardOptions());
        parallel?.finishGradients();
        optimizer.step();
        return l.item();
      });
      x.dispose();
      optimizer.zeroGrad();
      seen += labels.length;
      if (!Number.isFinite(loss)) {
        throw new NonFiniteLossError(
          "the probe's loss",
          loss,
          `at epoch ${epoch}, iteration ${iteration}`,
        );
      }
      lossSum += loss * labels.length;
      if (iteration % args.printFreq === 0) {
        backend.synchronize();
        const seconds = (performance.now() - t0) / 1000;
        console.log(progressLine(epoch, iteration, count, [
          `Loss ${fmt(loss)}`,
          `lr ${fmt(optimizer.lr)}`,
          `${(seen / seconds).toFixed(1)} img/s`,
        ]));
      }
      log.write({ event: "step", epoch, iteration, loss, lr: optimizer.lr });
      iteration++;
    }
    assertFrozen(frozen, probe.net);
    const [acc1, acc5] = await evaluate(probe, feeder, "val", ranks);
    const isBest = acc1 > bestAcc1;
    if (isBest) bestEpoch = epoch;
    bestAcc1 = Math.max(acc1, bestAcc1);
    last = { epoch, acc1, acc5 };
    console.log(
      ` * Epoch ${epoch}: Acc@1 ${acc1.toFixed(3)} Acc@${k5} ${
        acc5.toFixed(3)
      } (best Acc@1 ${bestAcc1.toFixed(3)}; val)`,
    );
    log.write({
      event: "eval",
      epoch,
      loss: lossSum / seen,
      lr: optimizer.lr,
      acc1,
      [`acc${k5}`]: acc5,
      bestAcc1,
    });
    const metadata: ProbeMetadata = {
      kind: "mec-lincls",
      epoch: epoch + 1,
      bestAcc1,
      args: { ...args, resume: null, evaluate: false, overwrite: false },
    };
    const save = (name: string) =>
      saveCheckpoint(join(args.out, name), {
        model: probe.net,
        optimizer,
        metadata,
      });
    if (ranks === null || ranks.isRoot) {
      await save("probe_last.safetensors");
      if (isBest) await save("probe_best.safetensors");
    }
  }
  assertFrozen(frozen, probe.net);
  return {
    lastEpoch: last.epoch,
    lastAcc1: last.acc1,
    lastAcc5: last.acc5,
    bestAcc1,
    bestEpoch,
  };
}

/**
 * The closing lines: the final epoch's figures first (the test split's,
 * measured once, where there is one), then the best epoch, labelled with
 * the split that chose it.
 */
export function finalReport(
  o: ProbeOutcome,
  test: [number, number] | null,
  k5: number,
  out: string,
): string {
  const f = (v: number) => v.toFixed(3);
  const lines = [
    test === null
      ? `Final probe (epoch ${o.lastEpoch}): val Acc@1 ${
        f(o.lastAcc1)
      } Acc@${k5} ${f(o.lastAcc5)}.`
      : `Final probe (epoch ${o.lastEpoch}): test Acc@1 ${
        f(test[0])
      } Acc@${k5} ${f(test[1])} (val Acc@1 ${f(o.lastAcc1)}).`,
    `Best epoch by val Acc@1: ${
      o.bestEpoch === null ? "an earlier run's" : `epoch ${o.bestEpoch}`
    }, ${f(o.bestAcc1)} (chosen on val, so ${
      test === null ? "optimistic as a measure" : "not a test figure"
    }); the backbone is unchanged; probes in ${out}.`,
  ];
  return lines.join("\n");
}
