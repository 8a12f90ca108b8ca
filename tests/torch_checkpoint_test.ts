/**
 * PyTorch checkpoints read without running them: the official MEC layout
 * written by torch.save (both formats, float32, float16 and int64), views,
 * and one sentence for each kind of bad file: a forbidden global, a
 * truncated or damaged zip, tensors outside their storage, a network that
 * is not a ResNet. The fixtures and their SHA-256 digests come from
 * tests/fixtures/torch/make_torch_checkpoints.py (Debian's python3-torch).
 */

import { MEC, resnet18 } from "../mod.ts";
import { PyDict, PyGlobal, type PyTuple, unpickle } from "../nn/pickle.ts";
import type { HostTensor } from "../nn/safetensors.ts";
import {
  readTorchFile,
  tensorEntries,
  TorchFileError,
} from "../nn/torch_file.ts";
import { crc32 } from "../nn/zip.ts";
import { backboneState, loadInto, readCheckpoint } from "../tools/models.ts";
import { inferArch } from "../tools/torch_checkpoint.ts";
import { assert } from "./assert.ts";
import "./device.ts";
import { FIXTURES } from "./tool_runs.ts";

const DIR = `${FIXTURES}torch/`;
const DIGESTS: {
  files: Record<string, Record<string, { shape: number[]; sha256: string }>>;
} = JSON.parse(await Deno.readTextFile(`${DIR}digests.json`));

/** The error `fn` rejects with, checked to be an `E`. */
async function rejection<E extends Error>(
  fn: () => Promise<unknown>,
  kind: abstract new (...args: never[]) => E,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof kind, `${e}`);
    return e as E;
  }
  return assert.fail("expected a rejection");
}

