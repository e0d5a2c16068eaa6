/**
 * The log relay: lines cut and tagged in the enclave, queued while the host is slow or away, and
 * printed by the host's sink; a unix socket stands in for vsock.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { parseAddress } from '../src/net/address.js';
import { LogSink } from '../src/host/log-sink.js';
import { silentLogger } from '../src/core/log.js';
import { LineSplitter } from '../src/logs/line-splitter.js';
import { parseLogRecord, type LogRecord } from '../src/logs/log-record.js';
import { LogRelay } from '../src/logs/log-relay.js';
import { MetricsRegistry } from '../src/metrics/registry.js';
import { registerLogRelayMetrics } from '../src/logs/log-relay.js';
import { Supervisor } from '../src/app/supervisor.js';
import { eventually } from './helpers/cli-run.js';
import { captureLogs } from './helpers/log-capture.js';

const dir = mkdtempSync(join(tmpdir(), 'log-relay-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let sockets = 0;
const socketPath = () => join(dir, `s${sockets++}.sock`);

/** A Writable that keeps the records a sink prints; `delayMs` makes it slow (a stdout nobody reads fast). */
function recordsOut(delayMs = 0): { out: Writable; records: LogRecord[] } {
  const records: LogRecord[] = [];
  let pending = '';
  const out = new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _encoding, done) {
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) records.push(JSON.parse(line) as LogRecord);
      if (delayMs > 0) setTimeout(done, delayMs);
      else done();
    },
  });
  return { out, records };
}

describe('line splitter', () => {
  it('cuts lines, drops CR before LF, and splits (not truncates) long lines on UTF-8 boundaries', () => {
    const seen: Array<[string, boolean]> = [];
    const splitter = new LineSplitter(8, (line, partial) => seen.push([line, partial]));
    splitter.push(Buffer.from('ab\r\ncd'));
    splitter.push(Buffer.from('e\n'));
    // "é" is 2 bytes: 7 ASCII bytes then é would be cut at byte 8 in the middle of it.
    splitter.push(Buffer.from('1234567é89\nend'));
    splitter.flush();
    assert.deepEqual(seen, [
      ['ab', false],
      ['cde', false],
      ['1234567', true],
      ['é89', false],
      ['end', false],
    ]);
    const joined = seen
      .slice(2, 4)
      .map(([line]) => line)
      .join('');
    assert.equal(joined, '1234567é89');
  });

  it('a line of exactly the limit is one piece; one byte more is two', () => {
    const seen: Array<[string, boolean]> = [];
    const splitter = new LineSplitter(4, (line, partial) => seen.push([line, partial]));
    splitter.push(Buffer.from('abcd\nabcde\n'));
    assert.deepEqual(seen, [
      ['abcd', false],
      ['abcd', true],
      ['e', false],
    ]);
  });
});

describe('log records', () => {
  it('keeps only the known fields, and refuses what is not a record', () => {
    const line = JSON.stringify({
      source: 'app',
      stream: 'stdout',
      line: 'x',
      time: 1,
      extra: 'injected',
      partial: 'yes',
    });
    assert.deepEqual(parseLogRecord(line), { source: 'app', stream: 'stdout', line: 'x', time: 1 });
    for (const bad of [
      'not json',
      '[]',
      'null',
      '{"source":"kernel","stream":"stdout","line":"x","time":1}',
      '{"source":"app","stream":"stdout","line":3,"time":1}',
      '{"source":"app","stream":"stdout","line":"x"}',
    ]) {
      assert.equal(parseLogRecord(bad), undefined, bad);
    }
  });
});

