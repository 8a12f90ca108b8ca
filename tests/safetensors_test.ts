import { dirname, join } from "node:path";
import {
  decodeSafetensors,
  encodeSafetensors,
  type HostTensor,
  parseTemporaryName,
  readSafetensors,
  removeStaleTemporaries,
  writeFileAtomic,
  writeSafetensors,
} from "../nn/safetensors.ts";
import { assert, assertThrows } from "./assert.ts";

/** Bit patterns, so NaN payloads and -0 compare exactly. */
function bits(a: Float32Array): number[] {
  return [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
}

/** A file from a header string and a data buffer, per the format. */
function build(
  header: string,
  data: number[] | Uint8Array = [],
  headerLength?: number,
): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(
    0,
    BigInt(headerLength ?? h.length),
    true,
  );
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** One F32 entry's JSON. */
function f32(shape: number[], begin: number, end: number): string {
  return JSON.stringify({
    dtype: "F32",
    shape,
    data_offsets: [begin, end],
  });
}

/** The file's element values, exactly (and NaN payload bits where set). */
function sample(): Map<string, HostTensor> {
  const big = new Float32Array(3 * 5 * 7 + 10);
  for (let i = 0; i < big.length; i++) big[i] = Math.sin(i) * 10 ** (i % 7);
  const specials = new Float32Array(8);
  new Uint32Array(specials.buffer).set([
    0x7fa12345, // NaN with a payload
    0x80000000, // -0
    0x7f800000,
    0xff800000,
    0x00000001, // smallest subnormal
    0x7f7fffff, // largest finite
    0,
    0xffc00001, // negative NaN
  ]);
  return new Map<string, HostTensor>([
    // A view with a byte offset, to check that only its own values are used.
    ["conv1.weight", { shape: [3, 5, 7], data: big.subarray(3, 3 + 105) }],
    ["scalar", { shape: [], data: new Float32Array([Math.PI]) }],
    ["empty", { shape: [0, 3], data: new Float32Array(0) }],
    ["layer1.0.bn2.running_var", { shape: [8], data: specials }],
    ["odd", { shape: [1, 3], data: new Float32Array([1, 2, 3]) }],
    ["empty.last", { shape: [4, 0], data: new Float32Array(0) }],
  ]);
}

const METADATA = { format: "pt", epoch: "3", "ünï ✓": "値", empty: "" };

Deno.test("safetensors round trip keeps order, shapes, metadata and exact bits", () => {
  const tensors = sample();
  const bytes = encodeSafetensors(tensors, METADATA);

  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0, "data buffer starts at a multiple of 8");
  const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(headerText, /^\{.*\} *$/s, "header is padded with spaces");
  const header = JSON.parse(headerText);
  assert.deepEqual(header.__metadata__, METADATA);
  assert.deepEqual(header["scalar"], {
    dtype: "F32",
    shape: [],
    data_offsets: [420, 424],
  });
  assert.equal(bytes.length, 8 + n + 4 * (105 + 1 + 8 + 3));

  const decoded = decodeSafetensors(bytes);
  assert.deepEqual(decoded.metadata, METADATA);
  assert.deepEqual([...decoded.tensors.keys()], [...tensors.keys()]);
  for (const [name, t] of tensors) {
    const got = decoded.tensors.get(name)!;
    assert.deepEqual(got.shape, t.shape, name);
    assert.deepEqual(bits(got.data), bits(t.data), name);
  }

  // Bytes that sit at an odd offset inside a larger buffer decode the same.
  const inside = new Uint8Array(bytes.length + 5);
  inside.set(bytes, 3);
  const again = decodeSafetensors(inside.subarray(3, 3 + bytes.length));
  for (const [name, t] of tensors) {
    assert.deepEqual(bits(again.tensors.get(name)!.data), bits(t.data), name);
  }

  // The decoded arrays are copies: reusing the input bytes leaves them be.
  const before = bits(decoded.tensors.get("odd")!.data);
  bytes.fill(0);
  assert.deepEqual(bits(decoded.tensors.get("odd")!.data), before);
});

