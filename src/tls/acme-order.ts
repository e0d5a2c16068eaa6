import { createPrivateKey, X509Certificate } from 'node:crypto';
import https from 'node:https';
import { axios as acmeAxios, Client, crypto as acmeCrypto, type Authorization } from 'acme-client';
import type { Logger } from '../core/log.js';
import {
  MAX_SHARED_CHALLENGE_LIFETIME_MS,
  normalizeDomain,
  type ChallengeSharing,
  type TlsAlpnChallenges,
} from './tls-alpn-challenges.js';
import { TlsError } from './tls-error.js';

/** One ACME request (connect, send, answer) is given up after this long. */
export const ACME_REQUEST_TIMEOUT_MS = 30_000;
/** A whole order (account, authorizations, validation, finalize, download) is given up after this long. */
export const ACME_ORDER_TIMEOUT_MS = 10 * 60_000;
// Polling for a status change: 1 s doubling to 30 s, at most 10 polls (about 2.5 min per wait).
const POLL = { backoffAttempts: 10, backoffMin: 1000, backoffMax: 30_000 } as const;

/** One bounded step of an order: run `work` unless the order's deadline passed; failures name the step. */
type Step = <T>(what: string, work: () => Promise<T>) => Promise<T>;

/** A certificate from the ACME CA, for a key generated here. */
export interface AcmeIssued {
  /** The leaf alone. */
  certPem: string;
  /** The intermediates the CA sent after it, to be served with the leaf. */
  chainPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface AcmeOrdererOptions {
  directoryUrl: string;
  /** PKCS#8 PEM of the account key. */
  accountKeyPem: string;
  /** Contact for the account ("mailto:" is added); none when empty. */
  email?: string | undefined;
  domains: readonly string[];
  /** PEM of extra roots to trust for the ACME server itself (a private CA, pebble); system roots otherwise. */
  caPem?: string | undefined;
  /** Where pending TLS-ALPN-01 answers are published for the TLS terminator. */
  challenges: TlsAlpnChallenges;
  /** A fleet's members, which must answer too: the CA's validation may reach any of them. */
  sharing?: ChallengeSharing | undefined;
  logger: Logger;
  /** Overrides for tests; production keeps the defaults. */
  requestTimeoutMs?: number;
  pollMinMs?: number;
}

/**
 * Orders certificates for a fixed set of domains from one ACME directory (RFC 8555), proving
 * control with TLS-ALPN-01 (RFC 8737) on the ingress itself. acme-client speaks the protocol;
 * every key is generated in this process, and the CA only ever sees a CSR.
 */
export class AcmeOrderer {
  readonly domains: readonly string[];
  readonly #options: AcmeOrdererOptions;
  readonly #client: Client;
  readonly #interceptor: number;
  #accountReady = false;

