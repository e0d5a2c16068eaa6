import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import {
  CLIENT_HELLO_MAX_LENGTH,
  ClientHelloError,
  parseClientHello,
  type ClientHelloResult,
} from '../src/egress/client-hello.js';
import { commandMissing } from './helpers/privilege.js';
import { Prng } from './helpers/prng.js';

/**
 * Run `client` against a local TCP server and return the first TLS record it sends, framed
 * by the record header alone so the capture does not depend on the parser under test.
 */
async function captureFirstRecord(client: (port: number) => () => void): Promise<Buffer> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  let stop = (): void => {};
  try {
    const captured = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no ClientHello within 10 s')), 10_000);
      server.on('connection', (socket) => {
        let data = Buffer.alloc(0);
        socket.on('error', () => {});
        socket.on('data', (chunk: Buffer) => {
          data = Buffer.concat([data, chunk]);
          if (data.length >= 5 && data.length >= 5 + data.readUInt16BE(3)) {
            clearTimeout(timer);
            socket.destroy();
            resolve(data.subarray(0, 5 + data.readUInt16BE(3)));
          }
        });
      });
      stop = client((server.address() as AddressInfo).port);
    });
    return captured;
  } finally {
    stop();
    server.close();
  }
}

function nodeClient(options: { servername?: string; ALPNProtocols?: string[]; maxVersion?: 'TLSv1.2' }) {
  return (port: number) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ...options });
    socket.on('error', () => {});
    return () => socket.destroy();
  };
}

function opensslClient(args: string[]) {
  return (port: number) => {
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    child.on('error', () => {});
    return () => child.kill();
  };
}

function hello(result: ClientHelloResult): { serverName?: string; alpn?: string[] } {
  assert.equal(result.kind, 'client-hello');
  const { kind: _kind, ...rest } = result as { kind: 'client-hello'; serverName?: string; alpn?: string[] };
  return rest;
}

/** Re-cut one record's handshake bytes into records of the given sizes. */
function splitRecords(record: Buffer, sizes: number[]): Buffer {
  const handshake = record.subarray(5);
  const out: Buffer[] = [];
  let offset = 0;
  for (const size of [...sizes, handshake.length]) {
    if (offset >= handshake.length) break;
    const fragment = handshake.subarray(offset, Math.min(handshake.length, offset + size));
    const head = Buffer.from([0x16, 0x03, 0x01, 0, 0]);
    head.writeUInt16BE(fragment.length, 3);
    out.push(head, fragment);
    offset += fragment.length;
  }
  return Buffer.concat(out);
}

// A hand-made ClientHello around the given extensions, for the malformed cases.
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const vec16 = (...parts: Buffer[]): Buffer => Buffer.concat([u16(Buffer.concat(parts).length), ...parts]);
const ext = (type: number, data: Buffer): Buffer => Buffer.concat([u16(type), vec16(data)]);
const sni = (...names: Array<[number, string | Buffer]>): Buffer =>
  ext(
    0,
    vec16(
      ...names.map(([type, name]) =>
        Buffer.concat([Buffer.from([type]), vec16(Buffer.from(name as string, 'latin1'))]),
      ),
    ),
  );
const alpn = (...names: string[]): Buffer =>
  ext(16, vec16(...names.map((n) => Buffer.concat([Buffer.from([n.length]), Buffer.from(n, 'latin1')]))));
function craft(
  extensions: Buffer | null,
  { handshakeType = 1, body }: { handshakeType?: number; body?: Buffer } = {},
): Buffer {
  const fixed = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([0]),
    vec16(Buffer.from([0x13, 0x01])),
    Buffer.from([1, 0]),
  ]);
  const message = body ?? Buffer.concat([fixed, extensions === null ? Buffer.alloc(0) : vec16(extensions)]);
  const handshake = Buffer.concat([
    Buffer.from([handshakeType, message.length >> 16, (message.length >> 8) & 0xff, message.length & 0xff]),
    message,
  ]);
  return Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), u16(handshake.length), handshake]);
}

function rejects(data: Buffer, pattern: RegExp): void {
  assert.throws(
    () => parseClientHello(data),
    (e: unknown) => e instanceof ClientHelloError && e.code === 'ERR_CLIENT_HELLO' && pattern.test(e.message),
  );
}

const captures = new Map<string, Buffer>();
const opensslMissing = commandMissing('openssl');

