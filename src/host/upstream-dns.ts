/**
 * The resolver the host's DNS relay asks (host.upstream_dns): "HOST:PORT", "HOST" (port 53),
 * "[v6]:PORT", or "system" for the first nameserver of /etc/resolv.conf. A question goes over
 * UDP with a fresh random ID from a connected socket (only the resolver's replies are read),
 * and again over TCP when the answer comes back truncated.
 */
import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { errorCode, RuntimeError } from '../core/errors.js';
import { DnsTcpFrameReader, encodeTcpFrame, parseDnsHeader } from '../wire/dns-message.js';

export interface Upstream {
  host: string;
  port: number;
}

export class UpstreamDnsError extends RuntimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DNS_UPSTREAM', message, options);
  }
}

export const RESOLV_CONF = '/etc/resolv.conf';
const RESOLV_CONF_MAX_BYTES = 64 * 1024;
/** Resolvers advertise up to 4096 with EDNS; a datagram cannot exceed 65535 anyway. */
const UDP_RECEIVE_MAX = 65535;

/** Parse host.upstream_dns (not "system"); throws UpstreamDnsError when it is neither HOST nor HOST:PORT. */
export function parseUpstream(text: string): Upstream {
  const bracketed = /^\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?$/.exec(text);
  const plain = /^([^:[\]]+)(?::([0-9]{1,5}))?$/.exec(text);
  const host = bracketed?.[1] ?? (net.isIPv6(text) ? text : plain?.[1]);
  const portText = bracketed ? bracketed[2] : net.isIPv6(text) ? undefined : plain?.[2];
  const port = portText === undefined ? 53 : Number(portText);
  if (
    host === undefined ||
    net.isIP(host) === 0 ||
    host.includes('%') ||
    (bracketed && !net.isIPv6(host)) ||
    !(port >= 1 && port <= 65535)
  ) {
    throw new UpstreamDnsError(
      `host.upstream_dns ${JSON.stringify(text.slice(0, 80))} is not "system", IP, IP:PORT or [IPv6]:PORT`,
    );
  }
  return { host, port };
}

/** The first `nameserver` of resolv.conf text, or undefined. */
export function firstNameserver(resolvConf: string): string | undefined {
  for (const line of resolvConf.split('\n')) {
    const match = /^\s*nameserver\s+(\S+)/.exec(line);
    // A zone id (fe80::1%eth0) cannot be used by a plain socket address; such entries are skipped.
    if (match && net.isIP(match[1]!) !== 0 && !match[1]!.includes('%')) return match[1];
  }
  return undefined;
}

/** Resolve host.upstream_dns, reading resolv.conf for "system". */
export async function upstreamFromConfig(setting: string, resolvConf: string = RESOLV_CONF): Promise<Upstream> {
  if (setting !== 'system') return parseUpstream(setting);
  let text: string;
  try {
    const data = await readFile(resolvConf);
    text = data.subarray(0, RESOLV_CONF_MAX_BYTES).toString('utf8');
  } catch (error) {
    throw new UpstreamDnsError(`host.upstream_dns = "system" but ${resolvConf} cannot be read: ${errorCode(error)}`, {
      cause: error,
    });
  }
  const nameserver = firstNameserver(text);
  if (nameserver === undefined)
    throw new UpstreamDnsError(`host.upstream_dns = "system" but ${resolvConf} names no nameserver`);
  return { host: nameserver, port: 53 };
}

/**
 * Ask `upstream` the query `message` (wire bytes) and return its answer with the query's own
 * ID restored. UDP first; TCP when the UDP answer has TC set. Throws UpstreamDnsError on timeout.
 */
export async function queryUpstream(upstream: Upstream, message: Buffer, timeoutMs: number): Promise<Buffer> {
  const deadline = Date.now() + timeoutMs;
  const id = message.readUInt16BE(0);
  const outgoing = Buffer.from(message);
  const wireId = randomInt(0x10000);
  outgoing.writeUInt16BE(wireId, 0);
  let answer = await overUdp(upstream, outgoing, wireId, timeoutMs);
  if (parseDnsHeader(answer).tc) answer = await overTcp(upstream, outgoing, Math.max(1, deadline - Date.now()));
  const restored = Buffer.from(answer);
  restored.writeUInt16BE(id, 0);
  return restored;
}

function overUdp(upstream: Upstream, query: Buffer, wireId: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({
      type: net.isIPv6(upstream.host) ? 'udp6' : 'udp4',
      recvBufferSize: UDP_RECEIVE_MAX,
    });
    let settled = false;
    const done = (error: Error | undefined, answer?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve(answer!);
    };
    const timer = setTimeout(
      () => done(new UpstreamDnsError(`no UDP answer from ${upstream.host}:${upstream.port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on('error', (error) =>
      done(new UpstreamDnsError(`UDP to ${upstream.host}:${upstream.port}: ${error.message}`, { cause: error })),
    );
    socket.on('message', (answer) => {
      // Anything not answering our ID is a stray or a spoof: keep waiting for the real one.
      if (answer.length >= 12 && answer.readUInt16BE(0) === wireId && (answer[2]! & 0x80) !== 0)
        done(undefined, answer);
    });
    socket.connect(upstream.port, upstream.host, () => socket.send(query));
  });
}

function overTcp(upstream: Upstream, query: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: upstream.host, port: upstream.port });
    const reader = new DnsTcpFrameReader();
    let settled = false;
    const done = (error: Error | undefined, answer?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(answer!);
    };
    const timer = setTimeout(
      () => done(new UpstreamDnsError(`no TCP answer from ${upstream.host}:${upstream.port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on('error', (error) =>
      done(new UpstreamDnsError(`TCP to ${upstream.host}:${upstream.port}: ${error.message}`, { cause: error })),
    );
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const answer of reader.push(chunk)) {
          if (answer.readUInt16BE(0) === query.readUInt16BE(0)) return done(undefined, Buffer.from(answer));
        }
      } catch (error) {
        done(
          new UpstreamDnsError(`TCP answer from ${upstream.host}:${upstream.port}: ${(error as Error).message}`, {
            cause: error,
          }),
        );
      }
    });
    socket.once('end', () =>
      done(new UpstreamDnsError(`${upstream.host}:${upstream.port} closed the TCP connection without an answer`)),
    );
    socket.write(encodeTcpFrame(query));
  });
}
