import assert from 'node:assert/strict';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { spawn } from 'node:child_process';
import { createHash, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { defaultSimulatedPcr, openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import type { Address } from '../src/net/address.js';
import { parseConfig } from '../src/config/load.js';
import { validateConfig } from '../src/config/validate.js';
import { ConfigError } from '../src/core/errors.js';
import { silentLogger } from '../src/core/log.js';
import { ChallengeBook } from '../src/provisioner/challenge-book.js';
import { ProvisionerClient } from '../src/provisioner/provisioner-client.js';
import { ProvisionerRefusal, ProvisioningError } from '../src/provisioner/provisioner-error.js';
import { startProvisioner, type Provisioner, type ProvisionerOptions } from '../src/provisioner/provisioner-service.js';
import { provisioningUserData } from '../src/wire/provisioner-protocol.js';
import { Runtime } from '../src/runtime.js';
import { openProvisionedCertificateSource } from '../src/tls/provisioned-certificate-source.js';
import { TlsTerminator } from '../src/tls/tls-terminator.js';
import { documentFromSan, echo, listenTls, peerLeaf } from './helpers/attested-tls.js';
import { captureLogs } from './helpers/log-capture.js';
import { NATIVE_SKIP } from './native-helpers.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';

x509.cryptoProvider.set(webcrypto);

const TIMEOUT_MS = 5_000;
const LOOPBACK: Address = { transport: 'tcp', host: '127.0.0.1', port: 0 };
const ALLOWED = { 0: defaultSimulatedPcr(0), 1: defaultSimulatedPcr(1), 2: defaultSimulatedPcr(2) };
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const tcp = (port: number): Address => ({ transport: 'tcp', host: '127.0.0.1', port });
const portOf = (address: Address) => (address as Address & { transport: 'tcp' }).port;

/** An extractable P-256 pair, so the test knows the private bytes it must never see on the wire. */
async function extractableKeys(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
}

async function csrFor(keys: webcrypto.CryptoKeyPair): Promise<{ pem: string; der: Buffer; spki: Uint8Array }> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=test',
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
  });
  return {
    pem: csr.toString('pem'),
    der: Buffer.from(csr.rawData),
    spki: new Uint8Array(await webcrypto.subtle.exportKey('spki', keys.publicKey)),
  };
}

/**
 * The parent's relay, as a loopback TCP proxy that keeps every byte the enclave sends, so the test
 * can show what reaches the provisioner.
 */
async function capturingRelay(target: number): Promise<{ address: Address; sent: Buffer[]; close(): Promise<void> }> {
  const sent: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: target });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    const chunks: Buffer[] = [];
    sent.push(Buffer.alloc(0));
    const index = sent.length - 1;
    client.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      sent[index] = Buffer.concat(chunks);
    });
    client.pipe(upstream).pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    address: tcp((server.address() as net.AddressInfo).port),
    sent,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The JSON body of each captured HTTP request. */
function requestBodies(sent: Buffer[]): Array<Record<string, string>> {
  return sent.map((raw) => {
    const text = raw.toString('utf8');
    return JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as Record<string, string>;
  });
}

async function post(
  provisioner: Provisioner,
  path: string,
  body: string | Buffer,
  method = 'POST',
): Promise<{ status: number; json: Record<string, string> }> {
  const response = await fetch(`http://127.0.0.1:${portOf(provisioner.address)}${path}`, {
    method,
    ...(method === 'POST' ? { body, headers: { 'content-type': 'application/json' } } : {}),
  });
  return { status: response.status, json: (await response.json()) as Record<string, string> };
}

/** Asserts a ProvisioningError carrying the provisioner's code, status and reason. */
function refusedWith(remoteCode: string, reason: RegExp, status = 403) {
  return (error: unknown) => {
    assert.ok(error instanceof ProvisioningError, `expected a ProvisioningError, got ${String(error)}`);
    assert.equal(error.code, 'ERR_PROVISIONING_REFUSED');
    assert.equal(error.remoteCode, remoteCode);
    assert.equal(error.status, status);
    assert.match(error.message, reason);
    assert.match(error.message, new RegExp(remoteCode));
    return true;
  };
}

