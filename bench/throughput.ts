import { ACK, HEADER_BYTES, MODE_DOWNLOAD, MODE_UPLOAD, header, writeBytes } from './app-server.js';
import { withTimeout, type Deadline, roundsWithin } from './budget.js';
import { RoundLog, rotated } from './stats.js';
import { connectTo, type Subject } from './subject.js';

export type Direction = 'upload' | 'download';
export const DIRECTIONS: readonly Direction[] = ['upload', 'download'];
const GIB = 1024 ** 3;
/** Even at 100 MB/s a GiB is in by then; slower means something is broken, not slow. */
const TRANSFER_TIMEOUT_MS = 60_000;

export interface TransferResult {
  seconds: number;
  /** CPU seconds the serving side spent, when it has a process to read. */
  cpuSeconds?: number;
  /** CPU seconds this process (client and app together) spent: near `seconds` means the generator was the limit. */
  generatorCpuSeconds: number;
}

/**
 * One bulk transfer on a fresh connection (connect and handshake not timed): `upload` sends `bytes`
 * to the app and stops the clock at the app's ack; `download` asks the app for `bytes` and stops the
 * clock at the last one.
 */
export async function transfer(
  subject: Subject,
  direction: Direction,
  bytes: number,
  ca: string | undefined,
): Promise<TransferResult> {
  const socket = await connectTo(subject, ca ? { ca } : {});
  try {
    const cpuBefore = subject.cpuSeconds?.();
    const generatorBefore = process.cpuUsage();
    const started = process.hrtime.bigint();
    const done = new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.once('close', () => reject(new Error(`${subject.name} closed the connection mid-transfer`)));
      if (direction === 'upload') {
        socket.on('data', (chunk: Buffer) => {
          if (chunk.includes(ACK)) resolve();
        });
      } else {
        let received = 0;
        socket.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received >= bytes) resolve();
        });
      }
    });
    const request = header(direction === 'upload' ? MODE_UPLOAD : MODE_DOWNLOAD, bytes);
    socket.write(request);
    const writing = direction === 'upload' ? writeBytes(socket, bytes) : Promise.resolve();
    // One bound for the writes and the answer: a peer that stalls or vanishes ends the transfer, not the run.
    await withTimeout(Promise.all([writing, done]), TRANSFER_TIMEOUT_MS, `${subject.name} ${direction}`);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const generator = process.cpuUsage(generatorBefore);
    const generatorCpuSeconds = (generator.user + generator.system) / 1e6;
    socket.destroy();
    if (cpuBefore === undefined || !subject.cpuSeconds) return { seconds, generatorCpuSeconds };
    await subject.settle?.();
    return { seconds, cpuSeconds: subject.cpuSeconds() - cpuBefore, generatorCpuSeconds };
  } finally {
    socket.destroy();
  }
}

export interface ThroughputOptions {
  subjects: readonly Subject[];
  bytes: number;
  rounds: number;
  ca?: string | undefined;
  deadline: Deadline;
  log: (line: string) => void;
}

/**
 * Warm-up, then `rounds` rounds; in each, every subject moves `bytes` each way, the subjects in a
 * rotated order so noise from the shared machine falls on all of them. Keys: `<subject>:<direction>`
 * in GiB/s, `cpu:<subject>:<direction>` in CPU seconds per GiB, `busy:` and `generator-busy:` the
 * share of one core the server and the load generator used while it ran.
 */
export async function measureThroughput(options: ThroughputOptions): Promise<RoundLog> {
  const log = new RoundLog();
  for (const round of roundsWithin(options)) {
    const warmUp = round === 0;
    const line: string[] = [];
    for (const subject of rotated(options.subjects, round)) {
      for (const direction of DIRECTIONS) {
        // A warm-up of the full size would cost as much as a round; a quarter warms JIT, buffers and TCP.
        const bytes = warmUp ? Math.max(HEADER_BYTES, Math.floor(options.bytes / 4)) : options.bytes;
        let result: TransferResult | undefined;
        try {
          result = await transfer(subject, direction, bytes, options.ca);
        } catch (error) {
          options.log(`  ${subject.name} ${direction}: failed (${(error as Error).message})`);
        }
        if (warmUp) continue;
        const gib = bytes / GIB;
        log.add(`${subject.name}:${direction}`, result ? gib / result.seconds : Number.NaN);
        log.add(
          `generator-busy:${subject.name}:${direction}`,
          result ? result.generatorCpuSeconds / result.seconds : Number.NaN,
        );
        if (subject.cpuSeconds) {
          log.add(
            `cpu:${subject.name}:${direction}`,
            result?.cpuSeconds === undefined ? Number.NaN : result.cpuSeconds / gib,
          );
          log.add(
            `busy:${subject.name}:${direction}`,
            result?.cpuSeconds === undefined ? Number.NaN : result.cpuSeconds / result.seconds,
          );
        }
        if (result) {
          const busy =
            result.cpuSeconds === undefined
              ? ''
              : ` server ${((100 * result.cpuSeconds) / result.seconds).toFixed(0)}%`;
          line.push(
            `${subject.name} ${direction} ${(gib / result.seconds).toFixed(2)} (gen ${((100 * result.generatorCpuSeconds) / result.seconds).toFixed(0)}%${busy})`,
          );
        }
      }
    }
    options.log(warmUp ? '  warm-up done' : `  round ${round}: ${line.join(', ')} GiB/s`);
  }
  return log;
}