Deno.test("safetensors with no tensors and no metadata; pairs as input", () => {
  const empty = decodeSafetensors(encodeSafetensors([]));
  assert.equal(empty.tensors.size, 0);
  assert.deepEqual(empty.metadata, {});
  const { tensors } = decodeSafetensors(
    encodeSafetensors([["b", { shape: [2], data: new Float32Array([1, 2]) }], [
      "a",
      { shape: [], data: new Float32Array([3]) },
    ]]),
  );
  assert.deepEqual([...tensors.keys()], ["b", "a"]);
});

Deno.test("a file written byte by byte decodes F32, F16, BF16 and F64", () => {
  const header = '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},' +
    '"h":{"dtype":"F16","shape":[2,4],"data_offsets":[12,28]},' +
    '"b":{"dtype":"BF16","shape":[5],"data_offsets":[28,38]},' +
    '"d":{"dtype":"F64","shape":[2,2],"data_offsets":[38,70]},' +
    '"__metadata__":{"by":"hand"}}';
  // So the data starts at byte 262, aligned for none of the wider types.
  assert.equal(header.length, 254);
  const data = [
    // F32: 1, -2.5, 0.1 (0x3dcccccd)
    ...[0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0xcd, 0xcc, 0xcc, 0x3d],
    // F16: 1, -2, 2^-24 (smallest subnormal), 1023 * 2^-24 (largest
    // subnormal), inf, -inf, NaN, -0
    ...[0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x03],
    ...[0x00, 0x7c, 0x00, 0xfc, 0x00, 0x7e, 0x00, 0x80],
    // BF16: 1, 3.140625, 2^-133 (smallest subnormal), -inf, NaN with payload
    ...[0x80, 0x3f, 0x49, 0x40, 0x01, 0x00, 0x80, 0xff, 0xc1, 0x7f],
    // F64: 0.1, 1 + 2^-24 and 1 + 3 * 2^-24 (ties, to even), 1e300
    ...[0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f],
    ...[0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0xf0, 0x3f],
    ...[0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0xf0, 0x3f],
    ...[0x9c, 0x75, 0x00, 0x88, 0x3c, 0xe4, 0x37, 0x7e],
  ];
  const file = new Uint8Array([
    254,
    0,
    0,
    0,
    0,
    0,
    0,
    0, // header length, little-endian u64
    ...new TextEncoder().encode(header),
    ...data,
  ]);
  const { tensors, metadata } = decodeSafetensors(file);
  assert.deepEqual(metadata, { by: "hand" });
  const expect = (name: string, shape: number[], values: number[]) => {
    const t = tensors.get(name)!;
    assert.deepEqual(t.shape, shape, name);
    assert.equal(t.data.length, values.length, name);
    values.forEach((v, i) =>
      assert.ok(Object.is(t.data[i], v), `${name}[${i}] = ${t.data[i]} ≠ ${v}`)
    );
  };
  expect("a", [3], [1, -2.5, Math.fround(0.1)]);
  expect("h", [2, 4], [
    1,
    -2,
    2 ** -24,
    1023 * 2 ** -24,
    Infinity,
    -Infinity,
    NaN,
    -0,
  ]);
  expect("b", [5], [1, 3.140625, 2 ** -133, -Infinity, NaN]);
  expect("d", [2, 2], [Math.fround(0.1), 1, 1 + 2 ** -22, Infinity]);
  assert.equal(bits(tensors.get("h")!.data)[6], 0x7fc00000);
  assert.equal(bits(tensors.get("b")!.data)[4], 0x7fc10000, "NaN payload");
});

Deno.test("every F16 value decodes exactly", () => {
  const halves = new Uint8Array(2 * 65536);
  for (let h = 0; h < 65536; h++) {
    halves[2 * h] = h & 0xff;
    halves[2 * h + 1] = h >> 8;
  }
  const file = build(
    '{"x":{"dtype":"F16","shape":[65536],"data_offsets":[0,131072]}}',
    halves,
  );
  const got = decodeSafetensors(file).tensors.get("x")!.data;
  const gotBits = bits(got);
  for (let h = 0; h < 65536; h++) {
    const sign = h >> 15 ? -1 : 1;
    const e = (h >> 10) & 31;
    const m = h & 1023;
    const want = e === 0
      ? sign * m * 2 ** -24
      : e === 31
      ? (m ? NaN : sign * Infinity)
      : sign * 2 ** (e - 15) * (1 + m / 1024);
    if (!Object.is(got[h], want)) {
      assert.fail(`F16 0x${h.toString(16)} gave ${got[h]}, expected ${want}`);
    }
    if (e === 31 && m) {
      // NaN keeps its sign and payload.
      assert.equal(
        gotBits[h],
        (((h & 0x8000) << 16) | 0x7f800000 | (m << 13)) >>> 0,
      );
    }
  }
});

