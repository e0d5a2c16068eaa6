/**
 * The unmodified "app" of the egress end-to-end test: one probe per process, run inside the
 * enclave namespace with plain node APIs (getaddrinfo through /etc/resolv.conf, http, https,
 * net), exactly as an app would. Usage:
 *
 *   node egress-app.js '{"op":"https","host":"allowed.test"}'
 *
 * Prints one JSON line: what the app got ({status, body}, {banner}, {rcode, answers} ...) or
 * the error code it saw ({code: "ECONNRESET"}). Every probe gives up after 8 s.
 */
import dgram from 'node:dgram';
import { promises as dnsPromises } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { resolve } from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { DnsType, parseDnsResponse } from '../../src/wire/dns-message.js';
import { buildQuery } from '../../src/egress/dns-forwarder.js';
import { encodeEgressHeader } from '../../src/wire/egress-header.js';
import { errorCode } from '../../src/core/errors.js';

export type Probe =
  | { op: 'lookup'; name: string }
  | { op: 'dns'; name: string; type: 'A' | 'AAAA'; tcp?: boolean; server?: string; port?: number }
  | { op: 'http'; host: string; port?: number; hostHeader?: string; path?: string }
  | { op: 'https'; host: string; port?: number; servername?: string; path?: string }
  | { op: 'proxy-get'; proxy: string; url: string }
  | { op: 'proxy-connect'; proxy: string; target: string; servername: string }
  | { op: 'banner'; host: string; port: number }
  | { op: 'tcp'; host: string; port: number; send?: string }
  | { op: 'raw'; host?: string; port?: number; unix?: string; steps: RawStep[]; waitMs?: number }
  | {
      op: 'tls';
      host: string;
      port?: number;
      servername: string;
      /** Wait this long after connecting before the ClientHello goes out. */
      delayMs?: number;
      /** Rewrite the ClientHello: record minor version 0x05 or 0xff, split into two records sent apart, or add an ECH extension. */
      mutate?: 'minor-05' | 'minor-ff' | 'split' | 'ech';
      /** Connect to this unix socket (the host's egress relay) and send an egress header first, as an app dialling the relay directly would. */
      relay?: { unix: string; name: string; ip: string; port: number };
    }
  | { op: 'get-json'; url: string };

/** One step of a raw probe: wait, then send latin1 text. */
export interface RawStep {
  delayMs?: number;
  send: string;
}

const PROBE_TIMEOUT_MS = 8000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const errorResult = (error: unknown) => ({ code: errorCode(error) ?? (error as Error).message });

function collect(stream: NodeJS.ReadableStream): Promise<string> {
  return new Promise((done, fail) => {
    let text = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => (text += chunk));
    stream.on('end', () => done(text));
    stream.on('error', fail);
    stream.resume();
  });
}

function request(module: typeof http | typeof https, options: https.RequestOptions): Promise<unknown> {
  return new Promise((done) => {
    const req = module.request({ ...options, agent: false }, (res) => {
      collect(res).then(
        (body) => done({ status: res.statusCode, body }),
        (error) => done(errorResult(error)),
      );
    });
    req.on('error', (error) => done(errorResult(error)));
    req.end();
  });
}

async function dnsQuery(probe: Extract<Probe, { op: 'dns' }>): Promise<unknown> {
  const query = buildQuery({ name: probe.name, type: DnsType[probe.type], class: 1 });
  const server = probe.server ?? '127.0.0.1';
  const port = probe.port ?? 53;
  const answer = await new Promise<Buffer>((done, fail) => {
    if (probe.tcp) {
      const socket = net.connect({ host: server, port });
      const prefix = Buffer.alloc(2);
      prefix.writeUInt16BE(query.length);
      socket.end(Buffer.concat([prefix, query]));
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.on('end', () => done(Buffer.concat(chunks).subarray(2)));
      socket.on('error', fail);
    } else {
      const socket = dgram.createSocket('udp4');
      socket.on('message', (message) => {
        socket.close();
        done(message);
      });
      socket.on('error', fail);
      socket.send(query, port, server);
    }
  });
  const parsed = parseDnsResponse(answer);
  return { rcode: parsed.header.rcode, tc: parsed.header.tc, answers: parsed.answers.map((a) => a.data ?? null) };
}