describe('tls.source = "provisioner", end to end on loopback with the simulated NSM', () => {
  let dir: string;
  let nsm: SimulatedNsm;
  let provisioner: Provisioner;
  let relay: Awaited<ReturnType<typeof capturingRelay>>;
  const provisionerLogs = captureLogs('debug');
  const open = (options: Partial<ProvisionerOptions> = {}) =>
    startProvisioner({
      listen: LOOPBACK,
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      logger: provisionerLogs.logger,
      ...options,
    });
  const client = () => new ProvisionerClient({ address: provisioner.address, timeoutMs: TIMEOUT_MS });
  /** The provisioner's refusal lines with `code`. */
  const refusalsLogged = (code: string) =>
    provisionerLogs.lines.filter((l) => l.msg === 'provisioner refused a request' && l.code === code);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tls-provisioner-'));
    nsm = await openSimulatedNsm({ stateDir: join(dir, 'enclave') });
    provisioner = await open({ permittedDns: ['localhost'] });
    relay = await capturingRelay(portOf(provisioner.address));
  });
  after(async () => {
    await relay.close();
    await provisioner.close();
    await nsm.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('an allowlisted enclave gets an intermediate under the provisioner root, and a client trusting only that root verifies the attested leaf', async () => {
    const enclaveLogs = captureLogs('debug');
    let keys: webcrypto.CryptoKeyPair | undefined;
    const source = await openProvisionedCertificateSource({
      nsm,
      address: relay.address,
      timeoutMs: TIMEOUT_MS,
      logger: enclaveLogs.logger,
      generateKeyPair: async () => (keys = await extractableKeys()),
    });
    const terminator = await TlsTerminator.create({
      nsm,
      stateDir: join(dir, 'enclave'),
      serverName: 'localhost',
      sniNonceEncoding: 'hex',
      nonceCacheSize: 16,
      logger: silentLogger(),
      source,
    });
    const listener = await listenTls(terminator, echo);
    try {
      // The intermediate: the enclave's key, signed by the root, a CA that may sign leaves only.
      const root = new X509Certificate(provisioner.rootPem);
      const intermediate = new X509Certificate(source.intermediatePem);
      assert.equal(source.trustAnchorPem, provisioner.rootPem);
      assert.ok(intermediate.checkIssued(root) && intermediate.verify(root.publicKey));
      assert.deepEqual(
        intermediate.publicKey.export({ type: 'spki', format: 'der' }),
        Buffer.from(await webcrypto.subtle.exportKey('spki', keys!.publicKey)),
      );
      const parsed = new x509.X509Certificate(source.intermediatePem);
      const constraints = parsed.getExtension(x509.BasicConstraintsExtension)!;
      assert.equal(constraints.ca, true);
      assert.equal(constraints.pathLength, 0);
      assert.equal(constraints.critical, true);
      assert.equal(
        parsed.getExtension(x509.KeyUsagesExtension)!.usages & x509.KeyUsageFlags.keyCertSign,
        x509.KeyUsageFlags.keyCertSign,
      );
      assert.equal(parsed.getExtension('2.5.29.30')?.critical, true, 'permitted_dns gives a critical nameConstraints');

      // The served chain is leaf + intermediate: the root stays with the clients.
      assert.equal(terminator.store.base.chainPem, source.intermediatePem);

      // A strict client: Node's default verification against the provisioner root alone.
      const nonce = randomBytes(16);
      const servername = `${nonce.toString('hex')}.attest.localhost`;
      const socket = tls.connect({
        port: listener.port,
        host: '127.0.0.1',
        servername,
        ca: provisioner.rootPem,
        rejectUnauthorized: true,
        ALPNProtocols: ['http/1.1'],
      });
      await once(socket, 'secureConnect');
      try {
        assert.equal(socket.authorized, true);
        const leaf = peerLeaf(socket);
        assert.ok(leaf.checkIssued(intermediate) && leaf.verify(intermediate.publicKey));
        const verified = verifyAttestation(documentFromSan(leaf), {
          root: nsm.rootPem,
          nonce,
          userData: new Uint8Array(leaf.publicKey.export({ type: 'spki', format: 'der' })),
          expectedPcrs: [ALLOWED],
        });
        assert.equal(verified.document.moduleId, nsm.moduleId);
      } finally {
        socket.destroy();
      }

      // What crossed the relay: a challenge request, then the CSR, the document and the nonce. No private key.
      const bodies = requestBodies(relay.sent);
      assert.deepEqual(
        bodies.map((b) => Object.keys(b).sort()),
        [[], ['attestation_doc', 'csr', 'nonce']],
      );
      const sign = bodies[1]!;
      const wire = Buffer.concat(relay.sent);
      const jwk = await webcrypto.subtle.exportKey('jwk', keys!.privateKey);
      const scalar = Buffer.from(jwk.d!, 'base64url');
      const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys!.privateKey));
      const decoded = [
        wire,
        Buffer.from(sign.attestation_doc!, 'base64'),
        Buffer.from(sign.csr!.replace(/-----[^-]+-----|\s/g, ''), 'base64'),
        Buffer.from(sign.nonce!, 'hex'),
      ];
      for (const bytes of decoded) {
        assert.equal(bytes.indexOf(scalar), -1, 'the private scalar was sent');
        assert.equal(bytes.indexOf(pkcs8), -1, 'the PKCS#8 key was sent');
      }
      for (const form of [
        scalar.toString('hex'),
        scalar.toString('base64'),
        scalar.toString('base64url'),
        jwk.d!,
        'PRIVATE KEY',
      ]) {
        assert.equal(wire.toString('latin1').indexOf(form), -1, `the private key was sent as ${form.slice(0, 12)}`);
      }
      const csr = new x509.Pkcs10CertificateRequest(sign.csr!);
      assert.deepEqual(
        Buffer.from(csr.publicKey.rawData),
        intermediate.publicKey.export({ type: 'spki', format: 'der' }),
      );
      // The document binds the CSR key (user_data = the reserved prefix + SHA-256 of its SPKI) and carries the challenge.
      const document = verifyAttestation(Buffer.from(sign.attestation_doc!, 'base64'), { root: nsm.rootPem }).document;
      assert.deepEqual(
        Buffer.from(document.userData!),
        Buffer.concat([
          Buffer.from('enclave-runtime/provisioner/v1:'),
          createHash('sha256').update(Buffer.from(csr.publicKey.rawData)).digest(),
        ]),
      );
      assert.equal(hex(document.nonce!), sign.nonce);

      const signed = provisionerLogs.lines.find((l) => l.msg === 'signed an enclave intermediate CA');
      assert.equal(signed?.moduleId, nsm.moduleId);
      assert.ok(enclaveLogs.lines.some((l) => l.msg === 'provisioned the enclave intermediate CA'));
      assert.ok(!/PRIVATE KEY/.test(enclaveLogs.text() + provisionerLogs.text()));

      // Renewal: a new key and a new intermediate under the same root; new leaves come from it.
      const before = source.intermediatePem;
      await source.renew();
      assert.notEqual(source.intermediatePem, before);
      const issued = await source.issue({
        serverName: 'localhost',
        dnsNames: ['localhost'],
        publicKeySpki: new Uint8Array(intermediate.publicKey.export({ type: 'spki', format: 'der' })),
        attestationDocument: new Uint8Array(),
      });
      assert.ok(new X509Certificate(issued.certPem).checkIssued(new X509Certificate(source.intermediatePem)));
      assert.equal(issued.chainPem, source.intermediatePem);
    } finally {
      await listener.close();
      await terminator.close();
      await source.close();
    }
  });

  it('refuses an enclave whose PCRs are not on the allowlist, with the reason on both sides', async () => {
    const other = await openSimulatedNsm({ stateDir: join(dir, 'enclave'), pcrs: { 0: Buffer.alloc(48, 0x42) } });
    const enclaveLogs = captureLogs('debug');
    try {
      await assert.rejects(
        openProvisionedCertificateSource({
          nsm: other,
          address: provisioner.address,
          timeoutMs: TIMEOUT_MS,
          logger: enclaveLogs.logger,
        }),
        refusedWith(
          'ERR_ATTESTATION_PCR',
          /refused the enclave CA .*PCRs do not match any expected set \(set 1: PCR0 differ\)/,
        ),
      );
      const failed = enclaveLogs.lines.find((l) => l.msg === 'provisioning the enclave intermediate CA failed');
      assert.equal(failed?.remoteCode, 'ERR_ATTESTATION_PCR');
      assert.match(String(failed?.reason), /PCRs do not match/);
      assert.match(String(refusalsLogged('ERR_ATTESTATION_PCR').at(-1)?.reason), /PCRs do not match any expected set/);
    } finally {
      await other.close();
    }
  });

  it('refuses a debug-mode enclave unless allow_debug', async () => {
    const debug = await openSimulatedNsm({ stateDir: join(dir, 'enclave'), debug: true });
    try {
      await assert.rejects(
        openProvisionedCertificateSource({
          nsm: debug,
          address: provisioner.address,
          timeoutMs: TIMEOUT_MS,
          logger: silentLogger(),
        }),
        refusedWith('ERR_ATTESTATION_DEBUG', /debug mode/),
      );
    } finally {
      await debug.close();
    }
  });

  /** A well-formed sign request for `keys`, as an enclave makes it: a fresh challenge, the document binding the CSR key. */
  async function signRequestFor(keys: webcrypto.CryptoKeyPair) {
    const csr = await csrFor(keys);
    const challenge = await client().challenge();
    const document = await nsm.attest({ nonce: challenge.nonce, userData: provisioningUserData(csr.spki) });
    return {
      csr,
      body: { csr: csr.pem, attestation_doc: Buffer.from(document).toString('base64'), nonce: hex(challenge.nonce) },
    };
  }

  it('refuses a replayed challenge, and nonces it never issued', async () => {
    const { csr, body } = await signRequestFor(await extractableKeys());
    const first = await client().sign(body);
    assert.ok(new X509Certificate(first.certificate).ca);

    await assert.rejects(client().sign(body), refusedWith('ERR_PROVISIONER_CHALLENGE_USED', /already used.*replay/));
    assert.equal(refusalsLogged('ERR_PROVISIONER_CHALLENGE_USED').length, 1);

    // A well-formed, genuinely attested request naming a nonce this provisioner never handed out.
    const invented = randomBytes(32);
    const inventedDoc = await nsm.attest({ nonce: invented, userData: provisioningUserData(csr.spki) });
    await assert.rejects(
      client().sign({
        csr: csr.pem,
        attestation_doc: Buffer.from(inventedDoc).toString('base64'),
        nonce: hex(invented),
      }),
      refusedWith('ERR_PROVISIONER_CHALLENGE_UNKNOWN', /not an outstanding challenge/),
    );
    // The document must carry the nonce the request names.
    const fresh = await client().challenge();
    await assert.rejects(
      client().sign({ ...body, nonce: hex(fresh.nonce) }),
      refusedWith('ERR_ATTESTATION_NONCE', /nonce is not the challenge nonce named in the request/),
    );
  });

  it('refuses an expired challenge', async () => {
    let clock = Date.now();
    const timed = await startProvisioner({
      listen: LOOPBACK,
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      challengeTtlMs: 1000,
      logger: silentLogger(),
      now: () => clock,
    });
    try {
      const c = new ProvisionerClient({ address: timed.address, timeoutMs: TIMEOUT_MS });
      const csr = await csrFor(await extractableKeys());
      const challenge = await c.challenge();
      const document = await nsm.attest({ nonce: challenge.nonce, userData: provisioningUserData(csr.spki) });
      clock += 1001;
      await assert.rejects(
        c.sign({
          csr: csr.pem,
          attestation_doc: Buffer.from(document).toString('base64'),
          nonce: hex(challenge.nonce),
        }),
        refusedWith('ERR_PROVISIONER_CHALLENGE_EXPIRED', /expired 1 ms ago/),
      );
    } finally {
      await timed.close();
    }
  });

  it("refuses a document that binds another key than the CSR's", async () => {
    const csr = await csrFor(await extractableKeys());
    const otherKey = await csrFor(await extractableKeys());
    // Another key's binding, the raw SPKI, and the bare SHA-256 (what the app could ask the internal API for).
    const bareHash = new Uint8Array(createHash('sha256').update(csr.spki).digest());
    for (const userData of [provisioningUserData(otherKey.spki), csr.spki, bareHash]) {
      const challenge = await client().challenge();
      const document = await nsm.attest({ nonce: challenge.nonce, userData });
      await assert.rejects(
        client().sign({
          csr: csr.pem,
          attestation_doc: Buffer.from(document).toString('base64'),
          nonce: hex(challenge.nonce),
        }),
        refusedWith(
          'ERR_ATTESTATION_USER_DATA',
          /user_data does not bind the CSR's key: it must be "enclave-runtime\/provisioner\/v1:" followed by SHA-256 of the CSR's DER SubjectPublicKeyInfo/,
        ),
      );
    }
    assert.equal(refusalsLogged('ERR_ATTESTATION_USER_DATA').length, 3);
  });

  it('refuses a CSR whose self-signature does not verify (no proof of possession)', async () => {
    const csr = await csrFor(await extractableKeys());
    const tampered = Buffer.from(csr.der);
    tampered[tampered.length - 1]! ^= 0x01;
    const challenge = await client().challenge();
    const document = await nsm.attest({ nonce: challenge.nonce, userData: provisioningUserData(csr.spki) });
    await assert.rejects(
      client().sign({
        csr: tampered.toString('base64'),
        attestation_doc: Buffer.from(document).toString('base64'),
        nonce: hex(challenge.nonce),
      }),
      refusedWith('ERR_PROVISIONER_CSR', /self-signature/, 400),
    );
  });

  it('bounds requests: body size, routes, methods and shapes each get a JSON reason; challenges are never used up', async () => {
    const huge = await post(provisioner, '/sign', Buffer.alloc(65 * 1024, 0x20));
    assert.deepEqual([huge.status, huge.json.code], [413, 'ERR_PROVISIONER_TOO_LARGE']);
    const missing = await post(provisioner, '/sign', JSON.stringify({ csr: 'x' }));
    assert.deepEqual([missing.status, missing.json.code], [400, 'ERR_PROVISIONER_REQUEST']);
    assert.match(missing.json.error!, /attestation_doc is missing/);
    const notJson = await post(provisioner, '/sign', '{');
    assert.deepEqual([notJson.status, notJson.json.code], [400, 'ERR_PROVISIONER_REQUEST']);
    const route = await post(provisioner, '/nope', '{}');
    assert.deepEqual([route.status, route.json.code], [404, 'ERR_PROVISIONER_NOT_FOUND']);
    const method = await post(provisioner, '/challenge', '', 'GET');
    assert.deepEqual([method.status, method.json.code], [405, 'ERR_PROVISIONER_METHOD']);

    const small = await startProvisioner({
      listen: LOOPBACK,
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      maxPendingChallenges: 2,
      logger: silentLogger(),
    });
    try {
      // Handing out a challenge stores nothing, so more than max_pending_challenges are still answered.
      for (let i = 0; i < 3; i++) assert.equal((await post(small, '/challenge', '{}')).status, 200);
      assert.equal(small.challenges.spent, 0);
    } finally {
      await small.close();
    }
  });

  it('1,100 challenge requests from one caller do not keep another enclave from being provisioned', async () => {
    const flood = await startProvisioner({
      listen: LOOPBACK,
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      logger: silentLogger(),
    });
    try {
      const nonces = new Set<string>();
      // In rounds of 50 at once: the connection limit (256) is a different bound.
      for (let round = 0; round < 22; round++) {
        const answers = await Promise.all(Array.from({ length: 50 }, () => post(flood, '/challenge', '{}')));
        for (const answer of answers) {
          assert.equal(answer.status, 200, JSON.stringify(answer.json));
          nonces.add(answer.json.nonce!);
        }
      }
      assert.equal(nonces.size, 1100, 'every challenge is distinct');
      const source = await openProvisionedCertificateSource({
        nsm,
        address: flood.address,
        timeoutMs: TIMEOUT_MS,
        logger: silentLogger(),
      });
      try {
        assert.ok(new X509Certificate(source.intermediatePem).checkIssued(new X509Certificate(flood.rootPem)));
      } finally {
        await source.close();
      }
    } finally {
      await flood.close();
    }
  });

  it('with permitted_dns, an intermediate cannot vouch for an IP address: a leaf with an IP SAN fails chain verification', async () => {
    const keys = await extractableKeys();
    const { certificate } = await client().sign((await signRequestFor(keys)).body);
    const intermediate = new x509.X509Certificate(certificate);
    const leafKeys = await extractableKeys();
    const leafFor = async (san: x509.JsonGeneralName) =>
      x509.X509CertificateGenerator.create({
        serialNumber: '01',
        subject: 'CN=leaf',
        issuer: intermediate.subject,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + 3_600_000),
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        publicKey: leafKeys.publicKey,
        signingKey: keys.privateKey,
        extensions: [new x509.SubjectAlternativeNameExtension([san])],
      });
    const leafKeyPem = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', leafKeys.privateKey)).toString('base64');
    /** Serves `leaf` + the intermediate, and connects as a client trusting only the provisioner root. */
    const handshake = async (leaf: x509.X509Certificate, servername?: string): Promise<string> => {
      const server = tls.createServer({
        key: `-----BEGIN PRIVATE KEY-----\n${leafKeyPem}\n-----END PRIVATE KEY-----\n`,
        cert: leaf.toString('pem') + '\n' + certificate,
      });
      server.on('tlsClientError', () => {});
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      try {
        const socket = tls.connect({
          port: (server.address() as net.AddressInfo).port,
          host: '127.0.0.1',
          ...(servername ? { servername } : {}),
          ca: provisioner.rootPem,
          rejectUnauthorized: true,
        });
        const outcome = await new Promise<string>((resolve) => {
          socket.once('secureConnect', () => resolve('ok'));
          socket.once('error', (error) => resolve(error.message));
        });
        socket.destroy();
        return outcome;
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    };
    // Control: a DNS name inside the permitted subtree chains.
    assert.equal(await handshake(await leafFor({ type: 'dns', value: 'localhost' }), 'localhost'), 'ok');
    // An IP SAN (v4 and v6): excluded by the 0.0.0.0/0 and ::/0 subtrees.
    assert.equal(await handshake(await leafFor({ type: 'ip', value: '127.0.0.1' })), 'excluded subtree violation');
    assert.equal(await handshake(await leafFor({ type: 'ip', value: '::1' })), 'excluded subtree violation');
  });

  it('keeps its root in ca_dir: the key file 0600, the same root after a restart', async () => {
    const keyFile = await stat(join(dir, 'provisioner', 'ca-key.pem'));
    assert.equal(keyFile.mode & 0o777, 0o600);
    assert.equal(await readFile(provisioner.rootPath, 'utf8'), provisioner.rootPem);
    const again = await open();
    try {
      assert.equal(again.rootPem, provisioner.rootPem);
      assert.match(new X509Certificate(again.rootPem).subject, /CN=enclave-runtime provisioner root [0-9a-f]{8}/);
    } finally {
      await again.close();
    }
  });

  it('reports an unreachable provisioner as such', async () => {
    const closed = await startProvisioner({
      listen: LOOPBACK,
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      logger: silentLogger(),
    });
    await closed.close();
    await assert.rejects(
      openProvisionedCertificateSource({ nsm, address: closed.address, timeoutMs: TIMEOUT_MS, logger: silentLogger() }),
      (error: unknown) => {
        assert.ok(error instanceof ProvisioningError);
        assert.equal(error.code, 'ERR_PROVISIONING_UNREACHABLE');
        assert.match(error.message, /cannot reach the provisioner at tcp:127\.0\.0\.1:\d+: ECONNREFUSED/);
        return true;
      },
    );
  });

  it("works over a unix socket too (the addon's stream code, as vsock uses)", { skip: NATIVE_SKIP }, async () => {
    const path = join(dir, 'provisioner.sock');
    const overUnix = await startProvisioner({
      listen: { transport: 'unix', path },
      caDir: join(dir, 'provisioner'),
      attestationRootPem: nsm.rootPem,
      allowedPcrs: [ALLOWED],
      logger: silentLogger(),
    });
    try {
      const source = await openProvisionedCertificateSource({
        nsm,
        address: { transport: 'unix', path },
        timeoutMs: TIMEOUT_MS,
        logger: silentLogger(),
      });
      assert.ok(new X509Certificate(source.intermediatePem).checkIssued(new X509Certificate(overUnix.rootPem)));
      await source.close();
    } finally {
      await overUnix.close();
    }
  });

  describe('through Runtime.start (tls.source = "provisioner")', () => {
    const configFor = (stateDir: string, pcrs: Record<string, string> = {}) =>
      validateConfig(
        {
          // Every listener on an ephemeral port (or off), so parallel test files cannot collide.
          runtime: { state_dir: stateDir, log_level: 'silent', health_listen: 'tcp:127.0.0.1:0' },
          metrics: { enabled: false },
          ingress: { listen: 'tcp:127.0.0.1:0', app: 'tcp:127.0.0.1:9' },
          attestation: { api_listen: 'tcp:127.0.0.1:0', simulated: { pcrs } },
          tls: {
            source: 'provisioner',
            provisioner: { address: `tcp:127.0.0.1:${portOf(provisioner.address)}`, timeout_ms: TIMEOUT_MS },
          },
        },
        'dev',
      );

    it('serves leaves chaining to the provisioner root', async () => {
      // The runtime's state dir holds the same simulated chain, so the provisioner trusts its documents.
      const runtime = await Runtime.start(configFor(join(dir, 'enclave')), 'dev', silentLogger());
      try {
        const port = portOf(runtime.ingress!.address);
        const socket = tls.connect({
          port,
          host: '127.0.0.1',
          servername: 'localhost',
          ca: provisioner.rootPem,
          rejectUnauthorized: true,
          ALPNProtocols: ['http/1.1'],
        });
        await once(socket, 'secureConnect');
        assert.equal(socket.authorized, true);
        verifyAttestation(documentFromSan(peerLeaf(socket)), { root: nsm.rootPem, expectedPcrs: [ALLOWED] });
        socket.destroy();
      } finally {
        await runtime.stop();
      }
    });

    it("fails to start with the provisioner's reason when refused", async () => {
      const config = configFor(join(dir, 'enclave'), { 1: '11'.repeat(48) });
      await assert.rejects(
        Runtime.start(config, 'dev', silentLogger()),
        refusedWith('ERR_ATTESTATION_PCR', /PCR1 differ/),
      );
    });
  });
});

