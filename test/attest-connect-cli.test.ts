import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { defaultSimulatedPcr } from '../src/attestation/sim-nsm.js';
import { attestConnectCommand } from '../src/cli/attest-connect.js';
import type { CommandIo } from '../src/cli/io.js';
import { listenTls, openTerminator, type TerminatorFixture } from './helpers/attested-tls.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/** Runs the command in-process and returns its exit code and what it printed. */
async function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  const io: CommandIo = { stdout, stderr, stdin: Readable.from([]) };
  const code = await attestConnectCommand(argv, io);
  return { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

describe('attest connect against a local TlsTerminator', () => {
  let fx: TerminatorFixture;
  let debugFx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  let debugListener: Awaited<ReturnType<typeof listenTls>>;
  let root: string;
  let target: string;

  before(async () => {
    fx = await openTerminator();
    debugFx = await openTerminator({ sim: { debug: true } });
    listener = await listenTls(fx.terminator, (s) => s.resume());
    debugListener = await listenTls(debugFx.terminator, (s) => s.resume());
    root = join(fx.stateDir, 'sim-nsm-root.pem');
    target = `127.0.0.1:${listener.port}`;
  });
  after(async () => {
    await listener.close();
    await debugListener.close();
    await fx.close();
    await debugFx.close();
  });

  it('exits 0 with --fresh-nonce --root <state>/sim-nsm-root.pem --allow-debug, and the server attested that nonce', async () => {
    const calls = fx.nsm.nonceCalls;
    const result = await run([target, '--servername', 'localhost', '--fresh-nonce', '--root', root, '--allow-debug']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^valid: 127\.0\.0\.1:\d+ is module .*carries the nonce\)\n$/);
    assert.equal(result.stderr, '');
    assert.equal(fx.nsm.nonceCalls - calls, 1);
  });

  it('exits 0 with the matching --pcr values, and --json shows the nonce it sent inside the document', async () => {
    const pcrs = [0, 1, 2].flatMap((i) => ['--pcr', `${i}=${hex(defaultSimulatedPcr(i))}`]);
    const result = await run([target, '--fresh-nonce', '--root', root, '--json', ...pcrs]);
    assert.equal(result.code, 0, result.stderr);
    const json = JSON.parse(result.stdout) as {
      valid: boolean;
      connection: { nonce: string; servername: string };
      document: Record<string, unknown>;
    };
    assert.equal(json.valid, true);
    assert.equal(json.connection.nonce.length, 32);
    // Without --servername the base host of an IP target is the IP itself.
    assert.equal(json.connection.servername, `${json.connection.nonce}.attest.127.0.0.1`);
    assert.ok(JSON.stringify(json.document).includes(json.connection.nonce));
  });

  it('exits 1 with one line when a PCR differs', async () => {
    const result = await run([
      target,
      '--servername',
      'localhost',
      '--fresh-nonce',
      '--root',
      root,
      '--pcr',
      `0=${'00'.repeat(48)}`,
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^invalid: ERR_ATTESTATION_PCR: [^\n]+\n$/);
    assert.equal(result.stdout, '');
  });

  it('refuses a debug-mode enclave unless --allow-debug', async () => {
    const debugTarget = `127.0.0.1:${debugListener.port}`;
    const debugRoot = join(debugFx.stateDir, 'sim-nsm-root.pem');
    const refused = await run([debugTarget, '--root', debugRoot]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^invalid: ERR_ATTESTATION_DEBUG: /);
    const accepted = await run([debugTarget, '--root', debugRoot, '--allow-debug']);
    assert.equal(accepted.code, 0, accepted.stderr);
    assert.match(accepted.stdout, /debug mode/);
  });

  it('exits 1 when the document does not chain to the given root (default: the AWS root)', async () => {
    const result = await run([target, '--servername', 'localhost']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^invalid: ERR_ATTESTATION_(CHAIN|ROOT): [^\n]+\n$/);
  });

  it('exits 1 with one line when nothing listens, or when the handshake does not finish in --timeout', async () => {
    const closed = net.createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const refused = await run([`127.0.0.1:${port}`, '--root', root]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^error: ECONNREFUSED: [^\n]+\n$/);

    const silent = net.createServer((socket) => socket.on('error', () => {}));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    try {
      const timedOut = await run([
        `127.0.0.1:${(silent.address() as net.AddressInfo).port}`,
        '--root',
        root,
        '--timeout',
        '100',
      ]);
      assert.equal(timedOut.code, 1);
      assert.match(timedOut.stderr, /^error: ERR_CONNECT_TIMEOUT: [^\n]+\n$/);
    } finally {
      silent.close();
    }
  });

  it('exits 2 on usage errors', async () => {
    for (const argv of [
      [],
      ['a', 'b'],
      [`${target}`, '--fresh-nonce', '--nonce', 'abcd'],
      ['127.0.0.1:0'],
      ['127.0.0.1:99999'],
      ['bad host!'],
      [target, '--timeout', 'soon'],
      [target, '--servername', 'not a name'],
      [target, '--unknown'],
      [target, '--root', join(fx.stateDir, 'missing.pem')],
    ]) {
      const result = await run(argv);
      assert.equal(result.code, 2, argv.join(' '));
      assert.match(result.stderr, /attest connect/);
    }
  });

  it('prints its usage with --help', async () => {
    const result = await run(['--help']);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /--fresh-nonce/);
  });
});