async function proxyConnect(probe: Extract<Probe, { op: 'proxy-connect' }>): Promise<unknown> {
  const [proxyHost, proxyPort] = probe.proxy.split(':') as [string, string];
  const socket = net.connect({ host: proxyHost, port: Number(proxyPort) });
  socket.on('error', () => {});
  socket.write(`CONNECT ${probe.target} HTTP/1.1\r\nHost: ${probe.target}\r\n\r\n`);
  const head = await new Promise<string>((done, fail) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end >= 0) {
        socket.off('data', onData);
        socket.pause();
        const rest = Buffer.from(text.slice(end + 4), 'latin1');
        if (rest.length > 0) socket.unshift(rest);
        done(text.slice(0, end));
      }
    };
    socket.on('data', onData);
    socket.once('error', fail);
    socket.once('end', () => done(text));
  });
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
  if (status !== 200) {
    const body = socket.readableEnded ? '' : await collect(socket);
    return { status, body: (head.split('\r\n\r\n')[1] ?? '') + body };
  }
  const secure = tls.connect({ socket, servername: probe.servername, rejectUnauthorized: false });
  const body = await new Promise<unknown>((done) => {
    secure.once('secureConnect', () => {
      secure.write(`GET /through-connect HTTP/1.1\r\nHost: ${probe.servername}\r\nConnection: close\r\n\r\n`);
      collect(secure).then(
        (text) => done({ status, body: text.slice(text.indexOf('\r\n\r\n') + 4) }),
        (error) => done({ status, ...errorResult(error) }),
      );
    });
    secure.once('error', (error) => done({ status, ...errorResult(error) }));
  });
  return body;
}

function banner(probe: Extract<Probe, { op: 'banner' }>): Promise<unknown> {
  return new Promise((done) => {
    const socket = net.connect({ host: probe.host, port: probe.port });
    let text = '';
    let greeted = false;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (!greeted && text.includes('\r\n')) {
        greeted = true;
        socket.write('HELO app\r\nQUIT\r\n');
      }
    });
    socket.on('end', () => done({ lines: text.split('\r\n').filter((line) => line !== '') }));
    socket.on('error', (error) => done({ ...errorResult(error), received: text }));
  });
}

function tcp(probe: Extract<Probe, { op: 'tcp' }>): Promise<unknown> {
  return new Promise((done) => {
    const socket = net.connect({ host: probe.host, port: probe.port });
    let connected = false;
    let text = '';
    socket.on('connect', () => {
      connected = true;
      if (probe.send !== undefined) socket.write(probe.send);
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => done({ connected, received: text, end: 'fin' }));
    socket.on('error', (error) => done({ connected, received: text, ...errorResult(error) }));
  });
}

/** Send the steps, then read until the peer ends, resets or `waitMs` passes. */
function raw(probe: Extract<Probe, { op: 'raw' }>): Promise<unknown> {
  return new Promise((done) => {
    const socket = probe.unix
      ? net.connect({ path: probe.unix })
      : net.connect({ host: probe.host!, port: probe.port! });
    let text = '';
    let finished = false;
    const finish = (result: Record<string, unknown>) => {
      if (finished) return;
      finished = true;
      socket.destroy();
      done({ received: text, ...result });
    };
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => finish({ end: 'fin' }));
    socket.on('error', (error) => finish(errorResult(error)));
    socket.once('connect', async () => {
      for (const step of probe.steps) {
        if (step.delayMs) await sleep(step.delayMs);
        if (finished) return;
        socket.write(step.send, 'latin1');
      }
      await sleep(probe.waitMs ?? 1000);
      finish({ end: 'waited' });
    });
  });
}

/** The first TLS record the client writes, rewritten as the probe says (handshake bytes unchanged except for 'ech'). */
function mutateHello(record: Buffer, how: NonNullable<Extract<Probe, { op: 'tls' }>['mutate']>): Buffer[] {
  if (how === 'minor-05' || how === 'minor-ff') {
    const out = Buffer.from(record);
    out[2] = how === 'minor-05' ? 0x05 : 0xff;
    return [out];
  }
  const handshake = record.subarray(5);
  if (how === 'split') {
    const cut = 40;
    const frame = (fragment: Buffer) =>
      Buffer.concat([Buffer.from([0x16, 0x03, 0x01, fragment.length >> 8, fragment.length & 0xff]), fragment]);
    return [frame(handshake.subarray(0, cut)), frame(handshake.subarray(cut))];
  }
  // Append an encrypted_client_hello extension (0xfe0d) and fix the three lengths around it.
  const extension = Buffer.from([0xfe, 0x0d, 0x00, 0x04, 0x00, 0x01, 0x02, 0x03]);
  let offset = 4 + 2 + 32;
  offset += 1 + handshake[offset]!;
  offset += 2 + handshake.readUInt16BE(offset);
  offset += 1 + handshake[offset]!;
  const message = Buffer.concat([handshake, extension]);
  message.writeUInt16BE(handshake.readUInt16BE(offset) + extension.length, offset);
  message.writeUIntBE(message.length - 4, 1, 3);
  const header = Buffer.from([0x16, 0x03, 0x01, 0, 0]);
  header.writeUInt16BE(message.length, 3);
  return [Buffer.concat([header, message])];
}

