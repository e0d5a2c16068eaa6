/**
 * The "internet" of the egress end-to-end test, run as a process inside its own namespace:
 *
 *   node egress-internet.js '<json spec>'
 *
 * - an authoritative DNS server (UDP and TCP on spec.dns:53) for the names in spec.zone,
 *   answering TC over UDP when an answer exceeds 512 bytes;
 * - on every address of the namespace: HTTPS on 443, HTTP on 80 and an SMTP-like server-first
 *   service on 25. Each answers with who it is (the local address), what it was asked for
 *   (SNI, Host) and who asked (the peer address), so the test sees which server it reached
 *   and that the connection came through the host relay.
 *
 * Prints one line `READY` on stdout once everything listens, then `SEEN {"sni":...}` for every
 * ClientHello SNI and `SEEN {"host":...}` for every HTTP request Host it receives.
 */
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import tls, { type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import {
  DnsTcpFrameReader,
  DnsType,
  encodeDnsName,
  encodeTcpFrame,
  parseDnsQuery,
} from '../../src/wire/dns-message.js';

export interface ZoneEntry {
  A?: string[];
  AAAA?: string[];
  CNAME?: string;
}

export interface InternetSpec {
  /** The address the DNS server listens on. */
  dns: string;
  zone: Record<string, ZoneEntry>;
}

/** A strip of the local address's IPv4-mapped prefix, so a dual-stack socket reports plain IPv4. */
const plainAddress = (address: string | undefined) => (address ?? '').replace(/^::ffff:/, '');

/** The answer of the zone to one question (wire bytes), or undefined to drop it. */
export function answerQuestion(zone: Record<string, ZoneEntry>, message: Buffer, udp: boolean): Buffer | undefined {
  let query;
  try {
    query = parseDnsQuery(message);
  } catch {
    return undefined;
  }
  const { question } = query;
  const records: Buffer[] = [];
  let name = question.name.toLowerCase();
  let entry = zone[name];
  const exists = entry !== undefined;
  for (let hops = 0; entry?.CNAME !== undefined && question.type !== DnsType.CNAME && hops < 8; hops++) {
    records.push(record(name, DnsType.CNAME, encodeDnsName(entry.CNAME)));
    name = entry.CNAME;
    entry = zone[name];
  }
  const addresses = question.type === DnsType.A ? entry?.A : question.type === DnsType.AAAA ? entry?.AAAA : undefined;
  for (const address of addresses ?? []) {
    records.push(
      record(
        name,
        question.type,
        question.type === DnsType.A ? Buffer.from(address.split('.').map(Number)) : ipv6Bytes(address),
      ),
    );
  }
  const header = Buffer.alloc(12);
  header.writeUInt16BE(query.header.id, 0);
  header[2] = 0x84 | (query.header.rd ? 1 : 0); // QR, AA
  header[3] = exists ? 0 : 3; // NOERROR or NXDOMAIN
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(records.length, 6);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(question.type, 0);
  fixed.writeUInt16BE(question.class, 2);
  const full = Buffer.concat([header, encodeDnsName(question.name), fixed, ...records]);
  if (!udp || full.length <= 512) return full;
  header[2] = header[2]! | 0x02; // TC: ask again over TCP
  header.writeUInt16BE(0, 6);
  return Buffer.concat([header, encodeDnsName(question.name), fixed]);
}

function record(name: string, type: number, data: Buffer): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(1, 2);
  // Long enough that the names stay in both name caches through a slow run of the whole file.
  fixed.writeUInt32BE(600, 4);
  fixed.writeUInt16BE(data.length, 8);
  return Buffer.concat([encodeDnsName(name), fixed, data]);
}

