import type { Duplex } from 'node:stream';
import type { AppServer } from './app-server.js';
import { roundsWithin, type Deadline } from './budget.js';
import { RoundLog } from './stats.js';
import { connectTo } from './subject.js';
import type { RuntimeProcess } from './runtime-process.js';

export const IDLE_CONNECTIONS = 1000;
const OPEN_CONCURRENCY = 50;
/** Long enough for start-up garbage to be collected and the heap to stop growing on its own. */
const SETTLE_MS = 1500;
const MIB = 1024 * 1024;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface MemoryOptions {
  /** Each starts a fresh runtime of one configuration (TLS on, passthrough); every round runs each. */
  starts: ReadonlyArray<() => Promise<RuntimeProcess>>;
  app: AppServer;
  rounds: number;
  deadline: Deadline;
  log: (line: string) => void;
}

/**
 * RSS of a fresh runtime process (each round starts one: a process that already moved gigabytes
 * would report its high-water mark, not what idling costs), idle and then with 1,000 connections
 * open through it to the app and silent. Keys `<subject>:idle` and `<subject>:connections`, in MiB.
 */
export async function measureMemory(options: MemoryOptions): Promise<RoundLog> {
  const log = new RoundLog();
  for (const round of roundsWithin(options)) {
    for (const start of options.starts) {
      const runtime = await start();
      const sockets: Duplex[] = [];
      try {
        await sleep(SETTLE_MS);
        const idle = runtime.rssBytes() / MIB;
        const appBefore = options.app.open;
        let next = 0;
        const opener = async () => {
          while (next < IDLE_CONNECTIONS) {
            next++;
            sockets.push(await connectTo(runtime));
          }
        };
        await Promise.all(Array.from({ length: OPEN_CONCURRENCY }, opener));
        // A client connection is only "open through the runtime" once the app has its side of it.
        const until = Date.now() + 10_000;
        while (options.app.open < appBefore + IDLE_CONNECTIONS && Date.now() < until) await sleep(20);
        await sleep(SETTLE_MS);
        const withConnections = runtime.rssBytes() / MIB;
        if (round > 0) {
          log.add(`${runtime.name}:idle`, idle);
          log.add(`${runtime.name}:connections`, withConnections);
        }
        const label = round === 0 ? 'warm-up' : `round ${round}`;
        options.log(
          `  ${label}: ${runtime.name} idle ${idle.toFixed(1)} MiB, ${sockets.length} connections ${withConnections.toFixed(1)} MiB (the app holds ${options.app.open - appBefore})`,
        );
      } finally {
        for (const socket of sockets) socket.destroy();
        await runtime.stop();
      }
    }
  }
  return log;
}
