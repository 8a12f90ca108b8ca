import { Generator, randn } from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import "./device.ts";

Deno.test("Generator gives the same stream for the same seed and keys, another for others", () => {
  const draw = (g: Generator) =>
    Array.from({ length: 5 }, () => g.nextUint32());
  assert.deepEqual(draw(new Generator(42)), draw(new Generator(42)));
  assert.notDeepEqual(draw(new Generator(42)), draw(new Generator(43)));
  assert.deepEqual(draw(new Generator(1, 2, 3)), draw(new Generator(1, 2, 3)));
  assert.notDeepEqual(
    draw(new Generator(1, 2, 3)),
    draw(new Generator(1, 3, 2)),
  );
  assert.notDeepEqual(
    draw(new Generator(1, 2 ** 32)),
    draw(new Generator(1, 0)),
  );
});

Deno.test("uniform() and normal() have the right moments", () => {
  const g = new Generator(7);
  const n = 200_000;
  let su = 0, su2 = 0, sn = 0, sn2 = 0;
  for (let i = 0; i < n; i++) {
    const u = g.uniform();
    assert.ok(u >= 0 && u < 1);
    su += u;
    su2 += u * u;
    const z = g.normal();
    sn += z;
    sn2 += z * z;
  }
  // Standard errors at n = 2e5: ~6.5e-4 for the uniform mean, ~2.2e-3 for the normal's; allow 5 sigma.
  assert.ok(Math.abs(su / n - 0.5) < 5 * 6.5e-4);
  assert.ok(Math.abs(su2 / n - su * su / n / n - 1 / 12) < 1e-3);
  assert.ok(Math.abs(sn / n) < 5 * 2.2e-3);
  assert.ok(Math.abs(sn2 / n - 1) < 5 * 3.2e-3);
  const t = randn([1000], g, { mean: 3, std: 0.5 }).toArray();
  const m = t.reduce((a, b) => a + b, 0) / 1000;
  assert.ok(Math.abs(m - 3) < 0.1);
});

Deno.test("integer() is uniform over its range and permutation() is a permutation", () => {
  const g = new Generator(9);
  const counts = new Array(6).fill(0);
  for (let i = 0; i < 60_000; i++) counts[g.integer(0, 6)]++;
  // Each count is ~Binomial(60000, 1/6): sd ~91; allow 5 sd.
  for (const c of counts) assert.ok(Math.abs(c - 10_000) < 460, `count ${c}`);
  const p = g.permutation(100);
  assert.deepEqual(
    [...p].sort((a, b) => a - b),
    Array.from({ length: 100 }, (_, i) => i),
  );
  assert.notDeepEqual([...p], Array.from({ length: 100 }, (_, i) => i));
  assertThrows(() => g.integer(3, 3), /bad range \[3, 3\)/);
  assertThrows(() => new Generator(1.5), /seeds and keys must be integers/);
});

Deno.test("fillNormal() gives the same values as repeated normal() calls", () => {
  for (const [skip, length] of [[0, 7], [1, 6], [1, 1], [0, 0]]) {
    const a = new Generator(4);
    const b = new Generator(4);
    for (let i = 0; i < skip; i++) {
      a.normal();
      b.normal();
    }
    const filled = a.fillNormal(new Float32Array(length), 1, 2);
    const one = Float32Array.from({ length }, () => b.normal(1, 2));
    assert.deepEqual([...filled], [...one]);
    assert.equal(a.normal(), b.normal());
  }
});