function ipv6Bytes(address: string): Buffer {
  const [head = '', tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  groups.forEach((group, i) => out.writeUInt16BE(parseInt(group, 16), i * 2));
  return out;
}

export interface AuthoritativeDns {
  port: number;
  /** Questions received, UDP and TCP. */
  readonly queries: { udp: number; tcp: number };
  /** When set, UDP questions are ignored (a resolver that does not answer). */
  silent: boolean;
  close(): Promise<void>;
}

/** The zone's DNS server on `host:port` (port 0: any free one, the same for UDP and TCP). */
export async function startAuthoritativeDns(
  zone: Record<string, ZoneEntry>,
  host: string,
  port: number,
): Promise<AuthoritativeDns> {
  const queries = { udp: 0, tcp: 0 };
  const tcp = net.createServer((socket) => {
    const reader = new DnsTcpFrameReader();
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      for (const message of reader.push(chunk)) {
        queries.tcp++;
        const answer = answerQuestion(zone, message, false);
        if (answer) socket.write(encodeTcpFrame(answer));
      }
    });
  });
  await new Promise<void>((resolve) => tcp.listen(port, host, () => resolve()));
  const bound = (tcp.address() as net.AddressInfo).port;
  const udp = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
  const server: AuthoritativeDns = {
    port: bound,
    queries,
    silent: false,
    close: async () => {
      udp.close();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    },
  };
  udp.on('message', (message, peer) => {
    queries.udp++;
    if (server.silent) return;
    const answer = answerQuestion(zone, message, true);
    if (answer) udp.send(answer, peer.port, peer.address);
  });
  await new Promise<void>((resolve) => udp.bind(bound, host, () => resolve()));
  return server;
}

async function main(spec: InternetSpec): Promise<void> {
  const listening: Array<Promise<unknown>> = [];
  const listen = (server: net.Server, port: number) =>
    listening.push(
      new Promise<void>((resolve) => server.listen({ host: '::', port, ipv6Only: false }, () => resolve())),
    );

  await startAuthoritativeDns(spec.zone, spec.dns, 53);

  const dir = mkdtempSync(join(tmpdir(), 'egress-internet-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
      '-subj',
      '/CN=internet.test',
      '-days',
      '1',
    ],
    {
      stdio: 'ignore',
    },
  );
  const key = readFileSync(join(dir, 'key.pem'));
  const cert = readFileSync(join(dir, 'cert.pem'));
  rmSync(dir, { recursive: true, force: true });

  const describe = (socket: net.Socket, extra: Record<string, unknown>) =>
    JSON.stringify({ server: plainAddress(socket.localAddress), from: plainAddress(socket.remoteAddress), ...extra });
  // What each server was asked for, whatever became of the connection: the tests assert that a denied
  // name never reached a server, not only that the app got an error.
  const seen = (what: Record<string, string | null>) => process.stdout.write(`SEEN ${JSON.stringify(what)}\n`);
  const context = tls.createSecureContext({ key, cert });
  const secure = https.createServer(
    { key, cert, SNICallback: (name, done) => (seen({ sni: name }), done(null, context)) },
    (req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(
        describe(req.socket, {
          sni: (req.socket as TLSSocket & { servername?: string }).servername || null,
          path: req.url,
        }),
      );
    },
  );
  listen(secure, 443);
  const plainHttp = http.createServer((req, res) => {
    seen({ host: req.headers.host ?? null });
    res.setHeader('content-type', 'application/json');
    res.end(describe(req.socket, { host: req.headers.host ?? null, path: req.url, method: req.method }));
  });
  listen(plainHttp, 80);
  const banner = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.write(`220 ${describe(socket, {})}\r\n`);
    let buffered = '';
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1');
      for (let end = buffered.indexOf('\r\n'); end >= 0; end = buffered.indexOf('\r\n')) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (line.toUpperCase() === 'QUIT') socket.end('221 bye\r\n');
        else socket.write(`250 ${line}\r\n`);
      }
    });
  });
  listen(banner, 25);

  await Promise.all(listening);
  process.stdout.write('READY\n');
  process.on('SIGTERM', () => process.exit(0));
}

// Only as `node <this file> '<json>'`: the test runner also runs every file under dist/test, without arguments.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] !== undefined) {
  void main(JSON.parse(process.argv[2]) as InternetSpec);
}
