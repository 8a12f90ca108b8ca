import { Generator, randn, scope } from "../mod.ts";
import { loadCheckpoint, saveCheckpoint } from "../nn/checkpoint.ts";
import { SGD } from "../nn/optim.ts";
import { resnet18 } from "../nn/resnet.ts";
import { encodeSafetensors, type HostTensor } from "../nn/safetensors.ts";
import { assert, assertThrows } from "./assert.ts";
import "./device.ts";

const small = (seed: number) =>
  resnet18({
    width: 4,
    numClasses: 5,
    smallStem: true,
    gen: new Generator(seed),
  });

Deno.test("a checkpoint saved and loaded into a fresh model gives identical outputs, optimiser included", async () => {
  const dir = await Deno.makeTempDir();
  const gen = new Generator(1);
  const x = randn([3, 3, 16, 16], gen);
  const net = small(1);
  const opt = new SGD(net.parameters(), {
    lr: 0.1,
    momentum: 0.9,
    weightDecay: 1e-4,
  });
  // A training step fills the momentum buffers and BN running statistics.
  scope(() => {
    const y = net.train().forward(x);
    y.backward(randn(y.shape, gen));
    opt.step();
  });
  const path = `${dir}/checkpoint_0001.safetensors`;
  await saveCheckpoint(path, {
    model: net,
    optimizer: opt,
    metadata: { epoch: 1, arch: "resnet18" },
  });

  const fresh = small(2);
  const freshOpt = new SGD(fresh.parameters(), {
    lr: 0.5,
    momentum: 0.9,
    weightDecay: 1e-4,
  });
  const ckpt = await loadCheckpoint(path);
  fresh.loadStateDict(ckpt.model);
  freshOpt.loadStateDict(ckpt.optimizer!);
  assert.deepEqual(ckpt.metadata, { epoch: 1, arch: "resnet18" });
  assert.equal(freshOpt.lr, 0.1);

  const out = (m: typeof net) =>
    scope(() => [...m.eval().forward(x).toArray()]);
  assert.deepEqual(out(fresh), out(net));
  for (const [key, t] of net.stateDict()) {
    assert.deepEqual([...fresh.stateDict().get(key)!.toArray()], [
      ...t.toArray(),
    ], key);
  }
  // The next training step is the same too (momentum buffers restored).
  const step = (m: typeof net, o: SGD) =>
    scope(() => {
      o.zeroGrad();
      const y = m.train().forward(x);
      y.backward(randn(y.shape, new Generator(9)));
      o.step();
      return [...m.stateDict().get("fc.weight")!.toArray()];
    });
  assert.deepEqual(step(fresh, freshOpt), step(net, opt));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a torchvision state dict exported to safetensors loads as is (int64 num_batches_tracked)", async () => {
  const net = small(3);
  const other = small(4);
  // Build the file as PyTorch's safetensors export would: F32 weights and
  // I64 scalars for num_batches_tracked, keys in state_dict order.
  const header: Record<string, unknown> = {};
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [key, t] of other.stateDict()) {
    let bytes: Uint8Array;
    if (key.endsWith("num_batches_tracked")) {
      bytes = new Uint8Array(8);
      new DataView(bytes.buffer).setBigInt64(0, 7n, true);
      header[key] = {
        dtype: "I64",
        shape: [],
        data_offsets: [offset, offset + 8],
      };
    } else {
      bytes = new Uint8Array(t.toArray().buffer);
      header[key] = {
        dtype: "F32",
        shape: [...t.shape],
        data_offsets: [offset, offset + bytes.length],
      };
    }
    chunks.push(bytes);
    offset += bytes.length;
  }
  const head = new TextEncoder().encode(JSON.stringify(header));
  const file = new Uint8Array(8 + head.length + offset);
  new DataView(file.buffer).setBigUint64(0, BigInt(head.length), true);
  file.set(head, 8);
  let at = 8 + head.length;
  for (const c of chunks) {
    file.set(c, at);
    at += c.length;
  }
  const dir = await Deno.makeTempDir();
  await Deno.writeFile(`${dir}/resnet18.safetensors`, file);
  const ckpt = await loadCheckpoint(`${dir}/resnet18.safetensors`);
  assert.equal(ckpt.optimizer, null);
  assert.deepEqual(ckpt.metadata, {});
  net.loadStateDict(ckpt.model);
  assert.deepEqual(
    [...net.stateDict().get("layer2.0.conv1.weight")!.toArray()],
    [
      ...other.stateDict().get("layer2.0.conv1.weight")!.toArray(),
    ],
  );
  assert.equal(net.stateDict().get("bn1.num_batches_tracked")!.item(), 7);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadStateDict() reports missing and unexpected keys and rejects shape mismatches", () => {
  const net = small(5);
  const dict = new Map<string, HostTensor>(
    [...net.stateDict()].map((
      [k, t],
    ) => [k, { shape: t.shape, data: t.toArray() }]),
  );
  dict.delete("fc.bias");
  dict.set("fc.extra", { shape: [1], data: new Float32Array(1) });
  assertThrows(
    () => net.loadStateDict(dict),
    /missing keys: fc\.bias; unexpected keys: fc\.extra/,
  );
  const result = net.loadStateDict(dict, { strict: false });
  assert.deepEqual(result, {
    missingKeys: ["fc.bias"],
    unexpectedKeys: ["fc.extra"],
  });
  dict.set("fc.weight", { shape: [5, 3], data: new Float32Array(15) });
  assertThrows(
    () => net.loadStateDict(dict, { strict: false }),
    /shape mismatch for fc\.weight: the checkpoint has \[5, 3\], the model \[5, 32\]/,
  );
});

Deno.test("a checkpoint file is replaced atomically and a corrupt one is rejected clearly", async () => {
  const dir = await Deno.makeTempDir();
  const net = small(6);
  const path = `${dir}/c.safetensors`;
  await saveCheckpoint(path, { model: net, metadata: { epoch: 0 } });
  await saveCheckpoint(path, { model: net, metadata: { epoch: 1 } });
  assert.deepEqual((await loadCheckpoint(path)).metadata, { epoch: 1 });
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [
    "c.safetensors",
  ]);
  const bytes = await Deno.readFile(path);
  await Deno.writeFile(path, bytes.subarray(0, bytes.length - 10));
  await assertRejects(() => loadCheckpoint(path), /c\.safetensors/);
  await Deno.writeFile(
    path,
    encodeSafetensors([], {
      format: "deno-mec checkpoint 1",
      metadata: "{oops",
    }),
  );
  await assertRejects(
    () => loadCheckpoint(path),
    /the checkpoint's "metadata" metadata is not valid JSON/,
  );
  await Deno.remove(dir, { recursive: true });
});

async function assertRejects(fn: () => Promise<unknown>, pattern: RegExp) {
  try {
    await fn();
  } catch (e) {
    assert.match((e as Error).message, pattern);
    return;
  }
  assert.fail("expected a rejection");
}
