import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import type { AppProbe } from '../src/app/app-probe.js';
import type { Nsm } from '../src/attestation/nsm.js';
import { parseAddress } from '../src/net/address.js';
import { HealthMonitor } from '../src/metrics/health.js';
import { captureLogs } from './helpers/log-capture.js';

/** A probe whose answer the test sets; `calls` counts probes. */
function scriptedProbe(): AppProbe & { up: boolean; calls: number } {
  const probe = {
    target: 'tcp:127.0.0.1:8008',
    up: false,
    calls: 0,
    async probe() {
      probe.calls++;
      return { up: probe.up, detail: probe.up ? 'accepting' : 'tcp:127.0.0.1:8008: ECONNREFUSED' };
    },
  };
  return probe;
}

/** A monitor watching (so start-up grace runs) whose timer never fires during the test: probes are the test's. */
async function watched(startupGraceMs: number) {
  const logs = captureLogs('debug');
  const probe = scriptedProbe();
  const health = new HealthMonitor({
    app: parseAddress('tcp:127.0.0.1:8008'),
    logger: logs.logger,
    probe,
    probeIntervalMs: 3_600_000,
    startupGraceMs,
  });
  health.watch({ ingress: undefined, nsm: { kind: 'simulated' } as Nsm, tls: false });
  while (probe.calls === 0) await sleep(1);
  await sleep(1);
  const said = (message: string) => logs.lines.filter((line) => line.msg === message);
  return { health, probe, said };
}

describe('app health at start-up', () => {
  it('says nothing while the app starts, "app is up" when it is, and "app is down" only after it was up', async () => {
    const { health, probe, said } = await watched(3_600_000);
    await health.probeApp();
    await health.probeApp();
    assert.deepEqual(said('app is down'), [], 'no false alarm before the app listens');
    assert.equal(health.report().parts.app?.ok, false, '/health does not call a starting app up');
    assert.match(health.report().parts.app?.detail ?? '', /^starting: /);

    probe.up = true;
    await health.probeApp();
    assert.equal(said('app is up').length, 1);
    assert.equal(health.report().parts.app?.ok, true);

    probe.up = false;
    await health.probeApp();
    await health.probeApp();
    const down = said('app is down');
    assert.equal(down.length, 1, 'a real outage is logged, once');
    assert.equal(down[0]?.level, 40);
    assert.doesNotMatch(health.report().parts.app?.detail ?? '', /starting/);
    health.stop();
  });

  it('an app never up by the end of the grace is reported down, once, with the grace named', async () => {
    const { health, said } = await watched(50);
    assert.deepEqual(said('app is down'), []);
    await sleep(80);
    await health.probeApp();
    await health.probeApp();
    const down = said('app is down');
    assert.equal(down.length, 1);
    assert.equal(down[0]?.graceMs, 50);
    health.stop();
  });

  it('with no grace, the first failed probe is reported at once (the previous behaviour)', async () => {
    const { health, said } = await watched(0);
    assert.equal(said('app is down').length, 1);
    health.stop();
  });
});
