import { readFileSync } from 'node:fs';

/** USER_HZ: what /proc/<pid>/stat counts CPU time in; 100 on every Linux ABI Node runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * CPU seconds a process has used (user + system), from /proc/<pid>/stat. With `withReapedChildren`
 * it adds the children it has waited for (cutime + cstime): how socat's per-connection forks count.
 */
export function cpuSeconds(pid: number, withReapedChildren = false): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so field N is fields[N - 3].
  const ticks = (n: number) => Number(fields[n - 3]);
  const own = ticks(14) + ticks(15);
  return (withReapedChildren ? own + ticks(16) + ticks(17) : own) / CLOCK_TICKS_PER_SECOND;
}

/** Resident set size in bytes, from VmRSS in /proc/<pid>/status; with `peak`, the high-water mark (VmHWM). */
export function rssBytes(pid: number, peak = false): number {
  const field = peak ? 'VmHWM' : 'VmRSS';
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
  if (!match) throw new Error(`no ${field} for pid ${pid}`);
  return Number(match[1]) * 1024;
}

/** The live children of a process (its main thread's), e.g. socat's forks or nginx's workers. */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .split(' ')
      .filter((text) => text.trim() !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/** CPU seconds of a process and all its live descendants, plus the children it has reaped. */
export function treeCpuSeconds(pid: number): number {
  let total: number;
  try {
    total = cpuSeconds(pid, true);
  } catch {
    return 0;
  }
  for (const child of childPids(pid)) total += treeCpuSeconds(child);
  return total;
}

/** Resident bytes of a process and all its live descendants (nginx's master and workers). */
export function treeRssBytes(pid: number): number {
  let total: number;
  try {
    total = rssBytes(pid);
  } catch {
    return 0;
  }
  for (const child of childPids(pid)) total += treeRssBytes(child);
  return total;
}

/** Waits (bounded) until `pid` has no live children: socat's fork for a closed connection was reaped. */
export async function childrenGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (childPids(pid).length > 0) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

/** What the machine is, for the report. */
export function machineDescription(): { cpuModel: string; cores: number; kernel: string; node: string } {
  let cpuModel = 'unknown';
  let cores = 0;
  try {
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    cpuModel = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpuModel;
    cores = (cpuinfo.match(/^processor\s*:/gm) ?? []).length;
  } catch {
    // Not Linux: the figures that need /proc are skipped anyway.
  }
  let kernel = 'unknown';
  try {
    kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // as above
  }
  return { cpuModel, cores, kernel, node: process.version };
}
