import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';

const running = new Set<ChildProcess>();
let hooked = false;

/** Whatever happens to the bench (an exception, Ctrl-C), the servers it started must not outlive it. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  // SIGTERM, not SIGKILL: nginx's master passes it on to its worker, which a SIGKILLed master would orphan.
  process.once('exit', () => {
    for (const child of running) if (child.pid !== undefined && child.exitCode === null) child.kill('SIGTERM');
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping the servers it started\n`);
      process.exit(130);
    });
  }
}

/** Spawns a server the bench owns; it is killed (by its own pid) when the bench exits. */
export function spawnOwned(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  hookExit();
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
export async function stopOwned(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Keeps the last lines a child wrote, for a useful message when it fails to start. */
export function tail(stream: NodeJS.ReadableStream | null, keep = 20): () => string {
  const lines: string[] = [];
  let partial = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (text: string) => {
    const parts = (partial + text).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
    if (lines.length > keep) lines.splice(0, lines.length - keep);
  });
  return () => [...lines, partial].filter((line) => line !== '').join('\n');
}
