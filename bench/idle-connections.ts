import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import type { AppServer } from './app-server.js';
import { findTool } from './peers.js';
import { RoundLog } from './stats.js';
import { connectTo, type Subject } from './subject.js';

/** Idle TLS connections held open at once: the two sizes. */
export const IDLE_TLS_COUNTS: readonly number[] = [1000, 10_000];
const OPEN_CONCURRENCY = 50;
/** Start-up garbage collected, a heap done growing, a trim after the last close done. */
const SETTLE_MS = 3000;
const AFTER_CLOSE_SETTLE_MS = 10_000;
/** Then RSS is read every 2 s while it still falls by more than 1 MiB, for at most a minute. */
const AFTER_CLOSE_POLL_MS = 2000;
const AFTER_CLOSE_MAX_MS = 60_000;
/** Opening 10,000 handshakes on a loaded 2-core machine takes minutes; past this, the count is given up. */
const OPEN_TIMEOUT_MS = 15 * 60_000;
const MIB = 1024 * 1024;
/** The bench holds both ends of every connection that reaches the app: the client's and the app's. */
const FDS_PER_CONNECTION = 2;
/** The bench's own files, and slack: at the limit, the app's accept() fails with EMFILE. */
const FD_HEADROOM = 1000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TLS server the bench can start fresh and read the memory of. */
export interface MemorySubject extends Subject {
  rssBytes(): number;
  stop(): Promise<void>;
}

/**
 * Servers that connect upstream only when the client sends (nginx's http proxy; the runtime with
 * `app_connect = "first-byte"`): their idle connections never reach the app, so the count held is
 * the bench's client sockets still open.
 */
export const CONNECTS_APP_ON_FIRST_BYTE: ReadonlySet<string> = new Set(['nginx-http', 'runtime-tls-first-byte']);

export interface IdleTlsOptions {
  /** Each starts a fresh server: the runtime, nginx (stream), nginx (http). */
  starts: ReadonlyArray<() => Promise<MemorySubject>>;
  app: AppServer;
  counts: readonly number[];
  log: (line: string) => void;
}

/** This process's open-file limit, raised first when we may (root: prlimit); 10,000 connections need 20,000 here. */
export function raiseFileLimit(wanted: number): number {
  const read = () => {
    const line = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    return line === undefined ? 1024 : line === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(line);
  };
  if (read() >= wanted) return read();
  const prlimit = findTool('prlimit');
  if (prlimit) spawnSync(prlimit, ['--pid', String(process.pid), `--nofile=${wanted}:${wanted}`]);
  return read();
}

/**
 * The counts this machine has the file descriptors for. Each connection takes two in the bench
 * (client and app side) and two in the runtime (client and app), all under one limit when it
 * cannot be raised (no CAP_SYS_RESOURCE: a container): a count over it is replaced by the largest
 * that fits (9,500 under the common 20,000), and said so.
 */
export function countsWithinFileLimit(counts: readonly number[], log: (line: string) => void): number[] {
  const largest = Math.max(...counts);
  const limit = raiseFileLimit(largest * FDS_PER_CONNECTION + FD_HEADROOM);
  const fits = Math.floor((limit - FD_HEADROOM) / FDS_PER_CONNECTION / 100) * 100;
  const result: number[] = [];
  for (const count of counts) {
    const used = Math.min(count, fits);
    if (used < count)
      log(
        `  ${count} idle connections need ${count * FDS_PER_CONNECTION + FD_HEADROOM} open files; the limit here is ${limit} and cannot be raised (prlimit needs CAP_SYS_RESOURCE): measuring ${used}`,
      );
    if (used > 0 && !result.includes(used)) result.push(used);
  }
  return result;
}