async function sha256(data: Float32Array): Promise<string> {
  const bytes = new Uint8Array(data.byteLength);
  bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every tensor of a state dict equals PyTorch's, bit for bit. */
async function assertDigests(
  tensors: Map<string, HostTensor>,
  file: string,
  rename: (key: string) => string = (k) => k,
): Promise<void> {
  const expected = DIGESTS.files[file];
  assert.deepEqual(
    [...tensors.keys()],
    Object.keys(expected).map(rename),
    `${file}: the names, in order`,
  );
  for (const [key, want] of Object.entries(expected)) {
    const t = tensors.get(rename(key))!;
    assert.deepEqual(t.shape, want.shape, `${file}: ${key}'s shape`);
    assert.equal(await sha256(t.data), want.sha256, `${file}: ${key}'s values`);
  }
}

/** The state dict of a file, read with the reader alone. */
function stateDict(path: string): Promise<Map<string, HostTensor>> {
  return readTorchFile(path, (file) => {
    const root = file.root as PyDict;
    const sd = root.get("state_dict") instanceof PyDict
      ? root.get("state_dict") as PyDict
      : root;
    return file.read(tensorEntries(sd));
  });
}

/** The one-sentence error of reading `path` as a pretrained checkpoint. */
async function refusal(path: string): Promise<string> {
  const e = await rejection(
    () => readCheckpoint(path, "pretrained checkpoint"),
    Error,
  );
  assert.equal(e.message.split("\n").length, 1, e.message);
  assert.match(e.message, /^The pretrained checkpoint .+\.$/);
  return e.message;
}

const tmp = await Deno.makeTempDir({ prefix: "mec_torch_" });
globalThis.addEventListener("unload", () => {
  Deno.removeSync(tmp, { recursive: true });
});
let written = 0;
async function temp(bytes: Uint8Array): Promise<string> {
  const path = `${tmp}/f${written++}.pth.tar`;
  await Deno.writeFile(path, bytes);
  return path;
}

Deno.test("the official zip checkpoint's every tensor equals PyTorch's bit for bit", async () => {
  await assertDigests(
    await stateDict(`${DIR}mec_resnet18.pth.tar`),
    "mec_resnet18.pth.tar",
  );
});

Deno.test("the format before PyTorch 1.6 reads too, float16 exactly and int64 batch counts", async () => {
  const file = "mec_resnet18_legacy_half.pth.tar";
  const tensors = await stateDict(`${DIR}${file}`);
  await assertDigests(tensors, file);
  const count = tensors.get("module.encoder.bn1.num_batches_tracked")!;
  assert.deepEqual(count.shape, []);
  assert.ok(Number.isInteger(count.data[0]) && count.data[0] > 0);
});

Deno.test("views read as PyTorch lays them out: a transpose, a slice at an offset, a column, a shared storage", async () => {
  await assertDigests(await stateDict(`${DIR}views.pth.tar`), "views.pth.tar");
});

Deno.test("the official checkpoint reads as a checkpoint: module. dropped, the architecture from its tensors, the backbone bit for bit", async () => {
  const ckpt = await readCheckpoint(
    `${DIR}mec_resnet18.pth.tar`,
    "pretrained checkpoint",
  );
  assert.deepEqual(ckpt.metadata, {
    kind: "pytorch",
    epoch: 100,
    arch: "resnet18",
    args: { arch: "resnet18", width: 2, smallStem: false },
  });
  assert.equal(ckpt.optimizer, null);
  await assertDigests(
    ckpt.model,
    "mec_resnet18.pth.tar",
    (k) => k.slice("module.".length),
  );
  // The student encoder without its projector, under torchvision's names.
  const backbone = backboneState(ckpt);
  const expected = Object.keys(DIGESTS.files["mec_resnet18.pth.tar"])
    .filter((k) =>
      k.startsWith("module.encoder.") && !k.startsWith("module.encoder.fc.")
    );
  assert.equal(backbone.size, expected.length);
  for (const key of expected) {
    const name = key.slice("module.encoder.".length);
    assert.equal(
      await sha256(backbone.get(name)!.data),
      DIGESTS.files["mec_resnet18.pth.tar"][key].sha256,
      name,
    );
  }
  // Every name and shape fits this toolkit's own models, strictly.
  const net = resnet18({ width: 2 });
  const view = new Map(
    [...net.stateDict()].filter(([k]) => !k.startsWith("fc.")),
  );
  assert.deepEqual([...backbone.keys()].sort(), [...view.keys()].sort());
  const mec = new MEC({ arch: "resnet18", width: 2, dim: 16, predDim: 8 });
  loadInto(mec, ckpt.model, "fixture", "MEC model");
  const conv1 = mec.teacher.conv1.weight.toArray();
  assert.deepEqual(conv1, ckpt.model.get("teacher.conv1.weight")!.data);
  mec.dispose();
  net.dispose();
});

Deno.test("a bare torchvision state dict (.pth) reads with its architecture from its tensors", async () => {
  const file = "torchvision_resnet18_w1.pth";
  const ckpt = await readCheckpoint(`${DIR}${file}`, "pretrained checkpoint");
  assert.deepEqual(ckpt.metadata, {
    kind: "pytorch",
    args: { arch: "resnet18", width: 1, smallStem: false },
  });
  await assertDigests(ckpt.model, file);
  const backbone = backboneState(ckpt);
  assert.deepEqual(
    [...backbone.keys()],
    [...ckpt.model.keys()].filter((k) => !k.startsWith("fc.")),
  );
});

Deno.test("a tar archive, PyTorch's oldest format, is refused in one sentence", async () => {
  const tar = new Uint8Array(1024);
  tar.set(new TextEncoder().encode("storages"), 0);
  tar.set(new TextEncoder().encode("ustar"), 257);
  assert.match(
    await refusal(await temp(tar)),
    /is a tar archive \(PyTorch's oldest checkpoint format\), which this toolkit does not read; load it and save it again with torch\.save in PyTorch 1\.6 or later\.$/,
  );
});

Deno.test("a pickle that asks for os.system is refused in one sentence, and nothing runs", async () => {
  const marker = "/tmp/deno-mec-forbidden-global-ran";
  await Deno.remove(marker).catch(() => {});
  const message = await refusal(`${DIR}forbidden_global.pth.tar`);
  assert.match(message, /asks to run posix\.system/);
  assert.match(message, /only PyTorch's tensor, storage and OrderedDict/);
  await rejection(() => Deno.stat(marker), Deno.errors.NotFound);
});

Deno.test("a truncated zip gives one sentence at every cut", async () => {
  const bytes = await Deno.readFile(`${DIR}mec_resnet18.pth.tar`);
  for (
    const cut of [
      10,
      1000,
      bytes.length >> 1,
      bytes.length - 30,
      bytes.length - 1,
    ]
  ) {
    const message = await refusal(await temp(bytes.subarray(0, cut)));
    assert.match(message, /cannot be read as a PyTorch checkpoint: /, `${cut}`);
  }
});

Deno.test("a damaged byte in a storage fails its CRC-32; a directory claiming more than the file is refused before reading", async () => {
  const bytes = await Deno.readFile(`${DIR}mec_resnet18.pth.tar`);
  // The local header of a storage record: name, then the data after it.
  const name = new TextEncoder().encode("mec_resnet18.pth/data/7");
  let at = -1;
  for (let i = 0; i < bytes.length && at < 0; i++) {
    if (
      bytes[i] === 0x50 && bytes[i + 1] === 0x4b && bytes[i + 2] === 3 &&
      name.every((b, j) => bytes[i + 30 + j] === b) &&
      bytes[i + 30 + name.length] !== 0x30 // not data/70..79
    ) at = i;
  }
  assert.ok(at > 0, "found the record");
  const view = new DataView(bytes.buffer);
  const start = at + 30 + view.getUint16(at + 26, true) +
    view.getUint16(at + 28, true);
  const damaged = bytes.slice();
  damaged[start] ^= 0x40;
  assert.match(
    await refusal(await temp(damaged)),
    /entry mec_resnet18\.pth\/data\/7 fails its CRC-32 check/,
  );

  // The first central-directory entry's sizes set to 2 GB.
  const huge = bytes.slice();
  const hv = new DataView(huge.buffer);
  let first = 0;
  while (hv.getUint32(first, true) !== 0x02014b50) first++;
  hv.setUint32(first + 20, 0x7fffffff, true);
  hv.setUint32(first + 24, 0x7fffffff, true);
  assert.match(
    await refusal(await temp(huge)),
    /lies past the end of its data/,
  );
});

Deno.test("a network that is not a ResNet, or a ResNet of another depth, is named in one sentence", async () => {
  assert.match(
    await refusal(`${DIR}not_a_resnet.pth.tar`),
    /holds a notaresnet this toolkit does not build: it has no encoder\.conv1\.weight, so it is not a ResNet \(it builds resnet18, resnet34, resnet50, resnet101 and resnet152\)\.$/,
  );
  const ckpt = await readCheckpoint(`${DIR}mec_resnet18.pth.tar`, "checkpoint");
  const fewer = new Map(
    [...ckpt.model].filter(([k]) => !k.startsWith("encoder.layer3.1.")),
  );
  assert.deepEqual(inferArch(fewer, "encoder."), {
    reason:
      "its ResNet has 2, 2, 1, 2 basic blocks per stage, which is none of resnet18, resnet34, resnet50, resnet101 and resnet152",
  });
  // A checkpoint fed to a resnet50 probe: the strict load names the first difference.
  assert.throws(
    () =>
      loadInto(
        resnet18({ width: 2 }),
        backboneState(ckpt),
        "x.pth.tar",
        "resnet50 backbone",
      ),
    /The checkpoint x\.pth\.tar does not fit a resnet50 backbone: it has no fc\.weight\./,
  );
});

// ---------------------------------------------------------------------------
// Hand-made pickles in the format before 1.6, for what torch.save never
// writes.

/** Pickle bytes, opcode by opcode. */
class Pickle {
  readonly out: number[] = [0x80, 2];
  op(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  u32(n: number): this {
    return this.op(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24);
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.op(0x58).u32(b.length).op(...b);
  }
  int(n: number): this {
    return this.op(0x4a).u32(n >>> 0);
  }
  global(module: string, name: string): this {
    return this.op(0x63, ...new TextEncoder().encode(`${module}\n${name}\n`));
  }
  tuple(values: number[]): this {
    this.op(0x28);
    for (const v of values) this.int(v);
    return this.op(0x74);
  }
  stop(): number[] {
    return [...this.out, 0x2e];
  }
}

/** A little-endian int64. */
function int64(n: number): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
  return [...b];
}

interface Crafted {
  shape: number[];
  stride: number[];
  offset?: number;
  /** Elements named in the persistent id. */
  numel: number;
  /** Elements written after the key list (default: numel). */
  written?: number;
  /** The elements: float32 values, or the storage's own bytes. */
  values: number[] | Uint8Array;
  type?: string;
}

/** A file in the format before 1.6 holding `{"state_dict": {"w": tensor}}`. */
function legacyFile(t: Crafted, main?: (p: Pickle) => void): Uint8Array {
  const header = [
    // The magic number, the protocol version, the system information.
    [
      0x80,
      2,
      0x8a,
      0x0a,
      0x6c,
      0xfc,
      0x9c,
      0x46,
      0xf9,
      0x20,
      0x6a,
      0xa8,
      0x50,
      0x19,
      0x2e,
    ],
    new Pickle().op(0x4d, 0xe9, 0x03).stop(),
    new Pickle().op(0x7d).str("little_endian").op(0x88, 0x73).stop(),
  ].flat();
  const p = new Pickle().op(0x7d).str("state_dict");
  p.global("collections", "OrderedDict").op(0x29, 0x52).str("w");
  p.global("torch._utils", "_rebuild_tensor_v2").op(0x28, 0x28).str("storage");
  p.global("torch", t.type ?? "FloatStorage").str("0").str("cpu").int(t.numel);
  p.op(0x4e, 0x74, 0x51).int(t.offset ?? 0).tuple(t.shape).tuple(t.stride);
  p.op(0x89).global("collections", "OrderedDict").op(0x29, 0x52, 0x74, 0x52);
  p.op(0x73, 0x73);
  main?.(p);
  const keys = new Pickle().op(0x5d).str("0").op(0x61).stop();
  const data = t.values instanceof Uint8Array
    ? t.values
    : new Uint8Array(new Float32Array(t.values).buffer);
  return new Uint8Array([
    ...header,
    ...p.stop(),
    ...keys,
    ...int64(t.written ?? t.numel),
    ...data,
  ]);
}

Deno.test("hand-made pickles: a strided tensor reads; the same file with each thing wrong gives one sentence", async () => {
  const good: Crafted = {
    shape: [2, 3],
    stride: [1, 2],
    numel: 6,
    values: [0, 1, 2, 3, 4, 5],
  };
  const tensors = await stateDict(await temp(legacyFile(good)));
  assert.deepEqual(tensors.get("w"), {
    shape: [2, 3],
    data: new Float32Array([0, 2, 4, 1, 3, 5]),
  });

  const cases: [string, Uint8Array, RegExp][] = [
    [
      "a tensor past its storage",
      legacyFile({ ...good, stride: [3, 2] }),
      /a tensor of size \[2, 3\] and stride \[3, 2\] at offset 0 does not fit its storage of 6 elements/,
    ],
    [
      "a broadcast larger than its storage",
      legacyFile({ ...good, shape: [1000, 6], stride: [0, 1] }),
      /does not fit its storage of 6 elements/,
    ],
    [
      "a storage count that is not the pickle's",
      legacyFile({ ...good, written: 5 }),
      /its storage 0 holds 5 elements where its pickle names 6/,
    ],
    [
      "a storage that runs past the file",
      legacyFile({ ...good, written: 1 << 30 }),
      /its storage 0 runs past the end of the file/,
    ],
    [
      "a storage type this toolkit cannot read",
      legacyFile({ ...good, type: "BoolStorage" }),
      /its tensor w is a torch\.BoolStorage, which this toolkit cannot read/,
    ],
    [
      "a global that is not PyTorch's",
      legacyFile(good, (p) => p.global("builtins", "eval")),
      /its pickle asks to run builtins\.eval/,
    ],
    [
      "a string longer than the file",
      legacyFile(good, (p) => p.op(0x58).u32(0xfffffff0)),
      /its pickle ends inside string at byte \d+ \(4294967280 bytes needed/,
    ],
    [
      "a memo never set",
      legacyFile(good, (p) => p.op(0x68, 200)),
      /its pickle reads memo 200, which was never set/,
    ],
    [
      "a text opcode of protocol 0",
      legacyFile(good, (p) => p.op(0x49, 0x31, 0x0a)),
      /its pickle has opcode 0x49 at byte \d+, which a data file written by Python 3 does not use/,
    ],
  ];
  for (const [what, bytes, pattern] of cases) {
    const path = await temp(bytes);
    const e = await rejection(() => stateDict(path), TorchFileError);
    assert.match(e.message, pattern, `${what}: ${e.message}`);
    // Through the tools' reader, one sentence.
    assert.match(await refusal(path), pattern, what);
  }
});

Deno.test("float64, bfloat16 and int32 storages read as float32", async () => {
  const bytes = (array: ArrayBufferView) =>
    new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  const read = async (type: string, values: Uint8Array) =>
    (await stateDict(
      await temp(
        legacyFile({ shape: [3], stride: [1], numel: 3, values, type }),
      ),
    )).get("w")!.data;
  // 0.1 in float64 rounds to float32's nearest.
  assert.deepEqual(
    await read("DoubleStorage", bytes(new Float64Array([0.1, -2.5, 1e300]))),
    new Float32Array([0.1, -2.5, Infinity]),
  );
  // bfloat16 is the top half of a float32: 1.5, -2 and 2^-126.
  assert.deepEqual(
    await read(
      "BFloat16Storage",
      bytes(new Uint16Array([0x3fc0, 0xc000, 0x0080])),
    ),
    new Float32Array([1.5, -2, 2 ** -126]),
  );
  assert.deepEqual(
    await read("IntStorage", bytes(new Int32Array([7, -8, 1 << 24]))),
    new Float32Array([7, -8, 1 << 24]),
  );
});

Deno.test("unpickle reads Python's values and refuses globals and objects it was not given", () => {
  // pickle.dumps({"a": [1, -2, 2**70, 0.5, None, True], (1, "x"): b"\x00"}, 2)
  // by hand: the tuple key is refused, so the dict is keyed by strings.
  const p = new Pickle().op(0x7d, 0x28).str("a").op(0x5d, 0x28);
  p.op(0x4b, 1).int(-2).op(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40);
  p.op(0x47, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0, 0x4e, 0x88, 0x65);
  p.str("t").op(0x4b, 7, 0x8c, 1, 0x78, 0x86).str("b").op(0x43, 1, 0, 0x75);
  const opts = {
    findGlobal: () => null,
    refuse: (n: string) => new Error(`refused ${n}`),
    fail: (d: string) => new Error(d),
  };
  const { value, end } = unpickle(new Uint8Array(p.stop()), opts);
  assert.equal(end, p.out.length + 1);
  const d = value as PyDict;
  assert.deepEqual(d.get("a"), [1, -2, 2n ** 70n, 0.5, null, true]);
  assert.deepEqual((d.get("t") as PyTuple).items, [7, "x"]);
  assert.deepEqual(d.get("b"), new Uint8Array([0]));
  assert.throws(
    () =>
      unpickle(
        new Uint8Array(new Pickle().global("os", "system").stop()),
        opts,
      ),
    /refused os\.system/,
  );
  // NEWOBJ of an allowed class is still refused: nothing is constructed.
  let called = false;
  const allowed = {
    ...opts,
    findGlobal: (m: string, n: string) =>
      new PyGlobal(m, n, () => {
        called = true;
        return null;
      }),
  };
  assert.throws(
    () =>
      unpickle(
        new Uint8Array(
          new Pickle().global("collections", "OrderedDict").op(0x29, 0x81)
            .stop(),
        ),
        allowed,
      ),
    /refused collections\.OrderedDict/,
  );
  assert.equal(called, false);
});

Deno.test("unpickle reads protocol 4's frames, memoized strings and STACK_GLOBAL", () => {
  // pickle.dumps(collections.OrderedDict(a=1), 4) by Python 3.11: a frame,
  // STACK_GLOBAL from two memoized short strings, REDUCE, SETITEM.
  const hex =
    "80049529000000000000008c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c0161944b01732e";
  const bytes = new Uint8Array(
    hex.match(/../g)!.map((h) => parseInt(h, 16)),
  );
  const calls: string[] = [];
  const { value } = unpickle(bytes, {
    findGlobal: (m, n) =>
      new PyGlobal(m, n, () => {
        calls.push(`${m}.${n}`);
        return new PyDict();
      }),
    refuse: (n) => new Error(`refused ${n}`),
    fail: (d) => new Error(d),
  });
  assert.deepEqual(calls, ["collections.OrderedDict"]);
  assert.deepEqual([...(value as PyDict).entries], [["a", 1]]);
});

Deno.test("crc32 matches the standard check value", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});
