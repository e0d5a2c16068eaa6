import { once } from 'node:events';
import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { buildErrorResponse, DnsRcode, DnsType, parseDnsQuery } from '../../src/wire/dns-message.js';

/**
 * A UDP DNS server on 127.0.0.1 that answers A questions for the given names with 127.0.0.1, other
 * types for them with an empty NOERROR, and everything else with NXDOMAIN: enough for pebble's
 * validator (-dnsserver) to find the ingress under a test domain.
 */
export async function startTinyDns(
  names: readonly string[],
): Promise<{ port: number; queries: string[]; close(): Promise<void> }> {
  const known = new Set(names.map((name) => name.toLowerCase()));
  const queries: string[] = [];
  const socket = dgram.createSocket('udp4');
  socket.on('message', (message, peer) => {
    let answer: Buffer;
    try {
      const query = parseDnsQuery(message);
      const name = query.question.name.toLowerCase().replace(/\.$/, '');
      queries.push(`${name}/${query.question.type}`);
      if (!known.has(name)) answer = buildErrorResponse(query, DnsRcode.NXDOMAIN);
      else if (query.question.type !== DnsType.A) answer = buildErrorResponse(query, DnsRcode.NOERROR);
      else {
        const head = buildErrorResponse(query, DnsRcode.NOERROR);
        head.writeUInt16BE(1, 6); // ANCOUNT
        // Name: a pointer to the question's name at offset 12; type A, class IN, TTL 1 s, 4 bytes of address.
        const record = Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1]);
        answer = Buffer.concat([head, record]);
      }
    } catch {
      return;
    }
    socket.send(answer, peer.port, peer.address);
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return {
    port: (socket.address() as AddressInfo).port,
    queries,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
