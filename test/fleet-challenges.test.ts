/**
 * TLS-ALPN-01 challenges shared through a fleet: the bounds and checks a member applies to a peer's
 * challenges, the state entry's bounds and merge, and the orderer's push (a sync-now, with the peer
 * holding the challenge once it resolves, long before the sync interval).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { crypto as acmeCrypto, type Authorization } from 'acme-client';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { silentLogger } from '../src/core/log.js';
import { acmeFleetLink } from '../src/fleet/fleet-acme.js';
import { FleetMember, type FleetSettings } from '../src/fleet/fleet-member.js';
import { FLEET_STATE_FILE, FleetState } from '../src/fleet/fleet-state.js';
import {
  MAX_SHARED_CHALLENGE_LIFETIME_MS,
  MAX_SHARED_CHALLENGES,
  TlsAlpnChallenges,
  type SharedChallenge,
} from '../src/tls/tls-alpn-challenges.js';
import { loopbackFleetSettings } from './helpers/fleet-settings.js';
import { freePort } from './helpers/net.js';

const scratch = mkdtempSync(join(tmpdir(), 'fleet-challenges-test-'));
const stopAll: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const stop of stopAll.reverse()) await stop();
  rmSync(scratch, { recursive: true, force: true });
});

const MINUTE = 60_000;

async function challengeFor(domain: string, expiresAt: number): Promise<SharedChallenge> {
  const authz = { identifier: { type: 'dns', value: domain } } as Authorization;
  const [key, cert] = await acmeCrypto.createAlpnCertificate(
    authz,
    'token.thumbprint',
    await acmeCrypto.createPrivateEcdsaKey('P-256'),
  );
  return { domain, certPem: cert.toString(), keyPem: key.toString(), expiresAt };
}

describe('a peer installing shared challenges', () => {
  test('answers only its own domains, unexpired, within bounds, and drops what left the list', async () => {
    let now = 1_000_000_000_000;
    const challenges = new TlsAlpnChallenges(() => now);
    const allowed = new Set(['a.example', 'b.example']);
    const good = await challengeFor('a.example', now + MINUTE);
    const foreign = await challengeFor('evil.example', now + MINUTE);
    const expired = await challengeFor('b.example', now - 1);
    const tooLong = await challengeFor('b.example', now + MAX_SHARED_CHALLENGE_LIFETIME_MS + 2 * MINUTE);
    const wrongName = { ...(await challengeFor('other.example', now + MINUTE)), domain: 'b.example' };
    const result = challenges.replaceShared([good, foreign, expired, tooLong, wrongName], allowed);
    assert.deepEqual(result.installed, ['a.example']);
    assert.deepEqual(
      result.rejected.map(({ domain, reason }) => `${domain}: ${reason}`),
      [
        'evil.example: not one of tls.acme.domains here',
        'b.example: expired',
        'b.example: expiry too far ahead',
        'b.example: the certificate does not name it',
      ],
    );
    assert.ok(challenges.contextFor('A.Example.'), 'served for the allowed domain, any case');
    assert.equal(challenges.contextFor('evil.example'), undefined);
    assert.equal(challenges.size, 0, "a peer's challenges are not this member's own");

    // Gone from the state: no longer answered.
    challenges.replaceShared([], allowed);
    assert.equal(challenges.contextFor('a.example'), undefined);

    // Expired while installed: no longer answered, though no update came.
    challenges.replaceShared([good], allowed);
    assert.ok(challenges.contextFor('a.example'));
    now += MINUTE;
    assert.equal(challenges.contextFor('a.example'), undefined);
    assert.deepEqual(challenges.sharedDomains, []);
  });

  test("takes at most MAX_SHARED_CHALLENGES; this member's own challenge wins over a shared one", async () => {
    const now = Date.now();
    const names = Array.from({ length: MAX_SHARED_CHALLENGES + 2 }, (_, i) => `n${i}.example`);
    const list = await Promise.all(names.map((name) => challengeFor(name, now + MINUTE)));
    const challenges = new TlsAlpnChallenges(() => now);
    const result = challenges.replaceShared(list, new Set(names));
    assert.equal(result.installed.length, MAX_SHARED_CHALLENGES);
    assert.equal(result.rejected.length, 2);
    const own = await challengeFor('n0.example', now + MINUTE);
    challenges.add('n0.example', own.certPem, own.keyPem);
    assert.notEqual(challenges.contextFor('n0.example'), undefined);
    challenges.remove('n0.example');
    assert.notEqual(challenges.contextFor('n0.example'), undefined, 'the shared one is still pending');
  });
});

describe('challenges in the fleet state', () => {
  test('merge to a peer, are bounded, withdrawn, and never written to the state dir', async () => {
    const dir = mkdtempSync(join(scratch, 'state-'));
    const orderer = await FleetState.open(dir, '1111111111111111');
    const peer = await FleetState.open(undefined, '2222222222222222');
    const now = Date.now();
    const challenge = await challengeFor('a.example', now + MINUTE);
    await orderer.putAcmeChallenge(challenge, now);
    assert.ok(orderer.acmeChallenges(now)[0]!.domain === 'a.example');
    assert.equal((await peer.merge(orderer.encode())).acmeChallenges, true);
    assert.deepEqual(peer.acmeChallenges(now), [challenge]);
    assert.deepEqual(peer.acmeChallenges(now + MINUTE), [], 'expired ones are left out');
    assert.ok(!readFileSync(join(dir, FLEET_STATE_FILE), 'utf8').includes('acmeChallenges'));

    await assert.rejects(
      orderer.putAcmeChallenge({ ...challenge, expiresAt: now + MAX_SHARED_CHALLENGE_LIFETIME_MS + 1 }, now),
      { code: 'ERR_FLEET_STATE' },
    );
    await orderer.removeAcmeChallenge('A.EXAMPLE', now);
    assert.equal((await peer.merge(orderer.encode())).acmeChallenges, true);
    assert.deepEqual(peer.acmeChallenges(now), []);

    // A restarted orderer (version counter lost) still writes a newer list: versions follow the clock.
    const restarted = await FleetState.open(undefined, '0000000000000001');
    await restarted.putAcmeChallenge(challenge, now + 1000);
    assert.equal((await peer.merge(restarted.encode())).acmeChallenges, true);
  });

  test('a peer state with too many, oversized or malformed challenges is refused', async () => {
    const state = await FleetState.open();
    const challenge = await challengeFor('a.example', Date.now() + MINUTE);
    const wrap = (challenges: unknown[]) =>
      Buffer.from(JSON.stringify({ acmeChallenges: { version: 1, writer: 'ffffffffffffffff', challenges } }));
    await assert.rejects(state.merge(wrap(Array(MAX_SHARED_CHALLENGES + 1).fill(challenge))), {
      code: 'ERR_FLEET_STATE',
    });
    await assert.rejects(state.merge(wrap([{ ...challenge, certPem: challenge.certPem + 'x'.repeat(9000) }])), {
      code: 'ERR_FLEET_STATE',
    });
    await assert.rejects(state.merge(wrap([{ ...challenge, expiresAt: 'soon' }])), { code: 'ERR_FLEET_STATE' });
    await assert.rejects(state.merge(wrap([{ ...challenge, domain: 'x'.repeat(254) }])), { code: 'ERR_FLEET_STATE' });
    assert.equal((await state.merge(wrap([challenge]))).acmeChallenges, true);
  });
});

// Far beyond the test: only the orderer's push can carry the challenge.
function settings(port: number, peers: number[], bootstrap: boolean): FleetSettings {
  return loopbackFleetSettings(port, peers, bootstrap, 3600_000);
}

describe("the orderer's push", () => {
  test('a shared challenge is held by the reachable peer when share() resolves; withdraw drops it', async () => {
    const stateDir = join(scratch, 'push');
    const ports = [await freePort(), await freePort(), await freePort()];
    const members: FleetMember[] = [];
    // The third port has nobody listening: a peer that cannot be reached.
    for (const [i, name] of ['a', 'b'].entries()) {
      const member = await FleetMember.start({
        settings: settings(
          ports[i]!,
          ports.filter((_, j) => j !== i),
          true,
        ),
        nsm: await openSimulatedNsm({ stateDir, moduleId: `i-${name}-enc0` }),
        state: await FleetState.open(),
        stateDir,
        logger: silentLogger(),
      });
      stopAll.push(() => member.close());
      members.push(member);
    }
    const [a, b] = members as [FleetMember, FleetMember];
    const link = acmeFleetLink(a);
    const challenge = await challengeFor('a.example', Date.now() + MINUTE);
    assert.deepEqual(b.state.acmeChallenges(), []);
    const reached = await link.share(challenge);
    assert.deepEqual(reached, { peersReached: 1, peers: 2 });
    assert.deepEqual(b.state.acmeChallenges(), [challenge], 'the peer merged it before the exchange completed');
    await link.withdraw('a.example');
    await a.syncNow();
    assert.deepEqual(b.state.acmeChallenges(), []);
  });
});
