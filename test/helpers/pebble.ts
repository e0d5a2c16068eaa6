import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { spawn, type ChildProcess } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

x509.cryptoProvider.set(webcrypto);

export interface Pebble {
  /** https://127.0.0.1:PORT/dir */
  directoryUrl: string;
  /** PEM of the certificate pebble's own HTTPS listeners use: what tls.acme.ca_file must trust. */
  httpsCaPem: string;
  httpsCaFile: string;
  /** The root pebble issues under, from its management API (new on every start). */
  issuingRootPem(): Promise<string>;
  /** What pebble printed, for failure messages. */
  output(): string;
  close(): Promise<void>;
}

import { freePort } from './net.js';

export { freePort };

/** GET over HTTPS trusting only `ca`; the body as text. */
export function httpsGetText(url: string, ca: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.get(url, { ca, agent: false, timeout: timeoutMs }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () =>
        resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`no answer from ${url} within ${timeoutMs} ms`)));
    request.on('error', reject);
  });
}

/** A self-signed ECDSA certificate for localhost and 127.0.0.1, for pebble's HTTPS listeners. */
async function selfSignedLocalhost(): Promise<{ certPem: string; keyPem: string }> {
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=pebble test listener',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * 3600_000),
    keys,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
      ]),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
  return { certPem: cert.toString('pem') + '\n', keyPem };
}

/**
 * Start the Debian `pebble` ACME test server on loopback: no artificial validation sleeps, no nonce
 * rejections, TLS-ALPN-01 validated on `tlsPort` of whatever `-dnsserver` (the tiny DNS) resolves.
 */
export async function startPebble(options: { tlsPort: number; dnsPort: number }): Promise<Pebble> {
  const dir = await mkdtemp(join(tmpdir(), 'pebble-'));
  const { certPem, keyPem } = await selfSignedLocalhost();
  const certFile = join(dir, 'cert.pem');
  await writeFile(certFile, certPem);
  await writeFile(join(dir, 'key.pem'), keyPem, { mode: 0o600 });
  const [listenPort, managementPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  await writeFile(
    join(dir, 'pebble-config.json'),
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${listenPort}`,
        managementListenAddress: `127.0.0.1:${managementPort}`,
        certificate: certFile,
        privateKey: join(dir, 'key.pem'),
        httpPort,
        tlsPort: options.tlsPort,
        ocspResponderURL: '',
        externalAccountBindingRequired: false,
      },
    }),
  );
  let output = '';
  const child: ChildProcess = spawn(
    'pebble',
    ['-config', join(dir, 'pebble-config.json'), '-dnsserver', `127.0.0.1:${options.dnsPort}`],
    {
      env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const keep = (chunk: Buffer) => {
    // Bounded: the tail is what explains a failure.
    output = (output + chunk.toString('utf8')).slice(-64 * 1024);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = once(child, 'exit');
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const grace = new AbortController();
      await Promise.race([exited, sleep(5000, undefined, { signal: grace.signal }).catch(() => {})]);
      grace.abort();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  };
  const directoryUrl = `https://127.0.0.1:${listenPort}/dir`;
  // Ready once the directory answers; 200 tries of 50 ms bound the wait at about 10 s.
  for (let attempt = 0; ; attempt++) {
    try {
      const { status } = await httpsGetText(directoryUrl, certPem, 1000);
      if (status === 200) break;
    } catch {
      // not listening yet
    }
    if (attempt >= 200 || child.exitCode !== null) {
      await close();
      throw new Error(`pebble did not come up:\n${output}`);
    }
    await sleep(50);
  }
  return {
    directoryUrl,
    httpsCaPem: certPem,
    httpsCaFile: certFile,
    async issuingRootPem() {
      const { status, body } = await httpsGetText(`https://127.0.0.1:${managementPort}/roots/0`, certPem);
      if (status !== 200) throw new Error(`pebble /roots/0 answered ${status}`);
      return body;
    },
    output: () => output,
    close,
  };
}
