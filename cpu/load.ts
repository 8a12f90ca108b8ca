/**
 * The machine's load, read off Linux's `/proc` (nn/proc.ts): how many
 * cores other processes keep busy, for the thread count that follows it
 * (threads.ts). Where `/proc` cannot be read (macOS, Windows) the readings
 * are null and nothing follows the load.
 *
 * @module
 */

import { readProc } from "../nn/proc.ts";

/**
 * CPU time in clock ticks: the machine's busy time (time stolen by the
 * hypervisor included: a core we do not get is as lost as one another
 * process takes), its total time over all cores, this process's own time
 * (all its threads), and the number of cores. Processes of a lower
 * priority than ours (a higher nice value: `nice make -j`) yield their
 * cores to us, so their time counts as busy only when we are niced too;
 * otherwise they would fill each core we leave and keep it.
 */
export interface CpuTimes {
  busy: number;
  total: number;
  self: number;
  cores: number;
}

/**
 * Parses `/proc/stat` and `/proc/self/stat`; null where either is not in
 * the expected form.
 */
export function parseCpuTimes(stat: string, selfStat: string): CpuTimes | null {
  const lines = stat.split("\n");
  // cpu user nice system idle iowait irq softirq steal (guest is in user).
  const f = lines[0].trim().split(/\s+/);
  if (f[0] !== "cpu" || f.length < 9) return null;
  const t = f.slice(1, 9).map(Number);
  if (t.some((x) => !Number.isFinite(x))) return null;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = t;
  const cores = lines.filter((l) => /^cpu\d+\s/.test(l)).length;
  // The command's name, in parentheses, may hold spaces: fields count from
  // the last ")"; utime and stime are the 14th and 15th.
  const rest = selfStat.slice(selfStat.lastIndexOf(")") + 1).trim()
    .split(/\s+/);
  const self = Number(rest[11]) + Number(rest[12]);
  // Our nice value, the 19th field.
  const ourNice = Number(rest[16]);
  if (cores === 0 || !Number.isFinite(self + ourNice)) return null;
  return {
    busy: user + (ourNice > 0 ? nice : 0) + system + irq + softirq + steal,
    total: user + nice + system + idle + iowait + irq + softirq + steal,
    self,
    cores,
  };
}

/**
 * The cores other processes kept busy between two readings (stolen time
 * included), and the cores this process used.
 */
export function coresBetween(
  a: CpuTimes,
  b: CpuTimes,
): { others: number; self: number } {
  const elapsed = (b.total - a.total) / b.cores;
  if (elapsed <= 0) return { others: 0, self: 0 };
  const self = (b.self - a.self) / elapsed;
  return { others: Math.max(0, (b.busy - a.busy) / elapsed - self), self };
}

/** This machine's CPU times, or null where `/proc` cannot be read. */
export function readCpuTimes(): CpuTimes | null {
  const stat = readProc("/proc/stat");
  const self = readProc("/proc/self/stat");
  return stat === null || self === null ? null : parseCpuTimes(stat, self);
}