  constructor(options: AcmeOrdererOptions) {
    if (options.domains.length === 0) throw new TlsError('ERR_TLS_ACME_CONFIG', 'ACME needs at least one domain');
    this.#options = options;
    this.domains = options.domains.map(normalizeDomain);
    this.#client = new Client({
      directoryUrl: options.directoryUrl,
      accountKey: options.accountKeyPem,
      backoffAttempts: POLL.backoffAttempts,
      backoffMin: options.pollMinMs ?? POLL.backoffMin,
      backoffMax: POLL.backoffMax,
    });
    // acme-client shares one axios instance per process; the trust anchors and timeout are attached
    // only to requests for this directory's origin, so another user of acme-client is unaffected.
    const origin = new URL(options.directoryUrl).origin;
    const agent = options.caPem ? new https.Agent({ ca: options.caPem, keepAlive: false }) : undefined;
    const timeout = options.requestTimeoutMs ?? ACME_REQUEST_TIMEOUT_MS;
    this.#interceptor = acmeAxios.interceptors.request.use((config) => {
      if (typeof config.url === 'string' && sameOrigin(config.url, origin)) {
        if (agent) config.httpsAgent = agent;
        config.timeout = timeout;
      }
      return config;
    });
  }

  /** Order one certificate naming every domain for the key `certificateKeyPem` (PKCS#8 PEM). */
  async order(certificateKeyPem: string): Promise<AcmeIssued> {
    // Each step is bounded by acme-client's request timeout and polling limits; the deadline bounds their sum.
    const deadline = Date.now() + ACME_ORDER_TIMEOUT_MS;
    const step: Step = async (what, work) => {
      if (Date.now() > deadline)
        throw new TlsError(
          'ERR_TLS_ACME_TIMEOUT',
          `ACME order not done within ${ACME_ORDER_TIMEOUT_MS} ms (at ${what})`,
        );
      try {
        return await work();
      } catch (error) {
        throw error instanceof TlsError
          ? error
          : new TlsError('ERR_TLS_ACME', `ACME ${what} failed: ${describe(error)}`, { cause: error });
      }
    };
    const client = this.#client;
    if (!this.#accountReady) {
      const contact = this.#options.email ? [`mailto:${this.#options.email}`] : undefined;
      await step('account registration', () =>
        client.createAccount({ termsOfServiceAgreed: true, ...(contact ? { contact } : {}) }),
      );
      this.#accountReady = true;
    }
    const identifiers = this.domains.map((value) => ({ type: 'dns', value }));
    const order = await step('new order', () => client.createOrder({ identifiers }));
    const authorizations = await step('authorizations', () => client.getAuthorizations(order));
    for (const authz of authorizations) {
      if (authz.status === 'valid') continue;
      await this.#validate(authz, step);
    }
    const [, csr] = await step('CSR', () =>
      acmeCrypto.createCsr({ commonName: this.domains[0]!, altNames: [...this.domains] }, certificateKeyPem),
    );
    const finalized = await step('finalize', () => client.finalizeOrder(order, csr));
    const pem = await step('certificate download', () => client.getCertificate(finalized));
    const issued = checkIssued(pem, certificateKeyPem, this.domains);
    this.#options.logger.info(
      { domains: this.domains, notAfter: issued.notAfter.toISOString() },
      'ACME certificate issued',
    );
    return issued;
  }

  /** Stop attaching this directory's settings to acme-client's requests. */
  close(): void {
    acmeAxios.interceptors.request.eject(this.#interceptor);
  }

  async #validate(authz: Authorization, step: Step): Promise<void> {
    const domain = normalizeDomain(authz.identifier.value);
    // acme-client's types list only http-01 and dns-01, though it handles tls-alpn-01 too.
    const challenge = authz.challenges.find((c) => (c.type as string) === 'tls-alpn-01');
    if (!challenge) {
      throw new TlsError(
        'ERR_TLS_ACME_CHALLENGE',
        `the CA offers no tls-alpn-01 challenge for ${domain} (offered: ${authz.challenges.map((c) => c.type).join(', ')})`,
      );
    }
    const keyAuthorization = await step('key authorization', () =>
      this.#client.getChallengeKeyAuthorization(challenge),
    );
    // The challenge certificate gets its own throwaway key: it is self-signed and shown only to the validator.
    const [keyPem, certPem] = await step('challenge certificate', async () =>
      acmeCrypto.createAlpnCertificate(authz, keyAuthorization, await acmeCrypto.createPrivateEcdsaKey('P-256')),
    );
    const { challenges, sharing, logger } = this.#options;
    challenges.add(domain, certPem.toString(), keyPem.toString());
    let shared = false;
    try {
      if (sharing) {
        // Behind a load balancer the CA's validation lands on any member: every reachable peer gets
        // the answer before the CA is told to look. Unreached peers fail that vantage point only.
        shared = true;
        const { peersReached, peers } = await step('challenge sharing', () =>
          sharing.share({
            domain,
            certPem: certPem.toString(),
            keyPem: keyPem.toString(),
            expiresAt: Date.now() + MAX_SHARED_CHALLENGE_LIFETIME_MS,
          }),
        );
        logger[peersReached < peers ? 'warn' : 'info'](
          { domain, peersReached, peers },
          'ACME TLS-ALPN-01 challenge handed to the fleet',
        );
      }
      logger.info({ domain }, 'ACME TLS-ALPN-01 challenge ready; asking the CA to validate');
      await step('challenge completion', () => this.#client.completeChallenge(challenge));
      await step('validation', () => this.#client.waitForValidStatus(authz));
    } finally {
      challenges.remove(domain);
      if (shared)
        await sharing
          ?.withdraw(domain)
          .catch((error: unknown) =>
            logger.warn({ domain, reason: (error as Error).message }, 'ACME: could not withdraw the shared challenge'),
          );
    }
  }
}

/**
 * Split the CA's PEM chain and check what it sent: the leaf must be for our key and name every
 * domain, so a confused or hostile CA response cannot become the served certificate.
 */
export function checkIssued(pem: string, certificateKeyPem: string, domains: readonly string[]): AcmeIssued {
  const parts = acmeCrypto.splitPemChain(pem);
  if (parts.length === 0) throw new TlsError('ERR_TLS_ACME_CERTIFICATE', 'the CA returned no certificate');
  const [certPem, ...chain] = parts as [string, ...string[]];
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certPem);
  } catch (error) {
    throw new TlsError(
      'ERR_TLS_ACME_CERTIFICATE',
      `the CA returned an unreadable certificate: ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (!leaf.checkPrivateKey(createPrivateKey(certificateKeyPem))) {
    throw new TlsError('ERR_TLS_ACME_CERTIFICATE', 'the CA returned a certificate for another key');
  }
  for (const domain of domains) {
    if (leaf.checkHost(domain, { wildcards: false }) === undefined) {
      throw new TlsError('ERR_TLS_ACME_CERTIFICATE', `the CA returned a certificate that does not name ${domain}`);
    }
  }
  const notBefore = new Date(leaf.validFrom);
  const notAfter = new Date(leaf.validTo);
  if (!(notAfter.getTime() > notBefore.getTime()))
    throw new TlsError('ERR_TLS_ACME_CERTIFICATE', 'the CA returned a certificate with no validity period');
  return { certPem: withNewline(certPem), chainPem: chain.map(withNewline).join(''), notBefore, notAfter };
}

function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

function sameOrigin(url: string, origin: string): boolean {
  try {
    return new URL(url).origin === origin;
  } catch {
    return false;
  }
}

// acme-client errors carry the CA's problem document in the message; nothing secret is in it.
function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
