/**
 * Fleet members in one process over loopback TCP (no relay): the ACME certificate is ordered once
 * for the fleet and served by every member, a renewal by the orderer reaches the others, and the
 * state merge rules converge after a split.
 */
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { silentLogger } from '../src/core/log.js';
import { acmeFleetLink } from '../src/fleet/fleet-acme.js';
import { FleetMember, type FleetSettings } from '../src/fleet/fleet-member.js';
import { FLEET_STATE_FILE, FleetState } from '../src/fleet/fleet-state.js';
import { AcmeCertificates } from '../src/tls/acme-certificates.js';
import type { AcmeIssued } from '../src/tls/acme-order.js';
import { openSelfCertificateSource } from '../src/tls/certificate-source.js';
import { TlsAlpnChallenges } from '../src/tls/tls-alpn-challenges.js';
import { encodeFrame, FRAME } from '../src/wire/fleet-message.js';
import { eventually } from './helpers/cli-run.js';
import { loopbackFleetSettings } from './helpers/fleet-settings.js';
import { freePort } from './helpers/net.js';

const scratch = mkdtempSync(join(tmpdir(), 'fleet-member-test-'));
const stopAll: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const stop of stopAll.reverse()) await stop();
  rmSync(scratch, { recursive: true, force: true });
});

const DAY = 24 * 3600_000;

function settings(port: number, peers: number[], bootstrap: boolean): FleetSettings {
  return loopbackFleetSettings(port, peers, bootstrap, 100);
}

describe('fleet members sharing ACME', () => {
  test('one order for the fleet; every member serves it; a renewal propagates', async () => {
    const stateDir = join(scratch, 'acme');
    const ca = await openSelfCertificateSource(join(scratch, 'ca'), { logger: silentLogger() });
    stopAll.push(() => ca.close());
    const orders: string[] = [];
    const order =
      (who: string) =>
      async (keyPem: string): Promise<AcmeIssued> => {
        orders.push(who);
        const spki = new Uint8Array(createPublicKey(keyPem).export({ type: 'spki', format: 'der' }));
        const leaf = await ca.issue({
          serverName: 'fleet.test',
          dnsNames: ['fleet.test'],
          publicKeySpki: spki,
          attestationDocument: new Uint8Array(),
        });
        const now = Date.now();
        return {
          certPem: leaf.certPem,
          chainPem: leaf.chainPem,
          notBefore: new Date(now),
          notAfter: new Date(now + DAY + orders.length),
        };
      };

    const ports = [await freePort(), await freePort(), await freePort()];
    const names = ['a', 'b', 'c'];
    const members: FleetMember[] = [];
    for (const [i, name] of names.entries()) {
      const nsm = await openSimulatedNsm({ stateDir, moduleId: `i-${name}-enc0` });
      const member = await FleetMember.start({
        settings: settings(
          ports[i]!,
          ports.filter((_, j) => j !== i),
          i === 0,
        ),
        nsm,
        state: await FleetState.open(),
        stateDir,
        logger: silentLogger(),
      });
      stopAll.push(() => member.close());
      members.push(member);
    }
    await Promise.all(members.map((member) => member.syncNow()));
    assert.deepEqual(
      members.map((member) => member.mayOrderAcme()),
      [true, false, false],
    );

    const managers = members.map((member, i) => {
      const acme = new AcmeCertificates({
        domains: ['fleet.test'],
        order: order(names[i]!),
        challenges: new TlsAlpnChallenges(),
        renewAtFraction: 2 / 3,
        retryMinMs: 100,
        retryMaxMs: 1_000,
        logger: silentLogger(),
        fleet: acmeFleetLink(member),
      });
      stopAll.push(() => acme.close());
      return acme;
    });
    for (const acme of managers) acme.start();
    const served = await eventually(() => {
      const pems = managers.map((acme) => acme.current?.certPem);
      return pems.every((pem) => pem !== undefined) ? pems : undefined;
    }, 'every member serves a certificate');
    assert.deepEqual(orders, ['a'], 'the fleet ordered exactly once, by the lowest member');
    assert.equal(new Set(served).size, 1, 'all three serve the same certificate');

    // A renewal asked of a member that is not the orderer does not order; the orderer's renewal reaches all.
    await managers[1]!.renewNow();
    assert.deepEqual(orders, ['a']);
    await managers[0]!.renewNow();
    assert.deepEqual(orders, ['a', 'a']);
    const renewed = managers[0]!.current!.certPem;
    assert.notEqual(renewed, served[0]);
    await eventually(
      () => (managers.every((acme) => acme.current?.certPem === renewed) ? true : undefined),
      'the renewal reached every member',
    );
  });
});

