import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { createAttestedCertificate } from '../src/tls/attested-certificate.js';
import { openSelfCertificateSource } from '../src/tls/certificate-source.js';
import { generateTlsKeyPair } from '../src/tls/key-pair.js';
import { LeafContexts } from '../src/tls/leaf-contexts.js';
import { silentLogger } from '../src/core/log.js';
import type { NginxCertificate } from './peers.js';

export interface PeerCertificate extends NginxCertificate {
  /** DER size of the leaf: it carries the attestation document, so it is large, and handshakes send it. */
  leafBytes: number;
  chainPem: string;
}

/**
 * A certificate for nginx made the way the runtime makes its base certificate: the runtime's own code,
 * the same state dir (so the same CA and simulated NSM), an ECDSA P-256 key, the same SANs with the
 * document in one. The runtime keeps its private key in memory only, so nginx cannot have that very
 * key; this one is the same in every way a handshake sees: key type, chain, and size on the wire.
 */
export async function issuePeerCertificate(
  stateDir: string,
  serverName: string,
  dir: string,
): Promise<PeerCertificate> {
  const nsm = await openSimulatedNsm({ stateDir });
  const source = await openSelfCertificateSource(stateDir, { logger: silentLogger() });
  try {
    const keyPair = await generateTlsKeyPair();
    const contexts = new LeafContexts(keyPair.privateKey, false);
    const issued = await createAttestedCertificate({ nsm, source, serverName, keyPair, contexts });
    const certPath = join(dir, 'peer-cert.pem');
    const keyPath = join(dir, 'peer-key.pem');
    writeFileSync(certPath, issued.certPem + issued.chainPem);
    writeFileSync(keyPath, keyPair.privateKeyPem, { mode: 0o600 });
    return { certPath, keyPath, leafBytes: new X509Certificate(issued.certPem).raw.length, chainPem: issued.chainPem };
  } finally {
    await source.close();
    await nsm.close();
  }
}