describe('provisioner configuration', () => {
  it('reads [provisioner] and [tls.provisioner], PCR sets as a list of tables', () => {
    const pcr = 'ab'.repeat(48);
    const config = parseConfig(
      `[tls]\nsource = "provisioner"\n[tls.provisioner]\naddress = "vsock:3:8444"\ntimeout_ms = 2000\n` +
        `[provisioner]\nlisten = "vsock:any:8444"\nallowed_pcrs = [{ 0 = "${pcr}", 8 = "${pcr}" }, { 0 = "${pcr}" }]\nallow_debug = true\npermitted_dns = ["example.com"]\n`,
      'run',
    );
    assert.equal(config.tls.source, 'provisioner');
    assert.deepEqual(config.tls.provisioner, { address: { transport: 'vsock', cid: 3, port: 8444 }, timeoutMs: 2000 });
    assert.equal(config.provisioner.allowedPcrs.length, 2);
    assert.deepEqual(Object.keys(config.provisioner.allowedPcrs[0]!), ['0', '8']);
    assert.deepEqual(config.provisioner.allowedPcrs[1]![0], Buffer.from(pcr, 'hex'));
    assert.equal(config.provisioner.allowDebug, true);
    assert.equal(config.provisioner.root, 'aws');
    assert.deepEqual(parseConfig('', 'dev').tls.provisioner.address, {
      transport: 'tcp',
      host: '127.0.0.1',
      port: 8444,
    });
  });

  it('names the key and the set at fault', () => {
    const cases: Array<[string, RegExp]> = [
      ['[provisioner]\nallowed_pcrs = [{ 0 = "zz" }]', /provisioner\.allowed_pcrs: set 1: .*PCR 0 as 96 hex digits/],
      ['[provisioner]\nallowed_pcrs = [{}]', /provisioner\.allowed_pcrs: set 1 is empty: it would match any enclave/],
      ['[provisioner]\nchallenge_ttl_ms = 0', /provisioner\.challenge_ttl_ms: 0 is not allowed/],
      ['[tls]\nsource = "ca"', /tls\.source: "ca" is not allowed; expected one of "self", "provisioner"/],
    ];
    for (const [text, expected] of cases) {
      assert.throws(
        () => parseConfig(text, 'run'),
        (error: unknown) => error instanceof ConfigError && expected.test(error.message),
      );
    }
  });

  it('refuses to start a provisioner with an empty allowlist', async () => {
    await assert.rejects(
      startProvisioner({
        listen: LOOPBACK,
        caDir: join(tmpdir(), 'never-created'),
        allowedPcrs: [],
        logger: silentLogger(),
      }),
      (error: unknown) => error instanceof ConfigError && /allowed_pcrs is empty/.test(error.message),
    );
  });

  it('keeps each challenge once: a used nonce is named as used until it expires', () => {
    let clock = 0;
    const book = new ChallengeBook({ ttlMs: 100, maxPending: 4, now: () => clock });
    const { nonce } = book.issue();
    book.take(nonce);
    assert.throws(() => book.take(nonce), { code: 'ERR_PROVISIONER_CHALLENGE_USED' });
    clock = 101;
    assert.throws(() => book.take(nonce), { code: 'ERR_PROVISIONER_CHALLENGE_EXPIRED' });
    assert.equal(book.spent, 0);
  });

  it("accepts only nonces it made: a changed byte, another book's nonce, or a pushed-out expiry are unknown", () => {
    const clock = 1_000;
    const book = new ChallengeBook({ ttlMs: 100, maxPending: 4, now: () => clock });
    const other = new ChallengeBook({ ttlMs: 100, maxPending: 4, now: () => clock });
    const { nonce } = book.issue();
    for (const index of [0, 7, 8, 15, 16, 31]) {
      const changed = Uint8Array.from(nonce);
      changed[index]! ^= 0x01;
      assert.throws(() => book.take(changed), { code: 'ERR_PROVISIONER_CHALLENGE_UNKNOWN' }, `byte ${index}`);
    }
    assert.throws(() => book.take(other.issue().nonce), { code: 'ERR_PROVISIONER_CHALLENGE_UNKNOWN' });
    assert.throws(() => book.take(nonce.subarray(0, 31)), { code: 'ERR_PROVISIONER_CHALLENGE_UNKNOWN' });
    book.take(nonce);
  });

  it('refuses to forget a spent challenge: beyond max_pending_challenges spent, /sign is busy until some expire', () => {
    let clock = 0;
    const book = new ChallengeBook({ ttlMs: 100, maxPending: 2, now: () => clock });
    const first = book.issue();
    clock = 50;
    const [second, third] = [book.issue(), book.issue()];
    book.take(first.nonce);
    book.take(second.nonce);
    assert.throws(
      () => book.take(third.nonce),
      (error: unknown) =>
        (error as ProvisionerRefusal).status === 503 && (error as ProvisionerRefusal).code === 'ERR_PROVISIONER_BUSY',
    );
    clock = 100;
    // The first has expired and is forgotten; the third is still valid.
    book.take(third.nonce);
    assert.throws(() => book.take(second.nonce), { code: 'ERR_PROVISIONER_CHALLENGE_USED' });
  });
});

