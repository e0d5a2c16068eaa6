/**
 * The enclave's side of the log relay. A production enclave has no console, so the runtime's own
 * log lines and the customer command's stdout/stderr are sent, line by line, to `enclave-runtime
 * host` (runtime.log_relay). It never blocks a writer: lines wait in a bounded queue while the
 * host is slow or away, the connection is retried with backoff, and a line that finds the queue
 * full is dropped and counted (in /metrics and in a periodic log line).
 */
import { writeSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { connect } from '../net/transport.js';
import type { Logger } from '../core/log.js';
import type { MetricsRegistry } from '../metrics/registry.js';
import { LineSplitter } from './line-splitter.js';
import { encodeLogRecord, type LogSource, type LogStream } from './log-record.js';
import { errorCode } from '../core/errors.js';

export interface LogRelayOptions {
  address: Address;
  /** Lines held while the host is slow or away. */
  bufferLines: number;
  /** Longest line sent; longer ones are split into pieces marked `partial`. */
  maxLineBytes: number;
  connectTimeoutMs?: number;
  /** First wait after a failed connect, doubling up to maxBackoffMs. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** How often a line reports drops since the last report (only when there were some). */
  reportIntervalMs?: number;
  /** Echo a child's output to the runtime's own stdout/stderr too (default true; a console, when there is one, shows it). */
  echo?: boolean;
}

export interface LogRelayStats {
  /** Lines handed to a connection to the host. */
  sent: number;
  /** Lines dropped because the queue was full, or still queued when the relay closed (sent + dropped = every line pushed before close). */
  dropped: number;
  /** Lines waiting now. */
  queued: number;
  connected: boolean;
}

/** Bytes of echoed app output the runtime's own stdout/stderr may hold before the echo skips (never the relay). */
const MAX_ECHO_BACKLOG_BYTES = 1024 * 1024;
/** How long close() waits for a command's pipes to reach their end (a grandchild may hold them open for ever). */
const CHILD_OUTPUT_GRACE_MS = 500;
/** A connection that lasted less than this does not reset the reconnect backoff. */
const STABLE_CONNECTION_MS = 1_000;

export class LogRelay {
  readonly address: Address;
  readonly #options: Required<LogRelayOptions>;
  /** A queue with a moving head: shift() on a large array copies it. */
  #queue: string[] = [];
  #head = 0;
  #sent = 0;
  #dropped = 0;
  #reported = 0;
  #socket: Duplex | undefined;
  #writable = false;
  #closed = false;
  #closing: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  /** Called when the queue empties or the connection ends, while close() waits. */
  #onDrained: (() => void) | undefined;
  #logger: Logger | undefined;
  #openChildStreams = 0;
  #onChildStreamsEnded: (() => void) | undefined;
  readonly #reportTimer: NodeJS.Timeout;
  readonly #loop: Promise<void>;

  constructor(options: LogRelayOptions) {
    this.address = options.address;
    this.#options = {
      connectTimeoutMs: 5_000,
      minBackoffMs: 100,
      maxBackoffMs: 5_000,
      reportIntervalMs: 60_000,
      echo: true,
      ...options,
    };
    this.#reportTimer = setInterval(() => this.#report(), this.#options.reportIntervalMs).unref();
    this.#loop = this.#run();
  }

  get stats(): LogRelayStats {
    return {
      sent: this.#sent,
      dropped: this.#dropped,
      queued: this.#queue.length - this.#head,
      connected: this.#socket !== undefined,
    };
  }

  /** Where the drop reports and connection changes are logged (the logger may itself write through this relay). */
  useLogger(logger: Logger): void {
    this.#logger = logger;
  }

  /** Queues one line (already at most maxLineBytes, see lineSplitter); drops and counts it when the queue is full. */
  push(source: LogSource, stream: LogStream, line: string, partial = false): void {
    // After close() nothing is relayed or counted: the lines still reach the console.
    if (this.#closed) return;
    if (this.#queue.length - this.#head >= this.#options.bufferLines) {
      this.#dropped++;
      return;
    }
    this.#queue.push(
      encodeLogRecord({ source, stream, line, time: Date.now(), ...(partial ? { partial: true as const } : {}) }),
    );
    if (this.#writable) this.#flush();
  }

  /** A splitter whose lines go to this relay tagged with `source` and `stream`. */
  lineSplitter(source: LogSource, stream: LogStream): LineSplitter {
    return new LineSplitter(this.#options.maxLineBytes, (line, partial) => this.push(source, stream, line, partial));
  }

  /**
   * A pino destination that writes each log line to `fd` as before (so a console, when there is
   * one, still shows it) and relays it as source "runtime".
   */
  destination(fd: number): { write(text: string): void } {
    const splitter = this.lineSplitter('runtime', fd === 1 ? 'stdout' : 'stderr');
    return {
      write: (text: string) => {
        const bytes = Buffer.from(text, 'utf8');
        try {
          writeSync(fd, bytes);
        } catch {
          // No console (closed or full fd): the relay is the copy that matters.
        }
        splitter.push(bytes);
      },
    };
  }

  /**
   * Takes over a child's stdout and stderr pipes: they are always read (the child never blocks
   * on them), echoed to the runtime's own stdout/stderr while those keep up, and relayed per line.
   */
  attachChild(stdout: NodeJS.ReadableStream | null, stderr: NodeJS.ReadableStream | null): void {
    for (const [stream, name, echo] of [
      [stdout, 'stdout', process.stdout],
      [stderr, 'stderr', process.stderr],
    ] as const) {
      if (!stream) continue;
      const splitter = this.lineSplitter('app', name);
      stream.on('data', (chunk: Buffer) => {
        if (this.#options.echo && echo.writableLength < MAX_ECHO_BACKLOG_BYTES) echo.write(chunk);
        splitter.push(chunk);
      });
      this.#openChildStreams++;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        splitter.flush();
        if (--this.#openChildStreams === 0) this.#onChildStreamsEnded?.();
      };
      stream.on('end', end);
      stream.on('error', end);
    }
  }

  /**
   * Stops: sends what is queued for up to `graceMs` when connected, then closes. Lines still
   * queued after that are counted as dropped, so sent + dropped is every line ever pushed.
   */
  close(graceMs = 2_000): Promise<void> {
    this.#closing ??= this.#close(graceMs);
    return this.#closing;
  }

  async #close(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    // A command's last lines may still be in its pipes when its exit is seen: read them first, briefly.
    if (this.#openChildStreams > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(graceMs, CHILD_OUTPUT_GRACE_MS));
        this.#onChildStreamsEnded = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.#closed = true;
    clearInterval(this.#reportTimer);
    if (this.#socket && this.#queue.length > this.#head) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        const check = () => {
          if (this.#queue.length > this.#head && this.#socket) return;
          clearTimeout(timer);
          resolve();
        };
        this.#onDrained = check;
        check();
      });
    }
    this.#onDrained = undefined;
    this.#dropped += this.#queue.length - this.#head;
    this.#queue = [];
    this.#head = 0;
    // Lines handed to the socket may still be in its buffer: let them out (FIN after them) within the grace.
    const current = this.#socket;
    if (current) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        current.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        current.end();
      });
      current.destroy();
    }
    this.#wake?.();
    await this.#loop;
    this.#report();
  }

  async #run(): Promise<void> {
    let backoffMs = this.#options.minBackoffMs;
    let wasConnected = false;
    while (!this.#closed) {
      let socket: Duplex;
      try {
        socket = await connect(this.#options.address, { timeoutMs: this.#options.connectTimeoutMs });
      } catch (error) {
        if (wasConnected)
          this.#logger?.warn(
            { relay: formatAddress(this.address), code: errorCode(error) },
            'log relay lost the host; retrying',
          );
        wasConnected = false;
        await this.#sleep(backoffMs);
        backoffMs = Math.min(this.#options.maxBackoffMs, backoffMs * 2);
        continue;
      }
      if (this.#closed) {
        socket.destroy();
        break;
      }
      if (!wasConnected) this.#logger?.info({ relay: formatAddress(this.address) }, 'log relay connected');
      wasConnected = true;
      const connectedAt = Date.now();
      await this.#serve(socket);
      // A host that takes the connection and drops it at once (full, restarting) is retried with backoff too.
      if (Date.now() - connectedAt >= STABLE_CONNECTION_MS) {
        backoffMs = this.#options.minBackoffMs;
      } else if (!this.#closed) {
        await this.#sleep(backoffMs);
        backoffMs = Math.min(this.#options.maxBackoffMs, backoffMs * 2);
      }
    }
  }

  /** Writes queued lines while the socket takes them; resolves when the connection ends. */
  #serve(socket: Duplex): Promise<void> {
    return new Promise((resolve) => {
      this.#socket = socket;
      // The host never sends; reading keeps a FIN from going unnoticed.
      socket.on('data', () => {});
      socket.on('drain', () => {
        this.#writable = true;
        this.#flush();
      });
      const done = () => {
        if (this.#socket !== socket) return;
        this.#socket = undefined;
        this.#writable = false;
        socket.destroy();
        this.#onDrained?.();
        resolve();
      };
      socket.once('error', done);
      socket.once('close', done);
      socket.once('end', done);
      this.#writable = true;
      this.#flush();
    });
  }

  #flush(): void {
    const socket = this.#socket;
    if (!socket) return;
    while (this.#queue.length > this.#head) {
      const line = this.#queue[this.#head] as string;
      this.#queue[this.#head++] = '';
      this.#sent++;
      if (!socket.write(line)) {
        this.#writable = false;
        break;
      }
    }
    if (this.#head > 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (this.#queue.length === this.#head) this.#onDrained?.();
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }

  #report(): void {
    const dropped = this.#dropped;
    if (dropped === this.#reported) return;
    this.#logger?.warn(
      { relay: formatAddress(this.address), dropped: dropped - this.#reported, droppedTotal: dropped },
      'log relay dropped lines (the host was slow or away)',
    );
    this.#reported = dropped;
  }
}

/** enclave_log_relay_* series, read at scrape time. */
export function registerLogRelayMetrics(registry: MetricsRegistry, relay: LogRelay): void {
  registry.collected(
    'enclave_log_relay_lines_total',
    'lines of runtime logs and app output for the log relay, by outcome (sent, dropped)',
    'counter',
    () => {
      const { sent, dropped } = relay.stats;
      return [
        { labels: { outcome: 'sent' }, value: sent },
        { labels: { outcome: 'dropped' }, value: dropped },
      ];
    },
  );
  registry.collected('enclave_log_relay_queued_lines', 'lines waiting for the host', 'gauge', () => relay.stats.queued);
  registry.collected('enclave_log_relay_connected', '1 while the log relay is connected to the host', 'gauge', () =>
    relay.stats.connected ? 1 : 0,
  );
}
