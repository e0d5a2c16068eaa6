/**
 * The PID 1 duties of `run` (src/init) in a real guest: the runtime is the QEMU guest's PID 1 (exec'd by
 * scripts/vm/guest/init.sh, which leaves lo down and the hostname unset), its only interface is lo, and this file
 * runs as its app. On the host these duties are tested in a PID namespace only.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { describe, it } from 'node:test';
import { eventually } from '../helpers/cli-run.js';
import { GUEST_SKIP, RUNTIME } from './guest.js';

const IFF_UP = 0x1;

/** State and parent of a process from /proc/PID/stat, or undefined once it is gone. */
function processState(pid: number): { state: string; ppid: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
  const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: state!, ppid: Number(ppid) };
}

describe('PID 1 duties in a real guest (lo, hostname, reaping)', { skip: GUEST_SKIP, timeout: 120_000 }, () => {
  it("pid1: the runtime (`run`, from the bundle) is the guest's PID 1", () => {
    const argv = readFileSync('/proc/1/cmdline', 'utf8').split('\0');
    assert.ok(
      argv.some((arg) => arg.endsWith('enclave-runtime.mjs')),
      argv.join(' '),
    );
    assert.ok(argv.includes('run'), argv.join(' '));
  });

  it('pid1: lo, the only interface, is up', () => {
    assert.deepEqual(readdirSync('/sys/class/net'), ['lo']);
    const flags = Number(readFileSync('/sys/class/net/lo/flags', 'utf8').trim());
    assert.equal(flags & IFF_UP, IFF_UP, `lo flags ${flags.toString(16)}`);
  });

  it('pid1: the hostname is the configured one', () => {
    assert.equal(hostname(), RUNTIME.hostname);
    assert.equal(readFileSync('/proc/sys/kernel/hostname', 'utf8').trim(), RUNTIME.hostname);
  });

  it('pid1: orphans re-parented to PID 1 are reaped when they exit (no zombies)', async () => {
    // Each shell starts a sleeper and exits at once: the sleepers are orphans whose parent becomes PID 1.
    const pids: number[] = [];
    for (let i = 0; i < 10; i++) {
      const shell = spawnSync('/bin/sh', ['-c', 'sleep 2 >/dev/null 2>&1 & echo $!'], { encoding: 'utf8' });
      pids.push(Number(shell.stdout.trim()));
    }
    const alive = pids.map(processState).filter((state) => state !== undefined);
    assert.ok(alive.length > 0, 'some sleeper is still running to be checked');
    for (const state of alive) assert.equal(state!.ppid, 1, 'an orphan belongs to PID 1');
    for (const pid of pids) {
      await eventually(
        () => (processState(pid) === undefined ? true : undefined),
        `reaped orphan ${pid} (state ${processState(pid)?.state})`,
        1200,
      );
    }
    // PID 1 reaps as children exit, so a zombie of its may show for a moment, never for good.
    const pid1Zombies = () =>
      readdirSync('/proc')
        .filter((name) => /^\d+$/.test(name) && existsSync(`/proc/${name}/stat`))
        .filter((name) => {
          const state = processState(Number(name));
          return state?.state === 'Z' && state.ppid === 1;
        });
    await eventually(
      () => (pid1Zombies().length === 0 ? true : undefined),
      `no zombie children of PID 1 (${pid1Zombies().join(', ')})`,
      400,
    );
  });
});