describe('parseClientHello on real ClientHellos', () => {
  before(async () => {
    captures.set(
      'node-sni-alpn',
      await captureFirstRecord(nodeClient({ servername: 'api.example.com', ALPNProtocols: ['h2', 'http/1.1'] })),
    );
    captures.set('node-no-sni', await captureFirstRecord(nodeClient({})));
    captures.set(
      'node-tls12',
      await captureFirstRecord(nodeClient({ servername: 'Mixed.Case.Example', maxVersion: 'TLSv1.2' })),
    );
    if (!opensslMissing) {
      captures.set(
        'openssl-sni',
        await captureFirstRecord(opensslClient(['-servername', 'x.example.org', '-alpn', 'h2,http/1.1'])),
      );
      captures.set('openssl-no-sni', await captureFirstRecord(opensslClient(['-noservername'])));
    }
  });

  it('reads SNI and ALPN from Node tls.connect', () => {
    assert.deepEqual(hello(parseClientHello(captures.get('node-sni-alpn')!)), {
      serverName: 'api.example.com',
      alpn: ['h2', 'http/1.1'],
    });
    assert.deepEqual(hello(parseClientHello(captures.get('node-no-sni')!)), {});
    assert.deepEqual(hello(parseClientHello(captures.get('node-tls12')!)), { serverName: 'Mixed.Case.Example' });
  });

  it('reads SNI and ALPN from openssl s_client', { skip: opensslMissing }, () => {
    assert.deepEqual(hello(parseClientHello(captures.get('openssl-sni')!)), {
      serverName: 'x.example.org',
      alpn: ['h2', 'http/1.1'],
    });
    assert.deepEqual(hello(parseClientHello(captures.get('openssl-no-sni')!)), {});
  });

  it('says incomplete for every strict prefix and ignores what follows', () => {
    for (const [label, record] of captures) {
      for (let i = 0; i < record.length; i++)
        assert.deepEqual(parseClientHello(record.subarray(0, i)), { kind: 'incomplete' }, `${label} prefix ${i}`);
      const whole = parseClientHello(record);
      assert.deepEqual(
        parseClientHello(Buffer.concat([record, Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01])])),
        whole,
        label,
      );
    }
  });

  it('reassembles a ClientHello split across records', () => {
    const record = captures.get('node-sni-alpn')!;
    const expected = parseClientHello(record);
    for (const sizes of [[1], [3], [4], [100], [50, 50, 50], Array<number>(31).fill(2)]) {
      const split = splitRecords(record, sizes);
      assert.deepEqual(parseClientHello(split), expected, `sizes ${sizes.join(',')}`);
      for (let i = 0; i < split.length; i++)
        assert.deepEqual(parseClientHello(split.subarray(0, i)), { kind: 'incomplete' }, `split prefix ${i}`);
    }
    rejects(splitRecords(record, Array<number>(40).fill(1)), /more than 32 records/);
    const interrupted = splitRecords(record, [10]);
    interrupted[15] = 0x17;
    rejects(interrupted, /record of type 23 arrived before the ClientHello was complete/);
  });

  it('survives 20k mutated, truncated and random inputs with only typed errors', () => {
    const prng = new Prng(0x5eed_0004);
    const seeds = [...captures.values(), craft(Buffer.concat([sni([0, 'a.example']), alpn('h2')]))];
    for (let i = 0; i < 20_000; i++) {
      const seed = prng.pick(seeds);
      const mode = prng.int(3);
      const input =
        mode === 0
          ? Buffer.concat([Buffer.from([0x16, 3, prng.int(5)]), prng.bytes(prng.int(300))])
          : mode === 1
            ? seed.subarray(0, prng.int(seed.length + 1))
            : prng.mutate(seed);
      try {
        const result = parseClientHello(input);
        if (result.kind === 'client-hello' && result.serverName !== undefined)
          assert.match(result.serverName, /^[\x21-\x7e]{1,255}$/);
      } catch (error) {
        if (!(error instanceof ClientHelloError))
          throw new Error(`case ${i}: ${input.toString('hex')} threw ${String(error)}`, { cause: error });
      }
    }
  });

  after(() => captures.clear());
});

