/** GET/PUT /fleet/state on the internal API: versions, the 1 MiB bound, compare-and-set, fleet off. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { startAttestationApi, type AttestationApi } from '../src/attestation/attestation-api.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { silentLogger } from '../src/core/log.js';
import { FleetState } from '../src/fleet/fleet-state.js';

const scratch = mkdtempSync(join(tmpdir(), 'fleet-api-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

async function withApi(fleet: FleetState | undefined, body: (base: string) => Promise<void>): Promise<void> {
  const api: AttestationApi = await startAttestationApi({
    listen: { host: '127.0.0.1', port: 0 },
    nsm: await openSimulatedNsm({ stateDir: join(scratch, 'state') }),
    logger: silentLogger(),
    fleet,
  });
  try {
    await body(`http://127.0.0.1:${api.address.port}/fleet/state`);
  } finally {
    await api.close();
  }
}

describe('internal API /fleet/state', () => {
  test('PUT versions the blob, GET returns it with its version; x-fleet-if-version guards a write', async () => {
    const state = await FleetState.open();
    await withApi(state, async (url) => {
      assert.equal((await fetch(url)).status, 404, 'nothing written yet');
      const first = await fetch(url, { method: 'PUT', body: Buffer.from([0, 1, 2, 255]) });
      assert.equal(first.status, 200);
      assert.equal(((await first.json()) as { version: number }).version, 1);
      const read = await fetch(url);
      assert.equal(read.status, 200);
      assert.equal(read.headers.get('x-fleet-version'), '1');
      assert.equal(read.headers.get('x-fleet-writer'), state.writer);
      assert.deepEqual(Buffer.from(await read.arrayBuffer()), Buffer.from([0, 1, 2, 255]));

      const stale = await fetch(url, { method: 'PUT', body: 'late', headers: { 'x-fleet-if-version': '0' } });
      assert.equal(stale.status, 409);
      assert.equal(((await stale.json()) as { version: number }).version, 1);
      const guarded = await fetch(url, { method: 'PUT', body: 'next', headers: { 'x-fleet-if-version': '1' } });
      assert.equal(guarded.status, 200);
      assert.equal(((await guarded.json()) as { version: number }).version, 2);
      assert.equal(await (await fetch(url)).text(), 'next');
    });
  });

  test('a blob over 1 MiB is refused with 413 and changes nothing; other methods get 405', async () => {
    const state = await FleetState.open();
    await withApi(state, async (url) => {
      const exact = await fetch(url, { method: 'PUT', body: Buffer.alloc(1024 * 1024, 7) });
      assert.equal(exact.status, 200, 'exactly 1 MiB is allowed');
      const over = await fetch(url, { method: 'PUT', body: Buffer.alloc(1024 * 1024 + 1, 8) });
      assert.equal(over.status, 413);
      assert.equal(state.app!.version, 1);
      const post = await fetch(url, { method: 'POST', body: 'x' });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get('allow'), 'GET, PUT');
    });
  });

  test('with the fleet off, the route says so', async () => {
    await withApi(undefined, async (url) => {
      const answer = await fetch(url);
      assert.equal(answer.status, 404);
      assert.match(((await answer.json()) as { error: string }).error, /fleet is off/);
    });
  });
});
