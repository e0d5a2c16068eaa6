import { spawn } from 'node:child_process';
import { roundsWithin, type Deadline } from './budget.js';
import { findTool } from './peers.js';
import { RoundLog, rotated } from './stats.js';
import type { Subject } from './subject.js';

/** Keep-alive connections at once: one alone, then as a busy proxy sees them. */
export const KEEPALIVE_CONNECTIONS: readonly number[] = [1, 16, 64, 256];
export const WRK_INSTALL = 'apt-get install -y wrk';
const WRK_EXTRA_MS = 15_000;

export interface WrkResult {
  requests: number;
  seconds: number;
  perSecond: number;
  /** Latency percentiles, µs. */
  p50: number;
  p99: number;
  /** Socket errors and non-2xx answers together: a run with any is not counted. */
  errors: number;
}

/** `1.23ms` -> 1230 (µs). */
function micros(text: string): number {
  const match = /^([\d.]+)(us|ms|s|m)$/.exec(text);
  if (!match) return Number.NaN;
  const value = Number(match[1]);
  const unit = match[2] as 'us' | 'ms' | 's' | 'm';
  return value * { us: 1, ms: 1000, s: 1e6, m: 60e6 }[unit];
}

/** Reads wrk's `--latency` report. */
export function parseWrk(output: string): WrkResult {
  const requests = /(\d+) requests in ([\d.]+)(us|ms|s|m),/.exec(output);
  const percentile = (p: string) => micros(new RegExp(`^\\s+${p}%\\s+(\\S+)`, 'm').exec(output)?.[1] ?? '');
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  const seconds = requests ? micros(`${requests[2]}${requests[3]}`) / 1e6 : Number.NaN;
  const count = requests ? Number(requests[1]) : 0;
  return {
    requests: count,
    seconds,
    perSecond: count / seconds,
    p50: percentile('50'),
    p99: percentile('99'),
    errors:
      (socketErrors ? socketErrors.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0) +
      (non2xx ? Number(non2xx[1]) : 0),
  };
}

/** One wrk run: `connections` keep-alive TLS connections from one thread, GET / for `durationMs`. */
export async function runWrk(wrk: string, port: number, connections: number, durationMs: number): Promise<WrkResult> {
  const args = [
    '-t1',
    `-c${connections}`,
    `-d${Math.max(1, Math.round(durationMs / 1000))}s`,
    '--latency',
    // wrk's default 2 s counts a request as failed; a loaded machine's tail is longer than that.
    '--timeout',
    '10s',
    // The certificates name localhost; the address stays 127.0.0.1 (localhost may resolve to ::1 first).
    '-H',
    'Host: localhost',
    `https://127.0.0.1:${port}/`,
  ];
  const child = spawn(wrk, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (output += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (output += text));
  const timer = setTimeout(() => child.kill('SIGKILL'), durationMs + WRK_EXTRA_MS);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  if (code !== 0) throw new Error(`wrk exited with ${code}: ${output.trim().split('\n').slice(-3).join(' / ')}`);
  return parseWrk(output);
}

export interface KeepAliveOptions {
  subjects: readonly Subject[];
  rounds: number;
  durationMs: number;
  deadline: Deadline;
  log: (line: string) => void;
}

/**
 * TLS keep-alive HTTP requests through each subject to the bench's app: wrk opens the connections
 * (their handshakes fall inside the run, alike for every subject) and sends GET / on each, closed
 * loop. Each round takes every connection count in turn, subjects rotated. Keys:
 * `<subject>:c<n>:rps`, `:p99` (µs) and `cpu:<subject>:c<n>` (server CPU µs per request).
 */
export async function measureKeepAlive(options: KeepAliveOptions): Promise<RoundLog> {
  const wrk = findTool('wrk');
  if (!wrk) throw new Error(`wrk is not installed (${WRK_INSTALL})`);
  const log = new RoundLog();
  for (const round of roundsWithin(options)) {
    const line: string[] = [];
    for (const connections of KEEPALIVE_CONNECTIONS) {
      for (const subject of rotated(options.subjects, round)) {
        const cpuBefore = subject.cpuSeconds?.() ?? Number.NaN;
        let result: WrkResult;
        try {
          // The handshakes of 64 and 256 connections fall inside the run: a longer run dilutes them.
          const durationMs = connections >= 64 ? 2 * options.durationMs : options.durationMs;
          result = await runWrk(wrk, subject.port, connections, round === 0 ? 1000 : durationMs);
        } catch (error) {
          options.log(`  ${subject.name} c=${connections}: ${(error as Error).message}`);
          if (round > 0) {
            log.add(`${subject.name}:c${connections}:rps`, Number.NaN);
            log.add(`${subject.name}:c${connections}:p99`, Number.NaN);
            log.add(`cpu:${subject.name}:c${connections}`, Number.NaN);
          }
          continue;
        }
        await subject.settle?.();
        const cpu = (subject.cpuSeconds?.() ?? Number.NaN) - cpuBefore;
        if (result.errors > 0)
          options.log(`  ${subject.name} c=${connections}: ${result.errors} errors (round dropped)`);
        if (round === 0) continue;
        const ok = result.errors === 0 && result.requests > 0;
        log.add(`${subject.name}:c${connections}:rps`, ok ? result.perSecond : Number.NaN);
        log.add(`${subject.name}:c${connections}:p99`, ok ? result.p99 : Number.NaN);
        log.add(`cpu:${subject.name}:c${connections}`, ok ? (cpu * 1e6) / result.requests : Number.NaN);
        line.push(`${subject.name} c${connections} ${result.perSecond.toFixed(0)}/s p99 ${result.p99.toFixed(0)} µs`);
      }
    }
    options.log(round === 0 ? '  warm-up done' : `  round ${round}: ${line.join(', ')}`);
  }
  return log;
}
