/**
 * The app sandbox on a real vsock: in the QEMU guest a connect to CID 1 reaches a listener of the same guest, so
 * here the probe can try what a hostile app would do on Nitro (dial the parent's relays over AF_VSOCK) and see it
 * refused, while the same probe unfiltered gets through. The guest's own app (these tests) runs with
 * allow_vsock = true; the probe below is started through the helper as `allow_vsock = false` would start it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { appLaunch } from '../../src/app/app-sandbox.js';
import { silentLogger } from '../../src/core/log.js';
import { parseAddress } from '../../src/net/address.js';
import { listen, type TransportSocket } from '../../src/net/transport.js';
import { GUEST_SKIP, LOCAL_CID } from './guest.js';

const run = promisify(execFile);
const TRANSPORT = pathToFileURL(join(import.meta.dirname, '..', '..', 'src', 'net', 'transport.js')).href;
const ADDRESS = pathToFileURL(join(import.meta.dirname, '..', '..', 'src', 'net', 'address.js')).href;

/** Prints `connected` when a vsock connect to vsock:1:PORT completes, else the error's code. */
const PROBE = `
const { connect } = await import(${JSON.stringify(TRANSPORT)});
const { parseAddress } = await import(${JSON.stringify(ADDRESS)});
try {
  const socket = await connect(parseAddress('vsock:${LOCAL_CID}:' + process.argv[1]), { timeoutMs: 10000 });
  socket.destroy();
  console.log('connected');
} catch (error) {
  console.log(String(error.code ?? error.message));
}
`;

async function probe(port: number, allowVsock: boolean): Promise<string> {
  const launch = appLaunch(
    process.execPath,
    ['--input-type=module', '-e', PROBE, String(port)],
    allowVsock,
    silentLogger(),
  );
  assert.equal(launch.sandboxed, !allowVsock);
  const { stdout } = await run(launch.file, [...launch.args], { timeout: 60_000 });
  return stdout.trim();
}

describe('the app sandbox in a real kernel', { skip: GUEST_SKIP, timeout: 300_000 }, () => {
  it("refuses the app's AF_VSOCK socket (EACCES) where the same probe unfiltered reaches a vsock listener", async () => {
    const accepted: TransportSocket[] = [];
    const port = 21_000;
    const listener = await listen(parseAddress(`vsock:any:${port}`), (socket) => {
      accepted.push(socket);
      socket.destroy();
    });
    try {
      assert.equal(await probe(port, true), 'connected');
      const seenUnfiltered = accepted.length;
      assert.ok(seenUnfiltered >= 1, 'the unfiltered probe reached the listener');
      assert.match(await probe(port, false), /EACCES/);
      assert.equal(accepted.length, seenUnfiltered, 'the filtered probe never reached the listener');
    } finally {
      await listener.close();
    }
  });
});