describe('log relay to the host sink', () => {
  it('relays tagged lines in order, and the sink prints each as one JSON line that cannot inject another', async () => {
    const { out, records } = recordsOut();
    const listen = parseAddress(`unix:${socketPath()}`);
    const sink = await LogSink.start({ listen, out, logger: silentLogger() });
    const relay = new LogRelay({ address: listen, bufferLines: 100, maxLineBytes: 1024 });
    try {
      relay.push('app', 'stdout', 'first');
      relay.push('app', 'stderr', 'second\n{"source":"runtime","stream":"stderr","line":"forged","time":0}');
      relay.push('runtime', 'stderr', '{"level":30,"msg":"runtime ready"}');
      await eventually(() => (records.length === 3 ? true : undefined), 'printed three records');
      assert.deepEqual(
        records.map(({ source, stream, line }) => [source, stream, line]),
        [
          ['app', 'stdout', 'first'],
          ['app', 'stderr', 'second\n{"source":"runtime","stream":"stderr","line":"forged","time":0}'],
          ['runtime', 'stderr', '{"level":30,"msg":"runtime ready"}'],
        ],
      );
      assert.ok(records.every((record) => typeof record.time === 'number'));
      assert.equal(sink.stats.rejected, 0);
    } finally {
      await relay.close();
      await sink.close();
    }
  });

  it('the sink drops junk lines from a peer and goes on', async () => {
    const { out, records } = recordsOut();
    const path = socketPath();
    const sink = await LogSink.start({ listen: parseAddress(`unix:${path}`), out, logger: silentLogger() });
    try {
      const peer = net.connect(path);
      await once(peer, 'connect');
      peer.end('garbage\n{"source":"app","stream":"stdout","line":"ok","time":5}\n\u001b[2J\n');
      await eventually(() => (sink.stats.rejected === 2 ? true : undefined), 'rejected two lines');
      assert.deepEqual(records, [{ source: 'app', stream: 'stdout', line: 'ok', time: 5 }]);
    } finally {
      await sink.close();
    }
  });

  it('with the host absent: 100,000 lines, the queue keeps the newest-first bound and the dropped count is exact', async () => {
    const path = socketPath();
    const listen = parseAddress(`unix:${path}`);
    const relay = new LogRelay({
      address: listen,
      bufferLines: 1000,
      maxLineBytes: 1024,
      minBackoffMs: 10,
      maxBackoffMs: 20,
    });
    const registry = new MetricsRegistry();
    registerLogRelayMetrics(registry, relay);
    for (let i = 0; i < 100_000; i++) relay.push('app', 'stdout', `line ${i}`);
    assert.deepEqual(relay.stats, { sent: 0, dropped: 99_000, queued: 1000, connected: false });
    assert.match(registry.render(), /enclave_log_relay_lines_total\{outcome="dropped"\} 99000/);

    // The host comes up: the 1000 queued lines (the first ones pushed) arrive, in order.
    const { out, records } = recordsOut();
    const sink = await LogSink.start({ listen, out, logger: silentLogger() });
    try {
      await eventually(() => (records.length === 1000 ? true : undefined), 'delivered the queued lines');
      assert.equal(records[0]!.line, 'line 0');
      assert.equal(records[999]!.line, 'line 999');
      await relay.close();
      assert.deepEqual(relay.stats, { sent: 1000, dropped: 99_000, queued: 0, connected: false });
    } finally {
      await relay.close();
      await sink.close();
    }
  });

  it('with a slow host: every one of 100,000 lines is either printed or counted as dropped, exactly', async () => {
    const { out, records } = recordsOut(1);
    const listen = parseAddress(`unix:${socketPath()}`);
    const sink = await LogSink.start({ listen, out, logger: silentLogger() });
    const relay = new LogRelay({ address: listen, bufferLines: 2000, maxLineBytes: 1024 });
    try {
      await eventually(() => (relay.stats.connected ? true : undefined), 'connected');
      // Pushed in bursts, as a chatty app writes: the host keeps up with some, the queue takes some, the rest drop.
      for (let burst = 0; burst < 100; burst++) {
        for (let i = 0; i < 1000; i++) relay.push('app', 'stdout', `line ${burst * 1000 + i}`);
        await new Promise((resolve) => setImmediate(resolve));
      }
      const { dropped } = relay.stats;
      assert.ok(dropped > 0, 'a slow host makes the relay drop');
      await relay.close(60_000);
      await eventually(() => (records.length === relay.stats.sent ? true : undefined), 'printed every line sent', 2000);
      assert.equal(relay.stats.sent + relay.stats.dropped, 100_000);
      assert.equal(records.length + relay.stats.dropped, 100_000);
      // What arrives is in the order pushed.
      const numbers = records.map((record) => Number(record.line.slice(5)));
      assert.ok(numbers.every((n, i) => i === 0 || n > numbers[i - 1]!));
    } finally {
      await relay.close();
      await sink.close();
    }
  });

  it('reports drops in a periodic warn line', async () => {
    const relay = new LogRelay({
      address: parseAddress(`unix:${socketPath()}`),
      bufferLines: 16,
      maxLineBytes: 256,
      reportIntervalMs: 20,
      minBackoffMs: 10,
    });
    const { logger, lines } = captureLogs('info');
    relay.useLogger(logger);
    try {
      for (let i = 0; i < 20; i++) relay.push('app', 'stdout', 'x');
      const report = await eventually(
        () => lines.find((line) => line.msg === 'log relay dropped lines (the host was slow or away)'),
        'reported',
      );
      assert.equal(report.dropped, 4);
      assert.equal(report.droppedTotal, 4);
    } finally {
      await relay.close();
    }
  });
});

