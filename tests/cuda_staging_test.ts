/**
 * Pinned staging against a fake driver whose copies run only when the host
 * synchronizes the stream or an event: a copy reads its pinned source when it
 * runs, not when it is queued, so a missing wait shows as wrong data.
 */

import { driverStaging, Staging, type StagingDriver } from "../cuda/staging.ts";
import { assert, assertThrows } from "./assert.ts";

type Op =
  | { kind: "h2d"; dst: bigint; src: bigint; bytes: number }
  | { kind: "d2h"; dst: bigint; src: bigint; bytes: number }
  | { kind: "event"; event: bigint };

const value = (p: Deno.PointerValue): bigint =>
  p === null ? 0n : Deno.UnsafePointer.value(p);

/** Finds the allocation holding [address, address + bytes). */
function resolve(
  memory: Map<bigint, ArrayBuffer>,
  address: bigint,
  bytes: number,
  what: string,
): Uint8Array {
  for (const [base, buffer] of memory) {
    const offset = Number(address - base);
    if (offset >= 0 && offset + bytes <= buffer.byteLength) {
      return new Uint8Array(buffer, offset, bytes);
    }
  }
  throw new Error(
    `fake: ${bytes} bytes at 0x${address.toString(16)} are not ${what}`,
  );
}

/** One stream, device memory in a Map, copies deferred to the next wait. */
class FakeDriver implements StagingDriver {
  readonly stream: Deno.PointerValue = Deno.UnsafePointer.create(0x5000n);
  readonly device = new Map<bigint, ArrayBuffer>();
  readonly pinned = new Map<bigint, ArrayBuffer>();
  readonly events = new Set<bigint>();
  readonly log: string[] = [];
  queue: Op[] = [];
  /** Makes eventSynchronize return at once, as if the staging had not waited. */
  ignoreEventWaits = false;
  #nextDevice = 0x7f00_0000_0000n;
  #nextHost = 0x1000_0000n;
  #nextEvent = 0x9000n;

  /** A device buffer of `bytes` bytes filled with NaN bit patterns. */
  deviceAlloc(bytes: number): bigint {
    const address = this.#nextDevice;
    this.#nextDevice += BigInt(Math.ceil(bytes / 256) * 256 + 256);
    const buffer = new ArrayBuffer(bytes);
    new Uint8Array(buffer).fill(0xff);
    this.device.set(address, buffer);
    return address;
  }

  /** What the device holds now (without running queued copies). */
  deviceFloats(address: bigint, length: number): Float32Array {
    return new Float32Array(
      resolve(this.device, address, 4 * length, "device memory").slice().buffer,
    );
  }

  hostAlloc(
    bytes: number,
  ): { pointer: Deno.PointerObject; buffer: ArrayBuffer } {
    this.log.push(`hostAlloc ${bytes}`);
    const address = this.#nextHost;
    this.#nextHost += BigInt(bytes + 4096);
    const buffer = new ArrayBuffer(bytes);
    this.pinned.set(address, buffer);
    return { pointer: Deno.UnsafePointer.create(address)!, buffer };
  }

  hostFree(p: Deno.PointerObject): void {
    const address = value(p);
    this.log.push(`hostFree 0x${address.toString(16)}`);
    const buffer = this.pinned.get(address);
    if (!buffer) throw new Error("fake: hostFree of unknown memory");
    for (const op of this.queue) {
      if (op.kind === "event") continue;
      const host = op.kind === "h2d" ? op.src : op.dst;
      const offset = Number(host - address);
      if (offset >= 0 && offset < buffer.byteLength) {
        throw new Error("fake: pinned memory freed under a queued copy");
      }
    }
    this.pinned.delete(address);
  }

  copyHostToDeviceAsync(
    dst: bigint,
    src: Deno.PointerValue,
    bytes: number,
    stream: Deno.PointerValue,
  ): void {
    this.#checkStream(stream);
    this.log.push(`h2d ${bytes} from 0x${value(src).toString(16)}`);
    resolve(this.device, dst, bytes, "device memory");
    resolve(this.pinned, value(src), bytes, "pinned memory");
    this.queue.push({ kind: "h2d", dst, src: value(src), bytes });
  }

  copyDeviceToHostAsync(
    dst: Deno.PointerValue,
    src: bigint,
    bytes: number,
    stream: Deno.PointerValue,
  ): void {
    this.#checkStream(stream);
    this.log.push(`d2h ${bytes} to 0x${value(dst).toString(16)}`);
    resolve(this.device, src, bytes, "device memory");
    resolve(this.pinned, value(dst), bytes, "pinned memory");
    this.queue.push({ kind: "d2h", dst: value(dst), src, bytes });
  }

  streamSynchronize(stream: Deno.PointerValue): void {
    this.#checkStream(stream);
    this.log.push("streamSynchronize");
    this.#run(this.queue.length);
  }