describe('enclave-runtime provisioner (the command)', () => {
  it('exits 2 naming the key when allowed_pcrs is empty', async () => {
    const child = spawn(process.execPath, [CLI, 'provisioner'], { cwd: REPO_ROOT });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [code] = (await once(child, 'exit')) as [number];
    assert.equal(code, 2);
    assert.match(stderr, /provisioner\.allowed_pcrs is empty/);
  });

  it('serves challenges from a config file, then stops cleanly on SIGTERM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'provisioner-cli-'));
    const sim = await openSimulatedNsm({ stateDir: dir });
    await sim.close();
    const config = join(dir, 'provisioner.toml');
    await writeFile(
      config,
      `[runtime]\nlog_level = "info"\n[provisioner]\nlisten = "tcp:127.0.0.1:0"\nca_dir = "${join(dir, 'ca')}"\nroot = "${sim.rootPath}"\nallowed_pcrs = [{ 0 = "${hex(defaultSimulatedPcr(0))}" }]\n`,
    );
    const child = spawn(process.execPath, [CLI, 'provisioner', '--config', config], { cwd: REPO_ROOT });
    try {
      const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
        let pending = '';
        child.stderr.on('data', (chunk: Buffer) => {
          pending += chunk.toString();
          const lines = pending.split('\n');
          pending = lines.pop() ?? '';
          for (const line of lines) {
            const parsed = JSON.parse(line) as Record<string, unknown>;
            if (parsed.msg === 'provisioner ready') resolve(parsed);
          }
        });
        child.once('exit', (code) => reject(new Error(`exited with ${code} before it was ready`)));
      });
      const port = Number(String(ready.listen).split(':').at(-1));
      const answer = await new ProvisionerClient({ address: tcp(port), timeoutMs: TIMEOUT_MS }).challenge();
      assert.equal(answer.nonce.byteLength, 32);
      assert.ok(answer.expires.getTime() > Date.now());
      assert.equal(ready.root, join(dir, 'ca', 'ca.pem'));
      child.kill('SIGTERM');
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 0);
    } finally {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });
});