describe("the command's output through the relay", () => {
  it('sees open stream pipes (a socket pair, as spawn makes them), is never blocked by an absent host, and its lines arrive tagged once the host is up', async () => {
    const listen = parseAddress(`unix:${socketPath()}`);
    const relay = new LogRelay({
      address: listen,
      bufferLines: 100,
      maxLineBytes: 64,
      minBackoffMs: 10,
      maxBackoffMs: 20,
      echo: false,
    });
    // 8 MiB to stdout with nobody listening: the command would block on a full pipe if the runtime stopped reading.
    // Not node: a node child sets its own stdout non-blocking and would see EAGAIN from fs.writeSync instead of waiting.
    const script = [
      'echo "stdout is a $(stat -L -c %F /proc/$$/fd/1)"',
      'echo "stderr is a $(stat -L -c %F /proc/$$/fd/2)" >&2',
      'printf "%0100d\\n" 0',
      "head -c 8388608 /dev/zero | tr '\\0' y",
    ].join('\n');
    const supervisor = new Supervisor('sh', ['-c', script], silentLogger(), {
      output: (stdout, stderr) => relay.attachChild(stdout, stderr),
    });
    try {
      assert.equal(await supervisor.exited, 0);
      const { out, records } = recordsOut();
      const sink = await LogSink.start({ listen, out, logger: silentLogger() });
      try {
        await eventually(() => (records.length === 100 ? true : undefined), 'delivered the queued lines');
        assert.deepEqual(
          records.slice(0, 4).map(({ source, stream, line, partial }) => [source, stream, line, partial]),
          [
            ['app', 'stdout', 'stdout is a socket', undefined],
            ['app', 'stderr', 'stderr is a socket', undefined],
            ['app', 'stdout', '0'.repeat(64), true],
            ['app', 'stdout', '0'.repeat(36), undefined],
          ],
        );
        await relay.close();
        // 8 MiB in 64-byte pieces is 131072 lines, plus the four above; 100 were kept.
        assert.equal(relay.stats.sent + relay.stats.dropped, 4 + (8 * 1024 * 1024) / 64);
      } finally {
        await sink.close();
      }
    } finally {
      await relay.close();
    }
  });
});

describe('the host sink when its stdout breaks', () => {
  it('keeps running and counts what it could not write', async () => {
    const out = new Writable({
      write(_chunk, _encoding, done) {
        done(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
      },
    });
    const { logger, lines } = captureLogs('info');
    const path = socketPath();
    const sink = await LogSink.start({ listen: parseAddress(`unix:${path}`), out, logger });
    try {
      const peer = net.connect(path);
      await once(peer, 'connect');
      const record = JSON.stringify({ source: 'app', stream: 'stdout', line: 'x', time: 1 });
      peer.write(`${record}\n`);
      await eventually(
        () =>
          lines.find((line) => line.msg === 'log sink cannot write to stdout; relayed lines are dropped from now on'),
        'reported the broken stdout',
      );
      peer.end(`${record}\n${record}\n`);
      await eventually(() => (sink.stats.lost === 2 ? true : undefined), 'counted the lost records');
      assert.equal(sink.stats.written, 1);
    } finally {
      await sink.close();
    }
  });
});