  eventCreate(): Deno.PointerValue {
    const e = this.#nextEvent++;
    this.events.add(e);
    this.log.push(`eventCreate ${e}`);
    return Deno.UnsafePointer.create(e);
  }

  eventRecord(event: Deno.PointerValue, stream: Deno.PointerValue): void {
    this.#checkStream(stream);
    this.#checkEvent(event);
    this.queue.push({ kind: "event", event: value(event) });
  }

  eventSynchronize(event: Deno.PointerValue): void {
    this.#checkEvent(event);
    const e = value(event);
    this.log.push(`eventSynchronize ${e}`);
    if (this.ignoreEventWaits) return;
    // As CUDA: waits for the latest record; returns at once if none is queued.
    let last = -1;
    this.queue.forEach((op, i) => {
      if (op.kind === "event" && op.event === e) last = i;
    });
    this.#run(last + 1);
  }

  eventDestroy(event: Deno.PointerValue): void {
    this.#checkEvent(event);
    this.events.delete(value(event));
    this.log.push(`eventDestroy ${value(event)}`);
  }

  /** Runs the first `count` queued operations, in order. */
  #run(count: number): void {
    for (const op of this.queue.splice(0, count)) {
      if (op.kind === "h2d") {
        resolve(this.device, op.dst, op.bytes, "device memory").set(
          resolve(this.pinned, op.src, op.bytes, "pinned memory"),
        );
      } else if (op.kind === "d2h") {
        resolve(this.pinned, op.dst, op.bytes, "pinned memory").set(
          resolve(this.device, op.src, op.bytes, "device memory"),
        );
      }
    }
  }

  #checkStream(stream: Deno.PointerValue): void {
    if (value(stream) !== value(this.stream)) {
      throw new Error("fake: a call on another stream");
    }
  }

  #checkEvent(event: Deno.PointerValue): void {
    if (!this.events.has(value(event))) throw new Error("fake: dead event");
  }
}

/** Floats 0.5, 1.5, ... from `start`, distinct per call site. */
function ramp(length: number, start: number): Float32Array {
  return Float32Array.from({ length }, (_, i) => start + i + 0.5);
}

const CHUNK_BYTES = 1024;
const CHUNK = CHUNK_BYTES / 4;

Deno.test("write() then read() round-trips 0, 1, chunk-1, chunk and 3.5 chunks", () => {
  for (const length of [0, 1, CHUNK - 1, CHUNK, 3.5 * CHUNK]) {
    const fake = new FakeDriver();
    const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
    const dst = fake.deviceAlloc(4 * length);
    const data = ramp(length, 100);
    staging.write(dst, data);
    // The host array may be reused at once.
    const expected = data.slice();
    data.fill(-1);
    const back = staging.read(dst, length);
    assert.deepEqual(back, expected, `length ${length}`);
    assert.deepEqual(fake.deviceFloats(dst, length), expected);
    assert.equal(fake.queue.length, 0, "read left copies queued");
    staging.dispose();
    assert.equal(fake.pinned.size, 0);
    assert.equal(fake.events.size, 0);
  }
});

Deno.test("a write that comes back to a chunk waits on its event first", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  const buffers = [0, 1, 2].map(() => fake.deviceAlloc(CHUNK_BYTES));
  const data = buffers.map((_, i) => ramp(CHUNK, 1000 * i));
  staging.write(buffers[0], data[0]); // chunk 0
  staging.write(buffers[1], data[1]); // chunk 1
  assert.ok(!fake.log.some((l) => l.startsWith("eventSynchronize")));
  const before = fake.log.length;
  staging.write(buffers[2], data[2]); // chunk 0 again
  const third = fake.log.slice(before);
  // Waits for chunk 0's event (the first one created), then copies.
  assert.equal(third[0], `eventSynchronize ${0x9000n}`);
  assert.match(third[1], /^h2d 1024 from /);
  assert.ok(!fake.log.includes("streamSynchronize"));
  // Chunk 0's first copy ran before it was overwritten.
  assert.deepEqual(fake.deviceFloats(buffers[0], CHUNK), data[0]);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(staging.read(buffers[i], CHUNK), data[i]);
  }
  staging.dispose();
});

Deno.test("the fake shows a missing wait as wrong data", () => {
  // The same writes through a driver whose event waits do nothing.
  const fake = new FakeDriver();
  fake.ignoreEventWaits = true;
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  const buffers = [0, 1, 2].map(() => fake.deviceAlloc(CHUNK_BYTES));
  const data = buffers.map((_, i) => ramp(CHUNK, 1000 * i));
  for (let i = 0; i < 3; i++) staging.write(buffers[i], data[i]);
  fake.streamSynchronize(fake.stream);
  assert.deepEqual(fake.deviceFloats(buffers[0], CHUNK), data[2]);
});

