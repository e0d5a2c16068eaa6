/**
 * The parent's end of the log relay (host.log_listen): every line the enclave sends is checked,
 * rebuilt from its known fields and written to `out` (the host's stdout) as one JSON line, so a
 * log shipper on the parent (journald, CloudWatch agent, Vector) picks it up like any other.
 * When `out` falls behind, the connection is paused: the enclave queues, then drops and counts.
 */
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { listen, type Listener } from '../net/transport.js';
import type { Logger } from '../core/log.js';
import { LineSplitter } from '../logs/line-splitter.js';
import { encodeLogRecord, parseLogRecord } from '../logs/log-record.js';

/** One enclave normally holds one connection; a few cover reconnects that overlap. */
const MAX_CONNECTIONS = 8;
/**
 * A record is a line of at most 1 MiB (the largest runtime.log_relay_max_line_bytes) in JSON,
 * where an escape can take 6 bytes per byte: anything longer is not from a runtime, and dropped.
 */
const MAX_RECORD_BYTES = 6 * 1024 * 1024 + 1024;

export interface LogSinkStats {
  /** Records written to `out`. */
  written: number;
  /** Lines that were not records (bad JSON, unknown fields' values, too long). */
  rejected: number;
  /** Records not written because `out` failed (a closed stdout: EPIPE). */
  lost: number;
  connections: number;
}

export class LogSink {
  readonly stats: LogSinkStats = { written: 0, rejected: 0, lost: 0, connections: 0 };
  #outBroken = false;
  readonly #connections = new Set<Duplex>();
  #listener: Listener | undefined;

  private constructor(
    readonly out: NodeJS.WritableStream,
    readonly logger: Logger,
  ) {}

  get address(): Address {
    if (!this.#listener) throw new Error('the log sink is not listening');
    return this.#listener.address;
  }

  static async start(options: { listen: Address; out?: NodeJS.WritableStream; logger: Logger }): Promise<LogSink> {
    const sink = new LogSink(options.out ?? process.stdout, options.logger);
    // A stdout whose reader went away (EPIPE) must not take the host's relays down with it.
    sink.out.on('error', (error: NodeJS.ErrnoException) => {
      if (sink.#outBroken) return;
      sink.#outBroken = true;
      options.logger.error(
        { code: error.code },
        'log sink cannot write to stdout; relayed lines are dropped from now on',
      );
      // No 'drain' will come: connections paused for one read on, so the enclave is not left waiting.
      for (const socket of sink.#connections) socket.resume();
    });
    sink.#listener = await listen(options.listen, (socket) => sink.#accept(socket));
    options.logger.info({ listen: formatAddress(sink.#listener.address) }, 'log sink listening');
    return sink;
  }

  #accept(socket: Duplex): void {
    socket.on('error', () => {});
    if (this.#connections.size >= MAX_CONNECTIONS) {
      this.logger.warn({ max: MAX_CONNECTIONS }, 'log sink refused a connection: too many open');
      socket.destroy();
      return;
    }
    this.#connections.add(socket);
    this.stats.connections++;
    let tooLong = false;
    let paused = false;
    const splitter = new LineSplitter(MAX_RECORD_BYTES, (text, partial) => {
      // The pieces of an over-long line are all dropped, the first one counted.
      if (partial || tooLong) {
        if (!tooLong) this.stats.rejected++;
        tooLong = partial;
        return;
      }
      const record = parseLogRecord(text);
      if (!record) {
        this.stats.rejected++;
        return;
      }
      if (this.#outBroken) {
        this.stats.lost++;
        return;
      }
      this.stats.written++;
      if (!this.out.write(encodeLogRecord(record)) && !paused) {
        paused = true;
        socket.pause();
        this.out.once('drain', () => {
          paused = false;
          socket.resume();
        });
      }
    });
    socket.on('data', (chunk: Buffer) => splitter.push(chunk));
    socket.once('end', () => {
      splitter.flush();
      socket.end();
    });
    socket.once('close', () => this.#connections.delete(socket));
  }

  async close(): Promise<void> {
    await this.#listener?.close();
    for (const socket of this.#connections) socket.destroy();
    this.#connections.clear();
  }
}