describe('parseClientHello on crafted input', () => {
  it('classifies other protocols as not-tls', () => {
    for (const data of ['GET / HTTP/1.1\r\n', 'SSH-2.0-OpenSSH\r\n'].map((t) => Buffer.from(t)))
      assert.deepEqual(parseClientHello(data), { kind: 'not-tls' });
    assert.deepEqual(parseClientHello(Buffer.from([0x80, 0x2e, 0x01, 0x00, 0x02])), { kind: 'not-tls' }, 'SSLv2 hello');
    assert.deepEqual(parseClientHello(Buffer.from([0x16, 0x02])), { kind: 'not-tls' });
    // Any minor version is TLS: servers accept 0x0305 and 0x03ff in the first record's header.
    for (const minor of [0x00, 0x05, 0xff])
      assert.deepEqual(parseClientHello(Buffer.from([0x16, 0x03, minor])), { kind: 'incomplete' });
    assert.deepEqual(parseClientHello(Buffer.alloc(0)), { kind: 'incomplete' });
    assert.deepEqual(parseClientHello(Buffer.from([0x16])), { kind: 'incomplete' });
  });

  it('accepts a ClientHello without extensions', () => {
    assert.deepEqual(parseClientHello(craft(null)), { kind: 'client-hello' });
    assert.deepEqual(
      hello(parseClientHello(craft(Buffer.concat([ext(0xff01, Buffer.from([0])), sni([0, 'a.example'])])))),
      { serverName: 'a.example' },
    );
  });

  it('reads a ClientHello whatever the record minor version', () => {
    for (const minor of [0x00, 0x05, 0xff]) {
      const data = craft(sni([0, 'a.example']));
      data[2] = minor;
      assert.deepEqual(hello(parseClientHello(data)), { serverName: 'a.example' }, `minor ${minor}`);
    }
  });

  it('reports encrypted_client_hello (and draft ESNI), whose real SNI is hidden', () => {
    const ech = parseClientHello(
      craft(Buffer.concat([sni([0, 'public.example']), ext(0xfe0d, Buffer.from([0, 1, 2, 3]))])),
    );
    assert.deepEqual(ech, { kind: 'client-hello', serverName: 'public.example', ech: true });
    assert.equal((parseClientHello(craft(ext(0xffce, Buffer.from([9])))) as { ech?: boolean }).ech, true);
    assert.equal((parseClientHello(craft(sni([0, 'a.example']))) as { ech?: boolean }).ech, undefined);
  });

  it('refuses a record that carries more than the ClientHello', () => {
    const data = craft(sni([0, 'a.example']));
    // A second handshake message in the same record: the server would read it in the clear.
    const extra = Buffer.from([0x01, 0x00, 0x00, 0x00]);
    const grown = Buffer.concat([data, extra]);
    grown.writeUInt16BE(data.readUInt16BE(3) + extra.length, 3);
    rejects(grown, /carries more than the ClientHello/);
    rejects(grown.subarray(0, data.length), /carries more than the ClientHello/);
  });

  it('rejects malformed ClientHellos with a message naming the problem', () => {
    rejects(craft(null, { handshakeType: 2 }), /handshake message has type 2, not ClientHello/);
    rejects(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x01, 0x02]), /type 2, not ClientHello/);
    rejects(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00]), /empty TLS handshake record/);
    rejects(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01]), /record of 16385 bytes exceeds 16384/);
    rejects(
      Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x40, 0x00]),
      new RegExp(`ClientHello of 16388 bytes exceeds ${CLIENT_HELLO_MAX_LENGTH}`),
    );
    rejects(craft(Buffer.concat([sni([0, 'a.example']), sni([0, 'b.example'])])), /repeats extension 0/);
    rejects(craft(sni([0, 'a.example'], [0, 'b.example'])), /more than one host_name/);
    rejects(craft(sni([1, 'other.example'], [0, 'a.example'])), /server_name entry of type 1, not host_name/);
    rejects(craft(sni([1, 'other.example'])), /server_name entry of type 1/);
    rejects(craft(sni([0, 'caf\u00e9.example'])), /outside printable ASCII/);
    rejects(craft(sni([0, 'a b'])), /outside printable ASCII/);
    rejects(craft(sni([0, ''])), /host_name of 0 bytes/);
    rejects(craft(ext(0, vec16())), /server_name extension is malformed/);
    rejects(craft(alpn('h2', '')), /empty protocol name/);
    rejects(craft(ext(16, Buffer.alloc(0))), /ALPN list is truncated/);
    rejects(craft(Buffer.concat([u16(0), u16(50), Buffer.alloc(3)])), /extension 0 is truncated/);
    rejects(
      craft(null, {
        body: Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32), Buffer.from([33]), Buffer.alloc(33)]),
      }),
      /session_id is longer than 32/,
    );
    rejects(
      craft(null, {
        body: Buffer.concat([
          Buffer.from([3, 3]),
          Buffer.alloc(32),
          Buffer.from([0]),
          vec16(Buffer.from([1])),
          Buffer.from([1, 0]),
        ]),
      }),
      /cipher_suites has 1 bytes/,
    );
    rejects(
      craft(null, {
        body: Buffer.concat([
          Buffer.from([3, 3]),
          Buffer.alloc(32),
          Buffer.from([0]),
          vec16(Buffer.from([0x13, 1])),
          Buffer.from([0]),
        ]),
      }),
      /no compression methods/,
    );
    rejects(craft(null, { body: Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(20)]) }), /random is truncated/);
  });
});