Deno.test("small writes are packed into one chunk without waiting", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  const dst = fake.deviceAlloc(4 * 3 * 10);
  for (let i = 0; i < 10; i++) {
    staging.write(dst + BigInt(12 * i), ramp(3, 10 * i));
  }
  assert.ok(!fake.log.some((l) => l.includes("Synchronize")));
  assert.equal(fake.log.filter((l) => l.startsWith("hostAlloc")).length, 1);
  // Each piece on its own 64-byte line of the chunk.
  const sources = fake.log.filter((l) => l.startsWith("h2d")).map((l) =>
    BigInt(l.split(" from ")[1])
  );
  sources.forEach((s, i) => assert.equal(s - sources[0], BigInt(64 * i)));
  const back = staging.read(dst, 30);
  for (let i = 0; i < 10; i++) {
    assert.deepEqual(back.subarray(3 * i, 3 * i + 3), ramp(3, 10 * i));
  }
  staging.dispose();
});

Deno.test("read() sees every earlier write, the latest one last", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  const length = 3 * CHUNK + 7;
  const dst = fake.deviceAlloc(4 * length);
  const expected = new Float32Array(length);
  // Overlapping writes of varied sizes and offsets, no wait between them.
  const writes: [number, number][] = [
    [0, length],
    [5, 40],
    [CHUNK - 3, CHUNK + 9],
    [2 * CHUNK, 1],
    [17, 2 * CHUNK],
    [length - 1, 1],
  ];
  writes.forEach(([offset, n], k) => {
    const data = ramp(n, 10000 * (k + 1));
    staging.write(dst + BigInt(4 * offset), data);
    expected.set(data, offset);
  });
  assert.deepEqual(staging.read(dst, length), expected);
  // A read of a part, then more writes and a read again.
  assert.deepEqual(
    staging.read(dst + 40n, 100),
    expected.subarray(10, 110),
  );
  const tail = ramp(CHUNK, -5000);
  staging.write(dst + BigInt(4 * (length - CHUNK)), tail);
  expected.set(tail, length - CHUNK);
  assert.deepEqual(staging.read(dst, length), expected);
  staging.dispose();
});

Deno.test("write() accepts a subarray and a single chunk", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, {
    chunkBytes: CHUNK_BYTES,
    chunks: 1,
  });
  const whole = ramp(4 * CHUNK, 7);
  const part = whole.subarray(3, 3 + 2 * CHUNK + 5);
  const dst = fake.deviceAlloc(part.byteLength);
  staging.write(dst, part);
  assert.deepEqual(staging.read(dst, part.length), part.slice());
  assert.equal(fake.log.filter((l) => l.startsWith("hostAlloc")).length, 1);
  staging.dispose();
});

Deno.test("read() of 0 elements synchronizes the stream", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  const dst = fake.deviceAlloc(16);
  staging.write(dst, ramp(4, 0));
  assert.equal(staging.read(dst, 0).length, 0);
  assert.equal(fake.queue.length, 0);
  assert.deepEqual(fake.deviceFloats(dst, 4), ramp(4, 0));
  staging.dispose();
});

Deno.test("pinned chunks are allocated on first use and freed by dispose()", () => {
  const fake = new FakeDriver();
  const staging = new Staging(fake, fake.stream, { chunkBytes: CHUNK_BYTES });
  assert.equal(staging.pinnedBytes, 0);
  assert.equal(fake.log.length, 0);
  const dst = fake.deviceAlloc(4 * CHUNK + 4);
  staging.write(dst, ramp(CHUNK + 1, 0));
  assert.equal(staging.pinnedBytes, 2 * CHUNK_BYTES);
  // dispose() waits for the queued copies before freeing their source
  // (the fake throws when pinned memory is freed under a queued copy).
  assert.ok(fake.queue.length > 0);
  staging.dispose();
  assert.equal(fake.pinned.size, 0);
  assert.equal(fake.events.size, 0);
  assert.deepEqual(fake.deviceFloats(dst, CHUNK + 1), ramp(CHUNK + 1, 0));
  staging.dispose(); // a second dispose does nothing
  assertThrows(() => staging.write(dst, ramp(1, 0)), /disposed/);
  assertThrows(() => staging.read(dst, 1), /disposed/);
});

Deno.test("Staging rejects bad options and lengths", () => {
  const fake = new FakeDriver();
  for (const chunkBytes of [0, 100, -64, 64.5]) {
    assertThrows(
      () => new Staging(fake, fake.stream, { chunkBytes }),
      /chunkBytes must be a positive multiple of 64/,
    );
  }
  assertThrows(
    () => new Staging(fake, fake.stream, { chunks: 0 }),
    /chunks must be a whole number >= 1/,
  );
  const staging = new Staging(fake, fake.stream);
  assertThrows(() => staging.read(0n, -1), /whole number of elements/);
  assertThrows(() => staging.read(0n, 1.5), /whole number of elements/);
  staging.dispose();
});

Deno.test("driverStaging() binds the driver without opening it", () => {
  const driver = driverStaging();
  for (const f of Object.values(driver)) assert.equal(typeof f, "function");
  assert.equal(Object.keys(driver).length, 9);
});
