import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TLS_CIPHER_SUITE } from './subject.js';

const SOURCE = fileURLToPath(new URL('../../bench/tls-handshaker.c', import.meta.url));
/** What the handshake rows need to build their client; the bench falls back to Node's client without it. */
export const HANDSHAKER_INSTALL = 'apt-get install -y gcc libssl-dev';

/**
 * Who makes the handshakes of the rate rows: `bench/tls-handshaker.c`, built for this run (about 1 ms
 * of CPU per handshake), or, where it cannot be built or `--handshake-client node` asks for it, Node's
 * tls.connect (about 2 ms): on two shared cores a heavier client leaves the servers less CPU, and rates
 * that say more about the client.
 */
export type HandshakeClient = { kind: 'c'; path: string } | { kind: 'node'; why: string };

/** Compiles the C client into `dir`; the Node client, with the reason, where that fails. */
export function buildHandshakeClient(dir: string): HandshakeClient {
  const path = join(dir, 'tls-handshaker');
  const built = spawnSync('cc', ['-O2', '-o', path, SOURCE, '-lssl', '-lcrypto', '-lm'], { encoding: 'utf8' });
  if (built.error || built.status !== 0) {
    const reason = built.error ? built.error.message : built.stderr.trim().split('\n')[0];
    return { kind: 'node', why: `bench/tls-handshaker.c did not build (${reason}; ${HANDSHAKER_INSTALL})` };
  }
  return { kind: 'c', path };
}

export interface HandshakerResult {
  handshakes: number;
  seconds: number;
  errors: number;
  resumed: number;
}

/**
 * Runs the C client for `durationMs`: `clients` connections at once, each a full handshake to
 * 127.0.0.1:`port` with SNI `servername` (with `nonce`, a new `<hex>.attest.<servername>` each), then a
 * clean close. It pins TLS 1.3 and the suite of every other row (TLS_AES_128_GCM_SHA256).
 */
export function runHandshakeClient(
  path: string,
  port: number,
  clients: number,
  durationMs: number,
  servername: string,
  nonce: boolean,
): Promise<HandshakerResult> {
  if (TLS_CIPHER_SUITE !== 'TLS_AES_128_GCM_SHA256') throw new Error('bench/tls-handshaker.c pins another suite');
  const args = ['127.0.0.1', String(port), String(clients), String(durationMs / 1000), servername];
  const child = spawn(path, nonce ? [...args, 'nonce'] : args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (err += text));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`tls-handshaker exited with ${code}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out) as HandshakerResult);
      } catch {
        reject(new Error(`tls-handshaker printed no result: ${out.trim()} ${err.trim()}`));
      }
    });
  });
}
