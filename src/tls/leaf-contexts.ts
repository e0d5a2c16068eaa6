import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { connect, createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { duplexPair } from '../net/duplex-pair.js';
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
  readonly #sharing: boolean;
  // The shared context and the chain it holds. setCert replaces the leaf but only appends to the chain
  // (SSL_CTX_add1_chain_cert), so the chain is set once, with the context, and leaves are swapped in alone;
  // a leaf with another chain (the CA was renewed) gets a new shared context.
  #shared: { context: SecureContext; native: NativeSecureContext; chainPem: string } | undefined;

  /** `sharing`: the result of contextSharingWorks(). */
  constructor(privateKey: KeyObject, sharing: boolean) {
    // SEC1 names the key type in its PEM label, so OpenSSL's decoder need not try the others (measured no
    // slower than PKCS#8, sometimes faster).
    this.#keyPem = privateKey.export({ type: 'sec1', format: 'pem' }).toString();
    this.#spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
    this.#sharing = sharing;
  }

  /** Whether fresh leaves are served from a shared context. */
  get sharing(): boolean {
    return this.#sharing;
  }

  /** A context of its own serving `leafPem` then `chainPem` with this key. */
  create(leafPem: string, chainPem: string): SecureContext {
    return createSecureContext({ key: this.#keyPem, cert: leafPem + chainPem });
  }

  /**
   * Calls `callback` at once with a context serving `leafPem` then `chainPem`. Only for a callback that
   * takes the context's certificates synchronously, as an SNICallback's does: the shared context serves
   * another leaf after the next call. Falls back to `fallback()` when sharing is off or the swap fails.
   * `checked`: the caller already had `fits(leafPem)` say yes, so the leaf is not parsed again here.
   */
  handOver(
    leafPem: string,
    chainPem: string,
    callback: ContextCallback,
    fallback: () => SecureContext,
    checked = false,
  ): void {
    // OpenSSL silently drops a context's key when handed a certificate for another one, which would break
    // the shared context for every later leaf: such a certificate gets a context of its own (and fails there).
    if (this.#sharing && (checked || this.fits(leafPem))) {
      const context = this.#swap(leafPem, chainPem);
      if (context) {
        callback(null, context);
        return;
      }
    }
    callback(null, fallback());
  }

  #swap(leafPem: string, chainPem: string): SecureContext | undefined {
    try {
      const shared = this.#shared;
      if (shared?.chainPem === chainPem) {
        shared.native.setCert(leafPem);
        return shared.context;
      }
      const context = this.create(leafPem, chainPem);
      const native = nativeOf(context);
      this.#shared = native ? { context, native, chainPem } : undefined;
      return context;
    } catch {
      // Unparsable: its own context gives the handshake the same error.
      return undefined;
    }
  }

  /** Whether the first certificate of `certChainPem` (whose DER is `leafDer`, when known) is for this key. */
  fits(certChainPem: string, leafDer?: Uint8Array): boolean {
    let der = leafDer;
    if (der === undefined) {
      const leaf = LEAF_PEM.exec(certChainPem);
      if (!leaf) return false;
      der = Buffer.from(leaf[1]!, 'base64');
    }
    try {
      return certificatePublicKeyInfo(der).equals(this.#spki);
    } catch {
      return false;
    }
  }
}

function nativeOf(context: SecureContext): NativeSecureContext | undefined {
  const native = (context as SecureContext & { context?: Partial<NativeSecureContext> }).context;
  return typeof native?.setCert === 'function' ? (native as NativeSecureContext) : undefined;
}

let sharingVerdict: Promise<boolean> | undefined;

/**
 * Whether LeafContexts may share one context between fresh leaves on this Node, checked once per process
 * over an in-memory pipe: the shared context is set up with one leaf and a chain, then the SNICallback
 * hands over a second leaf and swaps in a third right after, as the next handshake would. Sharing is right
 * only if the client saw the second leaf followed by the chain exactly once. Never rejects; any failure
 * means no sharing.
 */
export function contextSharingWorks(): Promise<boolean> {
  sharingVerdict ??= selfTest().catch(() => false);
  return sharingVerdict;
}

async function selfTest(): Promise<boolean> {
  if (!nativeOf(createSecureContext({}))) return false;
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const template = new LeafTemplate({
    // Name: CN=self-test; an AKI of 20 zero bytes. Nothing verifies these certificates; they only differ.
    issuerName: Buffer.from('3014311230100603550403130973656c662d74657374', 'hex'),
    authorityKeyIdExtension: Buffer.concat([Buffer.from('301f0603551d23041830168014', 'hex'), Buffer.alloc(20)]),
    hash: 'sha256',
    signingKey: privateKey,
  });
  const certificate = async (name: string) =>
    template.issue({
      serial: Buffer.of(1),
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 60_000),
      dnsNames: [name],
      publicKeySpki: publicKey.export({ type: 'spki', format: 'der' }),
    });
  const [setUp, served, next] = await Promise.all(['a', 'b', 'c'].map((n) => certificate(`${n}.self-test`)));
  // A chain certificate large enough that a missing or repeated copy cannot hide in the handshake's other bytes.
  const chain = await certificate(`${'0'.repeat(4000)}.self-test`);
  const chainPem = certificatePem(chain);
  const contexts = new LeafContexts(privateKey, true);
  const own = () => {
    throw new Error('the self-test must go through the shared context');
  };
  contexts.handOver(certificatePem(setUp!), chainPem, () => undefined, own);
  // The self-test never touches a real socket; it counts the bytes the server end sends.
  let sentToClient = 0;
  const [serverEnd, clientEnd] = duplexPair((bytes) => (sentToClient += bytes));
  const server = new TLSSocket(serverEnd, {
    isServer: true,
    secureContext: contexts.create(certificatePem(next!), chainPem),
    SNICallback: (_name, callback) => {
      // Thrown from here it would be uncaught: a failure fails the handshake, and so the self-test.
      try {
        contexts.handOver(certificatePem(served!), chainPem, callback, own);
        contexts.handOver(certificatePem(next!), chainPem, () => undefined, own);
      } catch (err) {
        callback(err as Error);
      }
    },
  });
  server.on('error', () => undefined);
  const client = connect({ socket: clientEnd, servername: 'b.self-test', rejectUnauthorized: false });
  try {
    const sawServed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), SELF_TEST_TIMEOUT_MS);
      timer.unref();
      client.once('secureConnect', () => {
        clearTimeout(timer);
        resolve(client.getPeerCertificate().subjectaltname === 'DNS:b.self-test');
      });
      client.once('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    // The server's first flight is the two certificates plus about a kilobyte (hello, signature, finished).
    const certificates = served!.length + chain.length;
    const received = sentToClient;
    return sawServed && received > certificates && received < certificates + chain.length / 2;
  } finally {
    client.destroy();
    server.destroy();
  }
}
