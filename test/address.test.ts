import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AddressError, formatAddress, parseAddress } from '../src/net/address.js';

describe('addresses', () => {
  const good: Array<[string, unknown]> = [
    ['vsock:any:7777', { transport: 'vsock', cid: 0xffffffff, port: 7777 }],
    ['vsock:3:4433', { transport: 'vsock', cid: 3, port: 4433 }],
    ['unix:/run/enclave/ingress.sock', { transport: 'unix', path: '/run/enclave/ingress.sock' }],
    ['tcp:127.0.0.1:8443', { transport: 'tcp', host: '127.0.0.1', port: 8443 }],
    ['tcp:[::1]:8443', { transport: 'tcp', host: '::1', port: 8443 }],
    ['tcp:localhost:0', { transport: 'tcp', host: 'localhost', port: 0 }],
  ];
  for (const [text, expected] of good) {
    it(`parses ${text} and formats it back`, () => {
      const parsed = parseAddress(text);
      assert.deepEqual(parsed, expected);
      assert.equal(formatAddress(parsed), text);
    });
  }

  const bad: Array<[string, RegExp]> = [
    ['', /empty address/],
    ['udp:1.2.3.4:53', /unknown transport "udp"/],
    ['tcp:127.0.0.1', /not tcp:HOST:PORT/],
    ['tcp:::1:80', /not tcp:HOST:PORT/],
    ['tcp:[127.0.0.1]:80', /not an IPv6 address/],
    ['tcp:bad_host!:80', /neither an IP address nor a host name/],
    ['tcp:127.0.0.1:65536', /port 65536 is outside/],
    ['vsock:x:1', /not vsock:CID:PORT/],
    ['vsock:4294967296:1', /CID 4294967296 is larger/],
    ['unix:', /has no path/],
    [`unix:/${'a'.repeat(200)}`, /longer than 107 bytes/],
  ];
  for (const [text, expected] of bad) {
    it(`rejects ${JSON.stringify(text.slice(0, 30))}`, () => {
      assert.throws(
        () => parseAddress(text),
        (error: unknown) => error instanceof AddressError && expected.test(error.message),
      );
    });
  }
});
