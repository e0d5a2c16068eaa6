import type { Duplex } from 'node:stream';
import { MODE_ECHO } from './app-server.js';
import { withTimeout, type Deadline, roundsWithin } from './budget.js';
import { RoundLog, percentile, rotated } from './stats.js';
import { connectTo, type Subject } from './subject.js';

export const MESSAGE_BYTES = 1024;
export const CONCURRENCIES: readonly number[] = [1, 64];
/** Short slices, subjects taking turns: a burst of load from another engineer lands on all of them alike. */
const SLICE_MS = 100;
const MESSAGE = Buffer.alloc(MESSAGE_BYTES, 0x61);

/**
 * One slice on `sockets` (persistent, already in echo mode): each sends 1 KiB and waits for the
 * 1 KiB echo before the next (closed loop) until `sliceMs` is up. Round trips in µs go to `samples`.
 */
async function runSlice(name: string, sockets: readonly Duplex[], sliceMs: number, samples: number[]): Promise<void> {
  const stopAt = Date.now() + sliceMs;
  const loops = sockets.map(
    (socket) =>
      new Promise<void>((resolve, reject) => {
        let pending = 0;
        let sentAt = 0n;
        const send = () => {
          if (Date.now() >= stopAt) {
            socket.off('data', onData);
            socket.off('error', reject);
            resolve();
            return;
          }
          pending = MESSAGE_BYTES;
          sentAt = process.hrtime.bigint();
          socket.write(MESSAGE);
        };
        const onData = (chunk: Buffer) => {
          pending -= chunk.length;
          if (pending > 0) return;
          samples.push(Number(process.hrtime.bigint() - sentAt) / 1000);
          send();
        };
        socket.on('data', onData);
        socket.once('error', reject);
        send();
      }),
  );
  await withTimeout(Promise.all(loops), sliceMs + 10_000, `${name} latency`);
}

async function openEcho(subject: Subject, count: number, ca: string | undefined): Promise<Duplex[]> {
  const sockets: Duplex[] = [];
  for (let i = 0; i < count; i++) {
    const socket = await connectTo(subject, ca ? { ca } : {});
    socket.on('error', () => {});
    socket.write(Buffer.of(MODE_ECHO));
    sockets.push(socket);
  }
  return sockets;
}

export interface LatencyOptions {
  subjects: readonly Subject[];
  rounds: number;
  /** Slices per subject per round and concurrency; each slice is 100 ms. */
  slices: number;
  ca?: string | undefined;
  deadline: Deadline;
  log: (line: string) => void;
}

/**
 * Warm-up, then rounds; in a round, for each concurrency, every subject gets its connections opened
 * and then `slices` turns of 100 ms, subjects rotating turn by turn. A round's value is the
 * percentile over all its samples. Keys: `<subject>:c<concurrency>:p50` and `:p99`, in µs.
 */
export async function measureLatency(options: LatencyOptions): Promise<RoundLog> {
  const log = new RoundLog();
  for (const round of roundsWithin(options)) {
    const line: string[] = [];
    for (const concurrency of CONCURRENCIES) {
      const open = new Map<Subject, Duplex[]>();
      const samples = new Map<Subject, number[]>(options.subjects.map((subject) => [subject, []]));
      const failed = new Set<Subject>();
      try {
        for (const subject of options.subjects) {
          try {
            open.set(subject, await openEcho(subject, concurrency, options.ca));
          } catch (error) {
            failed.add(subject);
            options.log(`  ${subject.name} c=${concurrency}: cannot connect (${(error as Error).message})`);
          }
        }
        const slices = round === 0 ? Math.ceil(options.slices / 2) : options.slices;
        for (let slice = 0; slice < slices; slice++) {
          for (const subject of rotated(options.subjects, slice + round)) {
            const sockets = open.get(subject);
            if (!sockets || failed.has(subject)) continue;
            try {
              await runSlice(subject.name, sockets, SLICE_MS, samples.get(subject) as number[]);
            } catch (error) {
              failed.add(subject);
              options.log(`  ${subject.name} c=${concurrency}: failed (${(error as Error).message})`);
            }
          }
        }
      } finally {
        for (const sockets of open.values()) for (const socket of sockets) socket.destroy();
      }
      if (round === 0) continue;
      for (const subject of options.subjects) {
        const all = samples.get(subject) as number[];
        const ok = !failed.has(subject) && all.length > 0;
        const p50 = ok ? percentile(all, 50) : Number.NaN;
        const p99 = ok ? percentile(all, 99) : Number.NaN;
        log.add(`${subject.name}:c${concurrency}:p50`, p50);
        log.add(`${subject.name}:c${concurrency}:p99`, p99);
        line.push(`${subject.name} c${concurrency} ${p50.toFixed(0)}/${p99.toFixed(0)}`);
      }
    }
    options.log(round === 0 ? '  warm-up done' : `  round ${round} (p50/p99 µs): ${line.join(', ')}`);
  }
  return log;
}
