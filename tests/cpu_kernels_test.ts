import { CpuBackend } from "../cpu/mod.ts";
import { assertClose } from "./check.ts";

Deno.test("reduceSum() writes only its output's elements, even into a larger buffer", () => {
  const cpu = new CpuBackend();
  const x = cpu.alloc(6);
  cpu.write(x, Float32Array.of(1, 2, 3, 4, 5, 6));
  const y = cpu.alloc(5);
  cpu.fill({ y, value: -7 });
  cpu.reduceSum({
    alpha: 1,
    x,
    shape: [1, 2, 3],
    beta: 0,
    y,
    yShape: [1, 2, 1],
  });
  assertClose(cpu.read(y), [6, 15, -7, -7, -7], "row sums and untouched tail");
});