Deno.test("malformed safetensors give one clear error each", () => {
  const data8 = new Uint8Array(8);
  const entry = (info: unknown) => build(JSON.stringify({ a: info }), data8);
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(5), /^safetensors: 5 bytes is too short/],
    [
      build("{}", [], 1000),
      /header length 1000 bytes is more than the 2 bytes/,
    ],
    [
      build("{}", [], 2 ** 40),
      /header length 1099511627776 bytes is over the 100000000-byte limit/,
    ],
    [
      (() => {
        const f = build("{}");
        f.fill(0xff, 0, 8);
        return f;
      })(),
      /header length 18446744073709551615 bytes is over/,
    ],
    [build("", []), /header does not start with "\{"/],
    [build(" {}"), /header does not start with "\{"/],
    [build("[1]"), /header does not start with "\{"/],
    [
      (() => {
        const f = build("{  }");
        f[9] = 0xff;
        return f;
      })(),
      /header is not valid UTF-8/,
    ],
    [build('{"a":'), /header is not valid JSON/],
    [build('{"a":1}'), /header entry of tensor "a" is not an object/],
    [build('{"a":[]}'), /header entry of tensor "a" is not an object/],
    [entry({ shape: [2], data_offsets: [0, 8] }), /tensor "a" has no dtype/],
    [
      entry({ dtype: 4, shape: [2], data_offsets: [0, 8] }),
      /tensor "a" has a dtype that is not a string/,
    ],
    [entry({ dtype: "F32", data_offsets: [0, 8] }), /tensor "a" has no shape/],
    [
      entry({ dtype: "F32", shape: "2", data_offsets: [0, 8] }),
      /tensor "a" has a shape that is not a list of non-negative integers/,
    ],
    [
      entry({ dtype: "F32", shape: [-2], data_offsets: [0, 8] }),
      /shape that is not a list/,
    ],
    [
      entry({ dtype: "F32", shape: [1.5], data_offsets: [0, 8] }),
      /shape that is not a list/,
    ],
    [entry({ dtype: "F32", shape: [2] }), /tensor "a" has no data_offsets/],
    [
      entry({ dtype: "F32", shape: [2], data_offsets: [0] }),
      /tensor "a" has data_offsets that are not two non-negative integers/,
    ],
    [
      entry({ dtype: "F32", shape: [2], data_offsets: [0, "8"] }),
      /data_offsets that are not two/,
    ],
    [
      entry({ dtype: "F32", shape: [2], data_offsets: [0, 8, 9] }),
      /data_offsets that are not two/,
    ],
    [
      build(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e400]}}',
        data8,
      ),
      /data_offsets that are not two/,
    ],
    [
      entry({ dtype: "U8", shape: [8], data_offsets: [0, 8] }),
      /tensor "a" has dtype U8, which this toolkit cannot read/,
    ],
    [
      entry({ dtype: "BOOL", shape: [8], data_offsets: [0, 8] }),
      /tensor "a" has dtype BOOL, which/,
    ],
    [
      entry({ dtype: "F31", shape: [2], data_offsets: [0, 8] }),
      /tensor "a" has unknown dtype "F31"/,
    ],
    [
      entry({ dtype: "F32", shape: [4], data_offsets: [0, 16] }),
      /tensor "a" has data_offsets \[0, 16\] outside the data buffer of 8 bytes/,
    ],
    [
      entry({ dtype: "F32", shape: [0], data_offsets: [8, 4] }),
      /tensor "a" has data_offsets \[8, 4\] outside the data buffer of 8 bytes/,
    ],
    [
      entry({ dtype: "F32", shape: [3], data_offsets: [0, 8] }),
      /tensor "a" of dtype F32 and shape \[3\] needs 12 bytes, but data_offsets \[0, 8\] span 8/,
    ],
    [
      entry({ dtype: "F64", shape: [0, 2], data_offsets: [0, 8] }),
      /needs 0 bytes, but data_offsets \[0, 8\] span 8/,
    ],
    [
      entry({ dtype: "F32", shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] }),
      /tensor "a" of dtype F32 and shape \[1099511627776, 1099511627776\] needs/,
    ],
    [
      build(
        `{"a":${f32([1], 0, 4)},"b":${f32([1], 8, 12)}}`,
        new Uint8Array(12),
      ),
      /bytes \[4, 8\) of the data buffer belong to no tensor/,
    ],
    [
      build(`{"a":${f32([1], 4, 8)}}`, data8),
      /bytes \[0, 4\) of the data buffer belong to no tensor/,
    ],
    [
      build(`{"a":${f32([1], 0, 4)}}`, data8),
      /bytes \[4, 8\) of the data buffer belong to no tensor/,
    ],
    [
      build(
        `{"a":${f32([2], 0, 8)},"b":${f32([2], 4, 12)}}`,
        new Uint8Array(12),
      ),
      /tensors "a" \[0, 8\] and "b" \[4, 12\] overlap/,
    ],
    [
      build(`{"a":${f32([2], 0, 8)},"b":${f32([2], 0, 8)}}`, data8),
      /tensors "a" \[0, 8\] and "b" \[0, 8\] overlap/,
    ],
    [
      build(`{"a":${f32([2], 0, 8)},"e":${f32([0], 4, 4)}}`, data8),
      /tensors "a" \[0, 8\] and "e" \[4, 4\] overlap/,
    ],
    [
      build('{"__metadata__":"pt"}'),
      /__metadata__ is not an object of strings/,
    ],
    [
      build('{"__metadata__":null}'),
      /__metadata__ is not an object of strings/,
    ],
    [
      build('{"__metadata__":["pt"]}'),
      /__metadata__ is not an object of strings/,
    ],
    [
      build('{"__metadata__":{"epoch":3}}'),
      /__metadata__ value of "epoch" is not a string/,
    ],
  ];
  for (const [bytes, pattern] of cases) {
    assertThrows(() => decodeSafetensors(bytes), pattern);
  }
  // An empty tensor at the end of the data buffer is in range.
  const ok = build(`{"a":${f32([2], 0, 8)},"e":${f32([0, 5], 8, 8)}}`, data8);
  assert.deepEqual(decodeSafetensors(ok).tensors.get("e")!.shape, [0, 5]);
});

