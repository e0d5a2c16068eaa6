/**
 * Network namespaces for tests: create them, wire them with veth pairs, run processes inside,
 * and remove everything afterwards, even when a test failed halfway. Names carry a per-run id,
 * so runs in parallel (or a crashed earlier run) never collide. Nothing here touches the
 * machine's own interfaces or routes: every address lives inside a namespace made here.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { errorCode } from '../../src/core/errors.js';

/** Run a command to completion and return its stdout; throws with its stderr on failure. */
export function sh(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  } catch (error) {
    const stderr = String((error as { stderr?: string }).stderr ?? '').trim();
    throw new Error(`${command} ${args.join(' ')} failed: ${stderr || (error as Error).message}`, { cause: error });
  }
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A long-running process inside a namespace, its output kept line by line. */
export class NetnsProcess {
  readonly child: ChildProcess;
  readonly stdoutLines: string[] = [];
  readonly stderrLines: string[] = [];
  readonly #waiters = new Set<() => void>();
  #exited: Promise<number | null>;

  constructor(child: ChildProcess) {
    this.child = child;
    const collect = (stream: NodeJS.ReadableStream | null, lines: string[]) => {
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (text: string) => {
        const parts = (partial + text).split('\n');
        partial = parts.pop()!;
        lines.push(...parts);
        for (const wake of this.#waiters) wake();
      });
    };
    collect(child.stdout, this.stdoutLines);
    collect(child.stderr, this.stderrLines);
    this.#exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        for (const wake of this.#waiters) wake();
        resolve(code);
      }),
    );
  }

  /** stderr lines that are JSON (pino logs), parsed. */
  get logs(): Array<Record<string, unknown>> {
    return this.stderrLines.flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  /** Resolve with the first line (stdout or stderr) matching, failing after `timeoutMs` or if the process exits. */
  waitForLine(match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = [...this.stdoutLines, ...this.stderrLines].find(match);
        if (line !== undefined) return finish(undefined, line);
        if (this.child.exitCode !== null || this.child.signalCode !== null) {
          finish(
            new Error(
              `process exited (${this.child.exitCode ?? this.child.signalCode}) before the expected line:\n${this.stderrLines.slice(-20).join('\n')}`,
            ),
          );
        }
      };
      const finish = (error: Error | undefined, line?: string) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        if (error) reject(error);
        else resolve(line!);
      };
      const timer = setTimeout(
        () =>
          finish(
            new Error(
              `no expected line within ${timeoutMs} ms; last output:\n${[...this.stdoutLines, ...this.stderrLines].slice(-20).join('\n')}`,
            ),
          ),
        timeoutMs,
      );
      this.#waiters.add(check);
      check();
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`; resolves with the exit code. */
  async stop(graceMs = 5000): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    return this.#exited;
  }
}

/**
 * A set of namespaces belonging to one test run. `cleanup()` (from an `after` hook) kills the
 * processes started here and deletes the namespaces, which takes their veth ends with them.
 */
export class NetnsLab {
  /** Short and unique per run: interface names have a 15-byte limit. */
  readonly id = `${(process.pid % 46656).toString(36)}${randomBytes(2).toString('hex')}`;
  readonly #namespaces: string[] = [];
  readonly #processes: NetnsProcess[] = [];
  #vethCount = 0;

  /** Create namespace `<role>-<id>` with lo up; returns its name. */
  addNamespace(role: string): string {
    const name = `er-${role}-${this.id}`;
    sh('ip', ['netns', 'add', name]);
    this.#namespaces.push(name);
    this.exec(name, 'ip', ['link', 'set', 'lo', 'up']);
    return name;
  }

  /** Wire two namespaces with a veth pair, one CIDR address on each end; returns the interface names. */
  addVeth(a: string, addressA: string, b: string, addressB: string): { a: string; b: string } {
    const index = this.#vethCount++;
    const ends = { a: `ve${this.id}${index}a`, b: `ve${this.id}${index}b` };
    sh('ip', ['link', 'add', ends.a, 'netns', a, 'type', 'veth', 'peer', 'name', ends.b, 'netns', b]);
    for (const [ns, dev, address] of [
      [a, ends.a, addressA],
      [b, ends.b, addressB],
    ] as const) {
      // nodad: an IPv6 address is usable at once instead of after duplicate address detection.
      this.exec(ns, 'ip', ['addr', 'add', address, 'dev', dev, ...(address.includes(':') ? ['nodad'] : [])]);
      this.exec(ns, 'ip', ['link', 'set', dev, 'up']);
    }
    return ends;
  }

  /** Run a command inside `ns` to completion (synchronously) and return its stdout. */
  exec(ns: string, command: string, args: string[]): string {
    return sh('ip', ['netns', 'exec', ns, command, ...args]);
  }

  /** Run a command inside `ns` to completion without blocking the event loop. */
  run(ns: string, command: string, args: string[], timeoutMs = 20_000): Promise<RunResult> {
    return new Promise((resolve) => {
      execFile(
        'ip',
        ['netns', 'exec', ns, command, ...args],
        { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
        (error, stdout, stderr) => {
          const code = error ? (typeof errorCode(error) === 'number' ? (error as { code: number }).code : null) : 0;
          resolve({ code, stdout, stderr });
        },
      );
    });
  }

  /** Start a long-running process inside `ns`; it is killed by cleanup() if still running. */
  spawn(ns: string, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): NetnsProcess {
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const managed = new NetnsProcess(child);
    this.#processes.push(managed);
    return managed;
  }

  /**
   * The resolv.conf processes in `ns` see: `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf
   * over /etc/resolv.conf. Removed by cleanup().
   */
  setResolvConf(ns: string, text: string): void {
    const dir = join('/etc/netns', ns);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'resolv.conf'), text);
  }

  /** Kill what was started, delete the namespaces and their /etc/netns files. Never throws. */
  async cleanup(): Promise<void> {
    await Promise.all(this.#processes.map((process) => process.stop(2000).catch(() => null)));
    for (const ns of this.#namespaces.splice(0)) {
      try {
        sh('ip', ['netns', 'del', ns]);
      } catch {
        // Already gone.
      }
      rmSync(join('/etc/netns', ns), { recursive: true, force: true });
    }
  }
}
