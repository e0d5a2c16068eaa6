import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { Duplex } from 'node:stream';
import { connect, createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { LeafTemplate, certificatePem, certificatePublicKeyInfo } from './leaf-template.js';

/** What an SNICallback is given to answer with. */
export type ContextCallback = (err: Error | null, ctx?: SecureContext) => void;

/** The part of Node's native SecureContext used here: replacing the certificate (and chain) it serves. */
interface NativeSecureContext {
  setCert(certChainPem: string): void;
}

// The first certificate of a PEM chain: the leaf.
const LEAF_PEM = /^\s*-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/;
// How long the startup self-test of context sharing may take before it counts as failed.
const SELF_TEST_TIMEOUT_MS = 5000;

/**
 * Secure contexts for the leaves of one TLS key.
 *
 * A context of its own per leaf costs an SSL_CTX (OpenSSL 3 makes that slow), a parse of the key PEM and
 * one of the certificates: about 2 ms of event loop per new nonce, as much as all the rest of an issuance.
 * Node 20 takes the key only as PEM, so the parse cannot be skipped per context. But a handshake given a
 * context in SNICallback copies that context's key, certificate and chain into its own SSL at once
 * (`certCbDone` runs synchronously when the socket has no tls.Server). So the first handshake of a fresh
 * leaf is handed one shared context holding the key, with just the certificate swapped in; a leaf's own
 * context is built only when a second handshake asks for the same leaf (a cached nonce).
 *
 * That relies on Node internals (`SecureContext.context.setCert`, the synchronous copy), so it is used
 * only when `contextSharingWorks()` has proved it on this Node; otherwise every leaf gets its own context.
 */
export class LeafContexts {
  readonly #keyPem: string;
  readonly #spki: Buffer;
  readonly #shared: { context: SecureContext; native: NativeSecureContext } | undefined;

  /** `sharing`: the result of contextSharingWorks(). */
  constructor(privateKey: KeyObject, sharing: boolean) {
    // SEC1 names the key type in the PEM label, which spares OpenSSL's decoder trying every format (~25%
    // of the key parse).
    this.#keyPem = privateKey.export({ type: 'sec1', format: 'pem' }).toString();
    this.#spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
    this.#shared = sharing ? shareable(createSecureContext({ key: this.#keyPem })) : undefined;
  }

  /** Whether fresh leaves are served from the shared context. */
  get sharing(): boolean {
    return this.#shared !== undefined;
  }

  /** A context of its own serving `certChainPem` (leaf, then chain) with this key. */
  create(certChainPem: string): SecureContext {
    return createSecureContext({ key: this.#keyPem, cert: certChainPem });
  }

  /**
   * Calls `callback` at once with a context serving `certChainPem`. Only for a callback that takes the
   * context's certificate synchronously, as an SNICallback's does: the shared context serves another
   * certificate after the next call. Falls back to `fallback()` when sharing is off or the swap fails.
   */
  handOver(certChainPem: string, callback: ContextCallback, fallback: () => SecureContext): void {
    const shared = this.#shared;
    // OpenSSL silently drops a context's key when handed a certificate for another one, which would break
    // the shared context for every later leaf: such a certificate gets a context of its own (and fails there).
    if (shared && this.#fitsKey(certChainPem)) {
      let swapped = false;
      try {
        shared.native.setCert(certChainPem);
        swapped = true;
      } catch {
        // Unparsable: its own context gives the handshake the same error.
      }
      if (swapped) {
        callback(null, shared.context);
        return;
      }
    }
    callback(null, fallback());
  }

  #fitsKey(certChainPem: string): boolean {
    const leaf = LEAF_PEM.exec(certChainPem);
    if (!leaf) return false;
    try {
      return certificatePublicKeyInfo(Buffer.from(leaf[1]!, 'base64')).equals(this.#spki);
    } catch {
      return false;
    }
  }
}

function shareable(context: SecureContext): { context: SecureContext; native: NativeSecureContext } | undefined {
  const native = (context as SecureContext & { context?: Partial<NativeSecureContext> }).context;
  return typeof native?.setCert === 'function' ? { context, native: native as NativeSecureContext } : undefined;
}

let sharingVerdict: Promise<boolean> | undefined;

/**
 * Whether LeafContexts may share one context between fresh leaves on this Node: checked once per process
 * with two leaves of one key and a handshake over an in-memory pipe, where the SNICallback hands over the
 * first leaf and swaps in the second right after, as the next handshake would. Sharing is right only if
 * the client saw the first. Never rejects; any failure means no sharing.
 */
export function contextSharingWorks(): Promise<boolean> {
  sharingVerdict ??= selfTest().catch(() => false);
  return sharingVerdict;
}

async function selfTest(): Promise<boolean> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const template = new LeafTemplate({
    // Name: CN=self-test; an AKI of 20 zero bytes. Nothing verifies these leaves; they only differ.
    issuerName: Buffer.from('3014311230100603550403130973656c662d74657374', 'hex'),
    authorityKeyIdExtension: Buffer.concat([Buffer.from('301f0603551d23041830168014', 'hex'), Buffer.alloc(20)]),
    hash: 'sha256',
    signingKey: privateKey,
  });
  const leaf = async (name: string) =>
    certificatePem(
      await template.issue({
        serial: Buffer.of(1),
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + 60_000),
        dnsNames: [name],
        publicKeySpki: publicKey.export({ type: 'spki', format: 'der' }),
      }),
    );
  const [first, second] = [await leaf('first.self-test'), await leaf('second.self-test')];
  const contexts = new LeafContexts(privateKey, true);
  if (!contexts.sharing) return false;
  const [serverEnd, clientEnd] = pipePair();
  const server = new TLSSocket(serverEnd, {
    isServer: true,
    secureContext: contexts.create(second),
    SNICallback: (_name, callback) => {
      contexts.handOver(first, callback, () => contexts.create(first));
      contexts.handOver(
        second,
        () => undefined,
        () => contexts.create(second),
      );
    },
  });
  server.on('error', () => undefined);
  const client = connect({ socket: clientEnd, servername: 'first.self-test', rejectUnauthorized: false });
  try {
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), SELF_TEST_TIMEOUT_MS);
      timer.unref();
      client.once('secureConnect', () => {
        clearTimeout(timer);
        resolve(client.getPeerCertificate().subjectaltname === 'DNS:first.self-test');
      });
      client.once('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
  } finally {
    client.destroy();
    server.destroy();
  }
}

/** Two Duplex ends back to back: the self-test's handshake never touches a real socket. */
function pipePair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (index: number) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        ends[1 - index]!.push(chunk);
        callback();
      },
      final(callback) {
        ends[1 - index]!.push(null);
        callback();
      },
      destroy(err, callback) {
        const other = ends[1 - index]!;
        if (!other.destroyed) other.destroy();
        callback(err);
      },
    });
  ends.push(make(0), make(1));
  return [ends[0]!, ends[1]!];
}