/** Decodes, requiring success or a plain Error with a message. */
function decodeOrClearError(bytes: Uint8Array, what: string): boolean {
  try {
    decodeSafetensors(bytes);
    return true;
  } catch (e) {
    assert.ok(
      e instanceof Error && e.constructor === Error &&
        /^safetensors: \S/.test(e.message),
      `${what}: ${e}`,
    );
    return false;
  }
}

Deno.test("truncated or corrupted files never crash the decoder", () => {
  const bytes = encodeSafetensors(sample(), METADATA);
  for (let cut = 0; cut < bytes.length; cut++) {
    assert.equal(
      decodeOrClearError(bytes.subarray(0, cut), `cut at ${cut}`),
      false,
      `a copy cut at ${cut} of ${bytes.length} bytes decoded`,
    );
  }
  // Flip bytes of the length and the header: each gives a result or an Error.
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  for (let i = 0; i < 8 + n; i++) {
    for (const v of [0x00, 0x22, 0x2c, 0x30, 0x39, 0x5d, 0x7d, 0xff]) {
      const copy = bytes.slice();
      copy[i] = v;
      decodeOrClearError(copy, `byte ${i} set to ${v}`);
    }
  }
});

Deno.test("encodeSafetensors rejects what it cannot write faithfully", () => {
  const t = { shape: [2], data: new Float32Array(2) };
  assertThrows(
    () => encodeSafetensors([["a", t], ["a", t]]),
    /tensor "a" is given twice/,
  );
  assertThrows(
    () => encodeSafetensors([["__metadata__", t]]),
    /"__metadata__" is reserved/,
  );
  assertThrows(
    () => encodeSafetensors([["a", { shape: [3], data: new Float32Array(2) }]]),
    /tensor "a" has 2 values, but shape \[3\] holds 3/,
  );
  assertThrows(
    () =>
      encodeSafetensors([["a", { shape: [-1], data: new Float32Array(0) }]]),
    /tensor "a" has invalid shape \[-1\]/,
  );
  assertThrows(
    () =>
      encodeSafetensors([], { epoch: 3 } as unknown as Record<string, string>),
    /metadata value of "epoch" is a number, not a string/,
  );
});

