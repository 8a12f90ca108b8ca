/**
 * The cuDNN descriptors the CUDA backend builds for each op, read back
 * field by field through cuDNN's own getters on NVIDIA's real library (no
 * GPU needed), and the pure rules of the convolution plans: the cache key
 * and the choice of algorithm.
 */

import { chooseAlgorithm, convKey, type ConvMode } from "../cuda/conv.ts";
import * as dnn from "../cuda/cudnn.ts";
import {
  batchNormDescriptors,
  convDescriptors,
  DescriptorCache,
  flatDescriptor,
  poolDescriptors,
} from "../cuda/descriptors.ts";
import { convDesc } from "../nn/ops/conv.ts";
import { poolDesc } from "../nn/ops/pool.ts";
import { assert } from "./assert.ts";
import { librariesMissing, noteSkipped } from "./cuda_env.ts";

const missing = librariesMissing();
if (missing) noteSkipped("the CUDA backend's descriptors", missing);
const ignore = missing !== null;

const nchw = (d: number[]) => [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];

Deno.test({
  name:
    "a convolution's descriptors hold its shape, padding and stride, and cuDNN agrees on the output",
  ignore,
  fn() {
    const cases = [
      convDesc([64, 3, 224, 224], [64, 3, 7, 7], { stride: 2, padding: 3 }),
      convDesc([64, 256, 56, 56], [128, 256, 1, 1], {}),
      convDesc([64, 128, 56, 56], [128, 128, 3, 3], { stride: 2, padding: 1 }),
      convDesc([3, 4, 9, 6], [6, 4, 3, 5], { stride: [2, 1], padding: [1, 2] }),
    ];
    for (const d of cases) {
      const c = convDescriptors(d);
      try {
        const x = [d.n, d.c, d.h, d.w];
        const y = [d.n, d.k, d.oh, d.ow];
        assert.deepEqual(c.x.get4d(), {
          dataType: dnn.DATA_FLOAT,
          dims: x,
          strides: nchw(x),
        });
        assert.deepEqual(c.y.get4d(), {
          dataType: dnn.DATA_FLOAT,
          dims: y,
          strides: nchw(y),
        });
        assert.deepEqual(c.w.get(), {
          dataType: dnn.DATA_FLOAT,
          format: dnn.TENSOR_NCHW,
          dims: [d.k, d.c, d.r, d.s],
        });
        const conv = c.conv.get();
        assert.deepEqual(
          [
            conv.padH,
            conv.padW,
            conv.strideH,
            conv.strideW,
            conv.dilationH,
            conv.dilationW,
          ],
          [d.padH, d.padW, d.strideH, d.strideW, 1, 1],
        );
        assert.equal(conv.mode, dnn.CROSS_CORRELATION);
        assert.equal(conv.computeType, dnn.DATA_FLOAT);
        assert.deepEqual(c.conv.outputDim(c.x, c.w), y);
      } finally {
        for (const v of Object.values(c)) v.dispose();
      }
    }
  },
});

Deno.test({
  name:
    "max pooling's descriptors hold the window; batch norm's the n x c x spatial view",
  ignore,
  fn() {
    const d = poolDesc([8, 64, 112, 112], {
      kernelSize: 3,
      stride: 2,
      padding: 1,
    });
    const p = poolDescriptors(d);
    assert.deepEqual(p.pool.get(), {
      mode: dnn.POOLING_MAX,
      nanPropagation: dnn.PROPAGATE_NAN,
      kh: 3,
      kw: 3,
      padH: 1,
      padW: 1,
      strideH: 2,
      strideW: 2,
    });
    assert.deepEqual(p.x.get4d().dims, [8, 64, 112, 112]);
    assert.deepEqual(p.y.get4d().dims, [8, 64, 56, 56]);
    assert.deepEqual(p.pool.outputDim(p.x), [8, 64, 56, 56]);
    for (const v of Object.values(p)) v.dispose();

    for (
      const [n, c, spatial] of [[64, 256, 56 * 56], [4096, 2048, 1], [2, 3, 1]]
    ) {
      const b = batchNormDescriptors({
        n,
        c,
        spatial,
        eps: 1e-5,
        momentum: 0.1,
      });
      assert.deepEqual(b.x.get4d(), {
        dataType: dnn.DATA_FLOAT,
        dims: [n, c, spatial, 1],
        strides: [c * spatial, spatial, 1, 1],
      });
      assert.deepEqual(b.channels.get4d().dims, [1, c, 1, 1]);
      b.x.dispose();
      b.channels.dispose();
    }

    const f = flatDescriptor(64 * 256 * 56 * 56);
    assert.equal(f.sizeInBytes(), 4 * 64 * 256 * 56 * 56);
    f.dispose();
  },
});

Deno.test("convolution plans are keyed by shape and mode, and a cache builds each key once", () => {
  const d = convDesc([8, 64, 56, 56], [64, 64, 3, 3], { padding: 1 });
  const fast: ConvMode = { deterministic: false, tf32: false };
  const det: ConvMode = { deterministic: true, tf32: false };
  const tf32: ConvMode = { deterministic: false, tf32: true };
  assert.equal(convKey(d, fast), convKey({ ...d }, fast));
  const keys = new Set([
    convKey(d, fast),
    convKey(d, det),
    convKey(d, tf32),
    convKey({ ...d, n: 16, oh: 56, ow: 56 }, fast),
    convKey({ ...d, strideH: 2, oh: 28 }, fast),
    convKey({ ...d, padW: 0, ow: 54 }, fast),
  ]);
  assert.equal(keys.size, 6);

  let built = 0;
  const cache = new DescriptorCache<number, number[]>((n) => {
    built++;
    return [n];
  }, String);
  assert.equal(cache.get(3), cache.get(3));
  cache.get(4);
  assert.equal(built, 2);
  assert.equal(cache.size, 2);
});

Deno.test("the algorithm chosen is the first that succeeded and fits the mode", () => {
  const perf = (algo: number, o: Partial<dnn.AlgoPerf> = {}): dnn.AlgoPerf => ({
    algo,
    status: 0,
    time: algo,
    memory: 0,
    determinism: dnn.DETERMINISTIC,
    mathType: dnn.FMA_MATH,
    ...o,
  });
  const perfs = [
    perf(6, { status: 3000 }), // failed to run
    perf(1, { mathType: dnn.TENSOR_OP_MATH }), // TF32
    perf(0, { determinism: 0 }), // non-deterministic
    perf(2),
  ];
  assert.equal(
    chooseAlgorithm(perfs, { deterministic: false, tf32: false })?.algo,
    0,
  );
  assert.equal(
    chooseAlgorithm(perfs, { deterministic: false, tf32: true })?.algo,
    1,
  );
  assert.equal(
    chooseAlgorithm(perfs, { deterministic: true, tf32: false })?.algo,
    2,
  );
  assert.equal(
    chooseAlgorithm(perfs.slice(0, 3), { deterministic: true, tf32: false }),
    null,
  );
});
