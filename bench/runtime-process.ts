import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { parse, stringify } from 'smol-toml';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { spawnOwned, stopOwned, tail } from './child-processes.js';
import { childPids, cpuSeconds, rssBytes } from './proc-stat.js';
import type { Subject } from './subject.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(REPO_ROOT, 'bin', 'enclave-runtime.js');
const START_TIMEOUT_MS = 20_000;

export interface RuntimeProcessOptions {
  /** Where this process's enclave.toml goes; unique per process. */
  configPath: string;
  /** Shared by every runtime of the run, so all serve leaves of one CA. */
  stateDir: string;
  appPort: number;
  tls: boolean;
  /** Directory for `node --cpu-prof` output, when profiling. */
  cpuProfileDir?: string | undefined;
  /** Extra `node` flags for the runtime alone (the load generator keeps its own), to try V8 settings. */
  nodeFlags?: readonly string[] | undefined;
  /** `[ingress] max_connections`; the idle-connection rows need more than the example's 4,096. */
  maxConnections?: number | undefined;
  /** `[ingress] workers`; left out when 1, the single-threaded ingress (a runtime without the key rejects it). */
  workers?: number | undefined;
  /** Keys set over the example's, table by table (`{ tls: { release_idle_buffers: false } }`), to compare settings. */
  config?: Record<string, Record<string, unknown>> | undefined;
  /** Environment for the runtime process alone (e.g. MALLOC_ARENA_MAX to try allocator settings). */
  env?: NodeJS.ProcessEnv | undefined;
  /** The key in the figures, when one run measures two configurations (default runtime / runtime-tls). */
  name?: string | undefined;
}

/**
 * The runtime as users start it: `enclave-runtime dev` with a config file, in its own process so it
 * gets its own core while the load generator uses the other. Ports are 0 (the OS picks), read back
 * from the `ingress listening` log line, so the bench never collides with another engineer's run.
 */
export class RuntimeProcess implements Subject {
  readonly name: string;
  readonly tls: boolean;
  readonly port: number;
  readonly #child: ChildProcess;

  private constructor(child: ChildProcess, port: number, tls: boolean, name?: string) {
    this.#child = child;
    this.port = port;
    this.tls = tls;
    this.name = name ?? (tls ? 'runtime-tls' : 'runtime');
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  static async start(options: RuntimeProcessOptions): Promise<RuntimeProcess> {
    writeFileSync(options.configPath, configText(options));
    const nodeArgs = [
      ...(options.nodeFlags ?? []),
      ...(options.cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfileDir}`] : []),
    ];
    const child = spawnOwned(process.execPath, [...nodeArgs, CLI, 'dev', '--config', options.configPath], {
      cwd: REPO_ROOT,
      ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
    });
    const lastLines = tail(child.stderr);
    // For a reader chasing what the runtime did during a run (its warnings: an app connect that failed, a refusal;
    // with BENCH_RUNTIME_LOG_LEVEL=debug, each trim of its heaps).
    const logTo = process.env.BENCH_RUNTIME_LOG;
    if (logTo) child.stderr?.pipe(createWriteStream(`${logTo}.${child.pid}`));
    child.stdout?.resume();
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`not ready within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      const fail = (error: Error) => {
        clearTimeout(timer);
        reject(new Error(`enclave-runtime dev did not start: ${error.message}\n${lastLines()}`));
      };
      const onExit = (code: number | null, signal: string | null) => fail(new Error(`exited with ${code ?? signal}`));
      child.once('exit', onExit);
      child.once('error', fail);
      let buffered = '';
      const onData = (text: string) => {
        buffered += text;
        for (const line of buffered.split('\n')) {
          const match = /"listen":"tcp:127\.0\.0\.1:(\d+)".*"msg":"ingress listening"/.exec(line);
          if (match) {
            clearTimeout(timer);
            child.stderr?.off('data', onData);
            child.off('exit', onExit);
            child.off('error', fail);
            resolve(Number(match[1]));
            return;
          }
        }
      };
      child.stderr?.on('data', onData);
    });
    return new RuntimeProcess(child, port, options.tls, options.name);
  }

  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }

  async settle(): Promise<void> {
    // Closing is a few callbacks on the runtime's loop; give them a moment before reading its CPU.
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  rssBytes(): number {
    return rssBytes(this.pid);
  }

  /** The most the process has ever had resident: after bulk runs, what the heap let garbage grow to. */
  peakRssBytes(): number {
    return rssBytes(this.pid, true);
  }

  /** The runtime never forks; anything here would be a leak worth seeing in the report. */
  children(): number[] {
    return childPids(this.pid);
  }

  /** SIGTERM is the runtime's clean stop (and the moment `--cpu-prof` writes its profile). */
  stop(): Promise<void> {
    return stopOwned(this.#child, 10_000);
  }
}

/** Tables of other commands (`host`, `provisioner`): dev ignores them, and their addresses are not ours to move. */
const OTHER_COMMANDS = new Set(['host', 'provisioner']);
type TomlTable = Record<string, unknown>;

/**
 * The shipped enclave.toml.example (every key at its documented default, as `npm start` runs it),
 * with every loopback listener of this command moved to port 0 so two runtimes, and other engineers'
 * runs, never collide. Starting from the example keeps the bench in step as parts are added.
 */
function configText(options: RuntimeProcessOptions): string {
  const config = parse(readFileSync(join(REPO_ROOT, 'enclave.toml.example'), 'utf8')) as TomlTable;
  const moveListeners = (table: TomlTable) => {
    for (const [key, value] of Object.entries(table)) {
      if (typeof value === 'string' && /listen$/.test(key) && /^tcp:127\.0\.0\.1:\d+$/.test(value))
        table[key] = 'tcp:127.0.0.1:0';
      else if (value !== null && typeof value === 'object' && !Array.isArray(value)) moveListeners(value as TomlTable);
    }
  };
  for (const [name, table] of Object.entries(config)) {
    if (!OTHER_COMMANDS.has(name) && table !== null && typeof table === 'object' && !Array.isArray(table))
      moveListeners(table as TomlTable);
  }
  const table = (name: string) => (config[name] ??= {}) as TomlTable;
  Object.assign(table('runtime'), {
    log_level: process.env.BENCH_RUNTIME_LOG_LEVEL ?? 'info',
    state_dir: options.stateDir,
    shutdown_grace_ms: 1000,
  });
  Object.assign(table('ingress'), {
    listen: 'tcp:127.0.0.1:0',
    app: `tcp:127.0.0.1:${options.appPort}`,
    ...(options.maxConnections === undefined ? {} : { max_connections: options.maxConnections }),
    ...(options.workers === undefined || options.workers === 1 ? {} : { workers: options.workers }),
  });
  Object.assign(table('tls'), { enabled: options.tls });
  for (const [name, keys] of Object.entries(options.config ?? {})) Object.assign(table(name), keys);
  return `# Written by the bench from enclave.toml.example: listeners on port 0, the app on the bench's port.\n${stringify(config)}`;
}