/** HTTPS by hand over a socket we control: a late or rewritten ClientHello, or straight to the host relay. */
async function tlsProbe(probe: Extract<Probe, { op: 'tls' }>): Promise<unknown> {
  const socket = probe.relay
    ? net.connect({ path: probe.relay.unix })
    : net.connect({ host: probe.host, port: probe.port ?? 443 });
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  if (probe.relay) {
    socket.write(encodeEgressHeader({ name: probe.relay.name, ip: probe.relay.ip, port: probe.relay.port }));
    const reply = await new Promise<Buffer>((resolve, reject) => {
      socket.once('readable', () => resolve(socket.read(4) as Buffer));
      socket.once('error', reject);
    });
    if (reply?.[3] !== 0) return { relayStatus: reply?.[3] ?? null };
  }
  if (probe.delayMs) await sleep(probe.delayMs);
  let first = true;
  const wire = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      if (!first || !probe.mutate) return socket.write(chunk, callback);
      first = false;
      const [one, two] = mutateHello(chunk, probe.mutate);
      socket.write(one!);
      if (!two) return callback();
      setTimeout(() => socket.write(two, callback), 100);
    },
    final(callback) {
      socket.end();
      callback();
    },
    destroy(error, callback) {
      socket.destroy();
      callback(error);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    if (!wire.push(chunk)) socket.pause();
  });
  socket.on('end', () => wire.push(null));
  socket.on('error', (error) => wire.destroy(error));
  socket.on('close', () => wire.destroy());
  const secure = tls.connect({ socket: wire, servername: probe.servername, rejectUnauthorized: false });
  return new Promise((done) => {
    secure.once('secureConnect', () => {
      secure.write(`GET /late HTTP/1.1\r\nHost: ${probe.servername}\r\nConnection: close\r\n\r\n`);
      collect(secure).then(
        (text) =>
          done({
            status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
            body: text.slice(text.indexOf('\r\n\r\n') + 4),
          }),
        (error) => done(errorResult(error)),
      );
    });
    secure.once('error', (error) => done(errorResult(error)));
  });
}

/** Run one probe and return what the app saw. */
export async function runProbe(probe: Probe): Promise<unknown> {
  try {
    switch (probe.op) {
      case 'lookup':
        return { addresses: (await dnsPromises.lookup(probe.name, { all: true })).map((entry) => entry.address) };
      case 'dns':
        return await dnsQuery(probe);
      case 'http':
        return await request(http, {
          host: probe.host,
          port: probe.port ?? 80,
          path: probe.path ?? '/',
          headers: probe.hostHeader ? { host: probe.hostHeader } : {},
        });
      case 'https':
        return await request(https, {
          host: probe.host,
          port: probe.port ?? 443,
          path: probe.path ?? '/',
          rejectUnauthorized: false,
          ...(probe.servername ? { servername: probe.servername } : {}),
        });
      case 'proxy-get': {
        const [host, port] = probe.proxy.split(':') as [string, string];
        const url = new URL(probe.url);
        return await request(http, { host, port: Number(port), path: probe.url, headers: { host: url.host } });
      }
      case 'proxy-connect':
        return await proxyConnect(probe);
      case 'banner':
        return await banner(probe);
      case 'tcp':
        return await tcp(probe);
      case 'raw':
        return await raw(probe);
      case 'tls':
        return await tlsProbe(probe);
      case 'get-json': {
        const response = await fetch(probe.url);
        return { status: response.status, json: await response.json() };
      }
    }
  } catch (error) {
    return errorResult(error);
  }
}

// Only as `node <this file> '<json>'`: the test runner also runs every file under dist/test, without arguments.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] !== undefined) {
  const timer = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ code: 'PROBE_TIMEOUT' })}\n`);
    process.exit(0);
  }, PROBE_TIMEOUT_MS);
  void runProbe(JSON.parse(process.argv[2]) as Probe).then((result) => {
    clearTimeout(timer);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  });
}