Deno.test("writeSafetensors and readSafetensors round trip, leaving no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "ckpt.safetensors");
    await writeSafetensors(path, sample(), METADATA);
    await writeSafetensors(path, sample(), { epoch: "4" }); // replaces it
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["ckpt.safetensors"]);
    const { tensors, metadata } = await readSafetensors(path);
    assert.deepEqual(metadata, { epoch: "4" });
    for (const [name, t] of sample()) {
      assert.deepEqual(bits(tensors.get(name)!.data), bits(t.data), name);
    }

    const bad = join(dir, "bad.safetensors");
    await Deno.writeFile(bad, new Uint8Array([1, 2, 3]));
    await assert.rejects(readSafetensors(bad), (e: Error) => {
      assert.equal(
        e.message,
        `${bad}: 3 bytes is too short for safetensors, which starts with an 8-byte header length`,
      );
      return true;
    });
    const missing = join(dir, "missing.safetensors");
    await assert.rejects(readSafetensors(missing), (e: Error) => {
      assert.ok(
        e instanceof Deno.errors.NotFound && e.message.includes(missing),
        e.message,
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a failed rename removes the temporary file and reports the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const target = join(dir, "taken.safetensors");
    await Deno.mkdir(target); // a file cannot be renamed over a folder
    await assert.rejects(writeSafetensors(target, sample()), (e: Error) => {
      assert.ok(e.message.startsWith(`cannot write ${target}: `), e.message);
      assert.ok(e.cause instanceof Error);
      return true;
    });
    const entries = [];
    for await (const e of Deno.readDir(dir)) entries.push(e);
    assert.deepEqual(entries.map((e) => [e.name, e.isDirectory]), [[
      "taken.safetensors",
      true,
    ]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an existing file is replaced only once the new one is complete", async () => {
  const dir = await Deno.makeTempDir();
  const rename = Deno.rename;
  try {
    const path = join(dir, "ckpt.safetensors");
    const old = encodeSafetensors([["w", {
      shape: [1],
      data: new Float32Array([1]),
    }]]);
    await writeFileAtomic(path, old);
    const next = encodeSafetensors(sample(), METADATA);

    // Up to the rename, the path holds the old file and the temporary file in
    // the same folder holds all of the new one.
    let checked = false;
    Deno.rename = async (from, to) => {
      assert.equal(to, path);
      assert.equal(dirname(String(from)), dir);
      assert.deepEqual(await Deno.readFile(path), old);
      assert.deepEqual(await Deno.readFile(from), next);
      checked = true;
      return rename(from, to);
    };
    await writeFileAtomic(path, next);
    assert.ok(checked);
    assert.deepEqual(await Deno.readFile(path), next);

    // A failure just before the rename (as a crash would be) keeps the old
    // file whole and leaves no temporary file.
    const crash = new Error("simulated crash");
    Deno.rename = () => Promise.reject(crash);
    await assert.rejects(writeFileAtomic(path, old), (e: Error) => {
      assert.equal(e.cause, crash);
      return true;
    });
    assert.deepEqual(await Deno.readFile(path), next);
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["ckpt.safetensors"]);

    // Bad tensors fail before anything is written.
    Deno.rename = rename;
    await assert.rejects(
      writeSafetensors(path, [["a", {
        shape: [2],
        data: new Float32Array(1),
      }]]),
      /tensor "a" has 1 values/,
    );
    assert.deepEqual(await Deno.readFile(path), next);
  } finally {
    Deno.rename = rename;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("I64 and I32 tensors (PyTorch's num_batches_tracked) read as float32", () => {
  const header = JSON.stringify({
    n: { dtype: "I64", shape: [], data_offsets: [0, 8] },
    m: { dtype: "I32", shape: [2], data_offsets: [8, 16] },
  });
  const head = new TextEncoder().encode(header);
  const bytes = new Uint8Array(8 + head.length + 16);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(head.length), true);
  bytes.set(head, 8);
  view.setBigInt64(8 + head.length, 12345n, true);
  view.setInt32(8 + head.length + 8, -7, true);
  view.setInt32(8 + head.length + 12, 1 << 20, true);
  const { tensors } = decodeSafetensors(bytes);
  assert.deepEqual([...tensors.get("n")!.data], [12345]);
  assert.deepEqual([...tensors.get("n")!.shape], []);
  assert.deepEqual([...tensors.get("m")!.data], [-7, 1 << 20]);
});

Deno.test("readSafetensors refuses a FIFO, a device and a folder by type, without blocking", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const zero = join(dir, "zero.safetensors");
    await Deno.symlink("/dev/zero", zero);
    const cases: [string, string][] = [
      [zero, "it is a character device, not a regular file"],
      [dir, "it is a folder, not a regular file"],
    ];
    const fifo = join(dir, "fifo.safetensors");
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output()
      .then((o) => o.success, () => false);
    if (made) {
      cases.push([fifo, "it is a FIFO (named pipe), not a regular file"]);
    }
    for (const [path, reason] of cases) {
      await assert.rejects(readSafetensors(path), (e: Error) => {
        assert.equal(e.message, `${path}: ${reason}`);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readSafetensors checks the header against the file's size before reading tensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A header that claims 4 GB of tensor data in a file of a few bytes.
    const path = join(dir, "claims.safetensors");
    const header = JSON.stringify({
      w: { dtype: "F32", shape: [1 << 30], data_offsets: [0, 4 * (1 << 30)] },
    });
    await Deno.writeFile(path, build(header, [0, 0, 0, 0]));
    await assert.rejects(readSafetensors(path), (e: Error) => {
      assert.match(
        e.message,
        /: tensor "w" has data_offsets \[0, 4294967296\] outside the data buffer of 4 bytes$/,
      );
      return true;
    });
    // A header length longer than the file.
    const long = join(dir, "long.safetensors");
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setBigUint64(0, 1000n, true);
    await Deno.writeFile(long, bytes);
    await assert.rejects(
      readSafetensors(long),
      /header length 1000 bytes is more than the 8 bytes that follow the length/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("removeStaleTemporaries removes only unlocked temporary files of the caller's kind", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const old = new Date(Date.now() - 60_000);
    const stale = `.a.safetensors.${Deno.pid}-00000000.tmp`;
    const locked = `.b.safetensors.${Deno.pid}-11111111.tmp`;
    const young = `.c.safetensors.${Deno.pid}-22222222.tmp`;
    const other = `.d.json.${Deno.pid}-33333333.tmp`;
    for (const name of [stale, locked, young, other]) {
      await Deno.writeFile(join(dir, name), new Uint8Array(1));
      if (name !== young) await Deno.utime(join(dir, name), old, old);
    }
    using writer = await Deno.open(join(dir, locked), { write: true });
    await writer.lock(true);
    const removed = await removeStaleTemporaries(
      dir,
      (target) => target.endsWith(".safetensors"),
    );
    assert.deepEqual(removed, [stale]);
    const left = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
    assert.deepEqual(left.sort(), [locked, young, other].sort());
    assert.deepEqual(
      await removeStaleTemporaries(join(dir, "none"), () => true),
      [],
    );
    assert.deepEqual(parseTemporaryName(".x.safetensors.12-abcdef01.tmp"), {
      target: "x.safetensors",
      pid: 12,
    });
    assert.deepEqual(parseTemporaryName(".x.safetensors.abcdef01.tmp"), {
      target: "x.safetensors",
      pid: null,
    });
    assert.equal(parseTemporaryName("x.safetensors"), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic names its temporary file with its process id and holds its lock until the rename", async () => {
  const dir = await Deno.makeTempDir();
  const rename = Deno.rename;
  try {
    const path = join(dir, "ckpt.safetensors");
    const seen: string[] = [];
    Deno.rename = async (from, to) => {
      seen.push(String(from));
      // Another process (here, another open file description) cannot take
      // the lock while the writer holds it.
      using other = await Deno.open(from, { read: true });
      assert.equal(await other.tryLock(true), false);
      return rename(from, to);
    };
    await writeFileAtomic(path, new Uint8Array([1, 2, 3]));
    assert.equal(seen.length, 1);
    assert.equal(dirname(seen[0]), dir);
    assert.deepEqual(parseTemporaryName(seen[0].slice(dir.length + 1)), {
      target: "ckpt.safetensors",
      pid: Deno.pid,
    });
  } finally {
    Deno.rename = rename;
    await Deno.remove(dir, { recursive: true });
  }
});
