/**
 * Sends allowed DNS questions to the host's DNS relay and learns from the answers. One relay
 * stream per question, framed as DNS over TCP (two-byte length): streams are cheap over vsock,
 * and a stuck answer then holds up nobody else. Questions in flight are bounded, and each has
 * a deadline after which the caller answers SERVFAIL.
 *
 * The host is not trusted, so an answer is used only when it matches the question (ID, name,
 * type); the name cache then maps only the question's CNAME chain's addresses to the question.
 */
import { randomInt } from 'node:crypto';
import { formatAddress, type Address } from '../net/address.js';
import { connect } from '../net/transport.js';
import { RuntimeError } from '../core/errors.js';
import {
  DnsRcode,
  DnsTcpFrameReader,
  DnsType,
  encodeDnsName,
  encodeTcpFrame,
  parseDnsResponse,
  type DnsQuestion,
} from '../wire/dns-message.js';
import type { NameCache } from './name-cache.js';
import type { RelayWatch } from './relay-watch.js';

/** The question could not be answered: too many in flight, relay down, no or bad answer in time. */
export class DnsForwardError extends RuntimeError {
  constructor(code: 'ERR_DNS_OVERLOADED' | 'ERR_DNS_UPSTREAM', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export interface DnsForwarderOptions {
  relay: Address;
  cache: NameCache;
  maxInFlight: number;
  /** Bound on connecting to the relay. */
  connectTimeoutMs: number;
  /** Bound on the whole question, connect included. */
  timeoutMs: number;
  /** Told whether each connect to the relay succeeded. */
  watch?: RelayWatch;
}

/** Below the 5 s a stub resolver (glibc, c-ares) waits, so our SERVFAIL arrives before its retry. */
export const DNS_FORWARD_TIMEOUT_MS = 4000;

export class DnsForwarder {
  readonly #options: DnsForwarderOptions;
  #inFlight = 0;

  constructor(options: DnsForwarderOptions) {
    this.#options = options;
  }

  /** Questions waiting for the relay now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Forward a query (wire bytes) for `question` and return the relay's answer, after checking it
   * answers this question and recording its addresses in the name cache.
   */
  async forward(query: Buffer, question: DnsQuestion): Promise<Buffer> {
    if (this.#inFlight >= this.#options.maxInFlight) {
      throw new DnsForwardError('ERR_DNS_OVERLOADED', `${this.#inFlight} DNS questions already waiting for the relay`);
    }
    this.#inFlight++;
    try {
      const response = await this.#exchange(query);
      const parsed = parseDnsResponse(response);
      const asked = question.name.toLowerCase();
      const echoed = parsed.questions[0];
      if (
        !parsed.header.qr ||
        parsed.header.id !== query.readUInt16BE(0) ||
        parsed.questions.length !== 1 ||
        echoed!.name.toLowerCase() !== asked ||
        echoed!.type !== question.type
      ) {
        throw new DnsForwardError(
          'ERR_DNS_UPSTREAM',
          `the DNS relay's answer does not match the question for ${question.name}`,
        );
      }
      if (parsed.header.rcode === DnsRcode.NOERROR) this.#options.cache.learn(question.name, parsed.answers);
      return response;
    } catch (error) {
      if (error instanceof DnsForwardError) throw error;
      throw new DnsForwardError(
        'ERR_DNS_UPSTREAM',
        `DNS relay ${formatAddress(this.#options.relay)}: ${(error as Error).message}`,
        { cause: error },
      );
    } finally {
      this.#inFlight--;
    }
  }

  /**
   * The addresses of an (already allowed) name, for the HTTP proxy: A first, AAAA when there is
   * no A. Learned into the name cache like any other answer. Empty when the name has none.
   */
  async resolve(name: string): Promise<string[]> {
    for (const type of [DnsType.A, DnsType.AAAA]) {
      const question = { name, type, class: 1 };
      const response = parseDnsResponse(await this.forward(buildQuery(question), question));
      if (response.header.rcode !== DnsRcode.NOERROR) return [];
      const addresses = this.#options.cache.learn(name, response.answers);
      if (addresses.length > 0) return addresses;
    }
    return [];
  }

  async #exchange(query: Buffer): Promise<Buffer> {
    const { relay, connectTimeoutMs, timeoutMs, watch } = this.#options;
    const deadline = Date.now() + timeoutMs;
    let stream;
    try {
      stream = await connect(relay, { timeoutMs: Math.min(connectTimeoutMs, timeoutMs) });
    } catch (error) {
      watch?.failed(relay, error);
      throw error;
    }
    watch?.reached(relay);
    return new Promise<Buffer>((resolve, reject) => {
      const reader = new DnsTcpFrameReader();
      const done = (error: Error | undefined, answer?: Buffer) => {
        clearTimeout(timer);
        stream.destroy();
        if (error) reject(error);
        else resolve(answer!);
      };
      const timer = setTimeout(
        () => done(new Error(`no answer within ${timeoutMs} ms`)),
        Math.max(1, deadline - Date.now()),
      );
      stream.on('data', (chunk: Buffer) => {
        try {
          const [answer] = reader.push(chunk);
          if (answer) done(undefined, Buffer.from(answer));
        } catch (error) {
          done(error as Error);
        }
      });
      stream.once('end', () => done(new Error('the relay closed the stream without an answer')));
      stream.once('error', (error) => done(error));
      stream.write(encodeTcpFrame(query));
    });
  }
}

/** A recursive query for one question, with a random ID. */
export function buildQuery(question: DnsQuestion): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(randomInt(0x10000), 0);
  header[2] = 0x01; // RD
  header.writeUInt16BE(1, 4);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(question.type, 0);
  fixed.writeUInt16BE(question.class, 2);
  return Buffer.concat([header, encodeDnsName(question.name), fixed]);
}