describe('fleet state merge', () => {
  test('a forged ERR_FLEET_SELF refusal does not cut the peer off; only what the own responder saw does', async () => {
    const stateDir = join(scratch, 'self');
    let forgedConnections = 0;
    const forgedSockets: Socket[] = [];
    // A "peer" (or anyone on the path) answering every HELLO with an unauthenticated SELF refusal.
    const forger = createServer((socket: Socket) => {
      forgedConnections += 1;
      forgedSockets.push(socket);
      socket.on('error', () => {});
      socket.end(encodeFrame(FRAME.REFUSAL, [Buffer.from('ERR_FLEET_SELF'), Buffer.from('you are me')]));
    });
    await new Promise<void>((resolve) => forger.listen(0, '127.0.0.1', resolve));
    stopAll.push(() => {
      for (const socket of forgedSockets) socket.destroy();
      forger.close();
    });
    const forgerPort = (forger.address() as { port: number }).port;
    const ownPort = await freePort();
    const member = await FleetMember.start({
      settings: { ...settings(ownPort, [forgerPort, ownPort], true), syncIntervalMs: 3_600_000 },
      nsm: await openSimulatedNsm({ stateDir, moduleId: 'i-self-enc0' }),
      state: await FleetState.open(),
      stateDir,
      logger: silentLogger(),
    });
    stopAll.push(() => member.close());
    await member.syncNow();
    await member.syncNow();
    assert.equal(forgedConnections, 3, 'the forger is tried every round');
    const forged = member.peers.find((peer) => peer.address === `127.0.0.1:${forgerPort}`);
    assert.equal(forged?.ok, false);
    assert.match(forged?.lastError ?? '', /ERR_FLEET_REFUSED/);
    // Its own address was seen by its own responder: dropped from the peers.
    assert.equal(
      member.peers.some((peer) => peer.address === `127.0.0.1:${ownPort}`),
      false,
    );
  });

  test('a responder exchange counts against max_connections until it settles, not until its socket closes', async () => {
    const stateDir = join(scratch, 'open');
    const real = await openSimulatedNsm({ stateDir, moduleId: 'i-open-enc0' });
    let hang = false;
    let attests = 0;
    // After start, the NSM stops answering: each accepted HELLO holds one queued call.
    const nsm = Object.assign(Object.create(real) as typeof real, {
      attest: (request: Parameters<typeof real.attest>[0]) =>
        hang ? (attests++, new Promise<Uint8Array>(() => {})) : real.attest(request),
    });
    const port = await freePort();
    const member = await FleetMember.start({
      settings: { ...settings(port, [], true), maxConnections: 1, syncIntervalMs: 3_600_000, exchangeTimeoutMs: 300 },
      nsm,
      state: await FleetState.open(),
      stateDir,
      logger: silentLogger(),
    });
    stopAll.push(() => member.close());
    hang = true;
    const hello = (i: number) => encodeFrame(FRAME.HELLO, [Buffer.of(1), Buffer.alloc(32, i)]);
    const { createConnection } = await import('node:net');
    const first = createConnection(port, '127.0.0.1');
    first.on('error', () => {});
    first.write(hello(1));
    await eventually(() => attests === 1 || undefined, 'the first HELLO reaches the NSM');
    // The exchange deadline closes the socket while the NSM call stays queued.
    await new Promise((resolve) => first.once('close', resolve));
    await new Promise((resolve) => setImmediate(resolve));
    const second = createConnection(port, '127.0.0.1');
    second.on('error', () => {});
    second.write(hello(2));
    await new Promise((resolve) => second.once('close', resolve));
    assert.equal(attests, 1, 'the second HELLO was not attested while the first call is still queued');
  });

  test('two members that wrote apart (a split) converge on one value, the same on both', async () => {
    const left = await FleetState.open(undefined, '1111111111111111');
    const right = await FleetState.open(undefined, 'ffffffffffffffff');
    await left.putApp(Buffer.from('left'));
    await right.putApp(Buffer.from('right'));
    await left.merge(right.encode());
    await right.merge(left.encode());
    assert.equal(Buffer.from(left.app!.data, 'base64').toString(), 'right', 'same version: the higher writer id wins');
    assert.deepEqual(left.app, right.app);
    // A later write anywhere is a higher version and wins everywhere.
    await left.putApp(Buffer.from('after the split'));
    assert.equal(left.app!.version, 2);
    assert.deepEqual(await right.merge(left.encode()), {
      app: true,
      acmeAccount: false,
      acmeCertificate: false,
      acmeChallenges: false,
    });
    assert.equal(Buffer.from(right.app!.data, 'base64').toString(), 'after the split');
  });

  test('a peer state that is not well formed is refused', async () => {
    const state = await FleetState.open();
    await assert.rejects(state.merge(Buffer.from('{"app": {"version": -1}}')), { code: 'ERR_FLEET_STATE' });
    await assert.rejects(state.merge(Buffer.from('not json')), { code: 'ERR_FLEET_STATE' });
    await assert.rejects(state.putApp(new Uint8Array(1024 * 1024 + 1)), { code: 'ERR_FLEET_STATE' });
  });

  test('the state persists in the state dir and is read back', async () => {
    const dir = mkdtempSync(join(scratch, 'persist-'));
    const state = await FleetState.open(dir);
    await state.putApp(Buffer.from('kept'));
    const reopened = await FleetState.open(dir);
    assert.equal(Buffer.from(reopened.app!.data, 'base64').toString(), 'kept');
    assert.equal(reopened.app!.version, 1);
  });

  test('after a failed write, the next change writes the file again', async () => {
    const dir = mkdtempSync(join(scratch, 'retry-'));
    const state = await FleetState.open(dir);
    // A directory where the file goes makes the rename fail.
    mkdirSync(join(dir, FLEET_STATE_FILE));
    await assert.rejects(state.putApp(Buffer.from('lost')), { code: 'ERR_FLEET_STATE' });
    rmSync(join(dir, FLEET_STATE_FILE), { recursive: true });
    await state.putApp(Buffer.from('kept'));
    const written = JSON.parse(readFileSync(join(dir, FLEET_STATE_FILE), 'utf8')) as { app: { data: string } };
    assert.equal(Buffer.from(written.app.data, 'base64').toString(), 'kept');
  });
});