/**
 * One fresh server per subject: RSS idle, then for each count, that many idle TLS connections open
 * through it (handshake done and, where the server connects upstream at once, the app holding its
 * side), then the RSS after they all close, before the next count opens from none. Keys:
 * `<name>:idle` (MiB), `<name>:per:<count>` (KiB per connection over idle), `<name>:after:<count>`
 * (MiB) and `<name>:after-ratio:<count>`. One round: opening 10,000 handshakes takes minutes here.
 */
export async function measureIdleTls(options: IdleTlsOptions): Promise<RoundLog> {
  const log = new RoundLog();
  for (const start of options.starts) {
    const subject = await start();
    const sockets: Duplex[] = [];
    try {
      await sleep(SETTLE_MS);
      const idle = subject.rssBytes();
      log.add(`${subject.name}:idle`, idle / MIB);
      const line = [`idle ${(idle / MIB).toFixed(1)} MiB`];
      const reachesApp = !CONNECTS_APP_ON_FIRST_BYTE.has(subject.name);
      const appBefore = options.app.open;
      for (const count of options.counts) {
        const until = Date.now() + OPEN_TIMEOUT_MS;
        let failed = 0;
        // Counted before each connect, so 50 openers stop at `count`, not up to 49 past it (files are tight).
        let launched = 0;
        const opener = async () => {
          while (launched < count && Date.now() < until) {
            launched++;
            try {
              const socket = await connectTo(subject);
              socket.on('error', () => {});
              sockets.push(socket);
            } catch (error) {
              // A handshake that times out on a loaded machine is one connection fewer, not the end of the run.
              if (++failed > count * 0.05) throw error;
            }
          }
        };
        const started = Date.now();
        await Promise.all(Array.from({ length: OPEN_CONCURRENCY }, opener));
        // Bounded: on a loaded machine the odd connection fails after its handshake (the app connect timed out).
        const appUntil = Math.min(until, Date.now() + 30_000);
        while (reachesApp && options.app.open < appBefore + sockets.length && Date.now() < appUntil) await sleep(50);
        await sleep(SETTLE_MS);
        const rss = subject.rssBytes();
        const stillOpen = sockets.filter((socket) => !socket.destroyed && !socket.readableEnded).length;
        const held = reachesApp ? options.app.open - appBefore : stillOpen;
        const perKiB = (rss - idle) / 1024 / held;
        // A few lost connections change little; more than 5 % and the figure is not of `count` connections.
        log.add(`${subject.name}:per:${count}`, held >= count * 0.95 ? perKiB : Number.NaN);
        line.push(
          `${sockets.length} opened, ${stillOpen} still open: ${(rss / MIB).toFixed(1)} MiB = ${perKiB.toFixed(1)} KiB each (${reachesApp ? 'app holds' : 'held'} ${held}; ${((Date.now() - started) / 1000).toFixed(0)} s to open)`,
        );
        for (const socket of sockets.splice(0)) socket.destroy();
        const closeUntil = Date.now() + 30_000;
        while (options.app.open > appBefore && Date.now() < closeUntil) await sleep(50);
        // V8 gives back an emptied heap some seconds after the garbage appears; nginx frees at once.
        await sleep(AFTER_CLOSE_SETTLE_MS);
        // On a loaded machine the runtime's trims after 10,000 closes take seconds each: read until RSS holds.
        let after = subject.rssBytes();
        for (const settleUntil = Date.now() + AFTER_CLOSE_MAX_MS; Date.now() < settleUntil;) {
          await sleep(AFTER_CLOSE_POLL_MS);
          const now = subject.rssBytes();
          const falling = after - now > MIB;
          after = now;
          if (!falling) break;
        }
        log.add(`${subject.name}:after:${count}`, after / MIB);
        log.add(`${subject.name}:after-ratio:${count}`, after / idle);
        line.push(`closed ${(after / MIB).toFixed(1)} MiB (${(after / idle).toFixed(2)}x idle)`);
      }
      options.log(`  ${subject.name}: ${line.join('; ')}`);
    } finally {
      for (const socket of sockets) socket.destroy();
      await subject.stop();
    }
  }
  return log;
}
