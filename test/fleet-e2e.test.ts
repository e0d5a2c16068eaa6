/**
 * Three "instances", each a parent namespace running `enclave-runtime host` and an enclave
 * namespace (loopback only) running the runtime, vsock stood in for by unix sockets as in the other
 * e2e tests. The parents are wired to each other by veth pairs; an enclave reaches its peers only
 * through its parent's fleet relays. The simulated NSMs all chain to one test root with the same
 * PCRs; a fourth instance with another PCR0 is refused. An app blob written on one member is read on
 * the others, and a restarted member (its memory gone) rejoins and gets the state back.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SIM_CHAIN_FILE, SIM_ROOT_FILE } from '../src/attestation/sim-chain.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { FLEET_STATE_FILE } from '../src/fleet/fleet-state.js';
import { eventually } from './helpers/cli-run.js';
import { NetnsLab, type NetnsProcess } from './helpers/netns.js';
import { CLI } from './helpers/paths.js';
import { commandMissing, netnsUnavailable } from './helpers/privilege.js';

const skip = netnsUnavailable() ?? commandMissing('ip');
if (skip) console.log(`# skipping the fleet e2e test: ${skip}`);

const FLEET_PORT = 7790;
/** Run by node inside a namespace: METHOD URL BODY -> {status, headers, body} as JSON on stdout. */
const HTTP_SCRIPT = `
const [method, url, body] = process.argv.slice(1);
fetch(url, { method, body: method === 'PUT' ? body : undefined })
  .then(async (r) => console.log(JSON.stringify({ status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() })))
  .catch((error) => { console.error(error.message); process.exit(1); });
`;
const OTHER_PCR0 = 'ab'.repeat(48);

interface Instance {
  index: number;
  parent: string;
  enclave: string;
  dir: string;
  stateDir: string;
  /** This parent's address on the link to each other instance. */
  addressTo: Map<number, string>;
  host?: NetnsProcess;
  runtime?: NetnsProcess;
}

describe('a fleet of three enclaves behind three parents', { skip, timeout: 300_000 }, () => {
  const lab = new NetnsLab();
  const scratch = skip ? '' : mkdtempSync(`/tmp/erf-`);
  const instances: Instance[] = [];

  function hostConfig(instance: Instance, peers: string[]): string {
    const path = join(instance.dir, 'host.toml');
    writeFileSync(
      path,
      [
        '[runtime]',
        'shutdown_grace_ms = 200',
        '[fleet]',
        `peers = [${peers.map((peer) => `"${peer}"`).join(', ')}]`,
        '[host]',
        `ingress_listen = "unix:${join(instance.dir, 'ingress.sock')}"`,
        `enclave_ingress = "unix:${join(instance.dir, 'enclave-ingress.sock')}"`,
        `egress_listen = "unix:${join(instance.dir, 'egress.sock')}"`,
        `dns_listen = "unix:${join(instance.dir, 'dns.sock')}"`,
        'upstream_dns = "127.0.0.1:53"',
        'log_listen = "off"',
        `fleet_listen = "tcp:0.0.0.0:${FLEET_PORT}"`,
        `enclave_fleet = "unix:${join(instance.dir, 'fleet.sock')}"`,
        `fleet_relay_listen = "unix:${join(instance.dir, 'fleet-relay.sock')}"`,
        '',
      ].join('\n'),
    );
    return path;
  }

  /** The address of instance `to` on its link with `from`. */
  const peerAddress = (from: Instance, to: Instance) => `${to.addressTo.get(from.index)!}:${FLEET_PORT}`;

  function startRuntime(instance: Instance, peers: Instance[], bootstrap: boolean, pcr0?: string): NetnsProcess {
    const config = join(instance.dir, 'enclave.toml');
    writeFileSync(
      config,
      runtimeLines(
        instance,
        peers.map((peer) => peerAddress(instance, peer)),
        bootstrap,
        pcr0,
      ).join('\n'),
    );
    instance.runtime = lab.spawn(instance.enclave, process.execPath, [CLI, 'dev', '--config', config]);
    return instance.runtime;
  }

  function runtimeLines(instance: Instance, peers: string[], bootstrap: boolean, pcr0?: string): string[] {
    return [
      '[runtime]',
      `state_dir = "${instance.stateDir}"`,
      'health_listen = "tcp:127.0.0.1:7779"',
      'shutdown_grace_ms = 200',
      '[ingress]',
      'enabled = false',
      '[tls]',
      'enabled = false',
      '[attestation]',
      'api_listen = "tcp:127.0.0.1:9999"',
      '[attestation.simulated]',
      `module_id = "i-instance${instance.index}-enc0"`,
      ...(pcr0 ? ['[attestation.simulated.pcrs]', `0 = "${pcr0}"`] : []),
      '[metrics]',
      'listen = "tcp:127.0.0.1:9090"',
      '[fleet]',
      'enabled = true',
      `listen = "unix:${join(instance.dir, 'fleet.sock')}"`,
      `relay = "unix:${join(instance.dir, 'fleet-relay.sock')}"`,
      `peers = [${peers.map((peer) => `"${peer}"`).join(', ')}]`,
      `bootstrap = ${bootstrap}`,
      // Slow enough for a loaded two-core CI box: every exchange signs and verifies P-384 documents.
      'sync_interval_ms = 1000',
      'exchange_timeout_ms = 10000',
      '',
    ];
  }

  /** One HTTP request from inside the instance's enclave namespace (node's fetch), against its internal API or metrics. */
  async function request(
    instance: Instance,
    method: 'GET' | 'PUT',
    url: string,
    body = '',
  ): Promise<{ status: number; body: string; headers: Record<string, string> }> {
    const result = await lab.run(instance.enclave, process.execPath, ['-e', HTTP_SCRIPT, method, url, body]);
    if (result.code !== 0)
      throw new Error(`${method} ${url} in ${instance.enclave} failed (${result.code}): ${result.stderr}`);
    return JSON.parse(result.stdout) as { status: number; body: string; headers: Record<string, string> };
  }

  const getState = (instance: Instance) => request(instance, 'GET', 'http://127.0.0.1:9999/fleet/state');
  const putState = (instance: Instance, body: string) =>
    request(instance, 'PUT', 'http://127.0.0.1:9999/fleet/state', body);

  before(async () => {
    if (skip) return;
    // One simulated root for every instance: the chain made once and copied, as AWS's is shared.
    const rootDir = join(scratch, 'root');
    await openSimulatedNsm({ stateDir: rootDir });
    for (let index = 1; index <= 4; index++) {
      const dir = join(scratch, `i${index}`);
      const stateDir = join(dir, 'state');
      mkdirSync(stateDir, { recursive: true });
      copyFileSync(join(rootDir, SIM_CHAIN_FILE), join(stateDir, SIM_CHAIN_FILE));
      copyFileSync(join(rootDir, SIM_ROOT_FILE), join(stateDir, SIM_ROOT_FILE));
      instances.push({
        index,
        parent: lab.addNamespace(`p${index}`),
        enclave: lab.addNamespace(`e${index}`),
        dir,
        stateDir,
        addressTo: new Map(),
      });
    }
    // A full mesh of parents, one /30 per pair (the VPC, in small).
    let link = 0;
    for (const a of instances) {
      for (const b of instances) {
        if (b.index <= a.index) continue;
        link += 1;
        lab.addVeth(a.parent, `10.79.${link}.1/30`, b.parent, `10.79.${link}.2/30`);
        a.addressTo.set(b.index, `10.79.${link}.1`);
        b.addressTo.set(a.index, `10.79.${link}.2`);
      }
    }
    for (const instance of instances) {
      const others = instances.filter((other) => other !== instance).map((other) => peerAddress(instance, other));
      instance.host = lab.spawn(instance.parent, process.execPath, [
        CLI,
        'host',
        '--config',
        hostConfig(instance, others),
      ]);
      await instance.host.waitForLine((line) => line.includes('"host ready"'), 20_000);
    }
  });

  after(async () => {
    if (process.env.FLEET_E2E_DUMP)
      for (const instance of instances)
        for (const [name, proc] of [
          ['host', instance.host],
          ['runtime', instance.runtime],
        ] as const)
          console.log(`## ${name} ${instance.index}\n${proc?.stderrLines.slice(-25).join('\n')}`);
    await lab.cleanup();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  test('members with equal PCRs share an app blob; another image is refused; a restarted member rejoins', async () => {
    const [one, two, three, stranger] = instances as [Instance, Instance, Instance, Instance];
    const fleet = [one, two, three];
    // Every member lists every other parent, the stranger's too (as a DNS name covering all parents would).
    startRuntime(one, [two, three, stranger], true);
    startRuntime(two, [one, three, stranger], false);
    startRuntime(three, [one, two, stranger], false);
    startRuntime(stranger, [one, two, three], true, OTHER_PCR0);
    for (const instance of instances)
      await instance.runtime!.waitForLine((line) => line.includes('"runtime ready"'), 30_000);

    const written = await putState(one, 'shared secret v1');
    assert.equal(written.status, 200, written.body);
    assert.equal(JSON.parse(written.body).version, 1);
    for (const member of [two, three]) {
      const read = await eventually(async () => {
        const got = await getState(member);
        return got.status === 200 ? got : undefined;
      }, `instance ${member.index} got the blob`);
      assert.equal(read.body, 'shared secret v1');
      assert.equal(read.headers['x-fleet-version'], '1');
    }

    // A write on another member wins by version everywhere.
    assert.equal((await putState(three, 'shared secret v2')).status, 200);
    for (const member of fleet) {
      await eventually(
        async () => ((await getState(member)).body === 'shared secret v2' ? true : undefined),
        `v2 on ${member.index}`,
      );
    }

    // The stranger (other PCR0) never gets it, and both sides named the reason.
    assert.equal((await getState(stranger)).status, 404);
    const refusedByStranger = stranger.runtime!.logs.find((line) => line.code === 'ERR_FLEET_PCR');
    assert.ok(refusedByStranger, 'the stranger logs ERR_FLEET_PCR');
    await eventually(
      () => one.runtime!.logs.find((line) => line.code === 'ERR_FLEET_PCR' || line.remoteCode === 'ERR_FLEET_PCR'),
      'member one logs the PCR refusal',
    );

    // Health names the membership; metrics count syncs and refusals.
    const fleetPart = await eventually(async () => {
      const health = await request(one, 'GET', 'http://127.0.0.1:9999/health');
      const part = JSON.parse(health.body).parts.fleet as { ok: boolean; detail: string };
      return /^2\/3 peers reachable/.test(part.detail) ? part : undefined;
    }, 'health shows two of three peers reachable (the stranger refused)');
    assert.equal(fleetPart.ok, true);
    const metrics = (await request(one, 'GET', 'http://127.0.0.1:9090/metrics')).body;
    assert.match(metrics, /enclave_fleet_syncs_total\{role="requester",outcome="ok"\} [1-9]/);
    assert.match(metrics, /enclave_fleet_refusals_total\{code="ERR_FLEET_PCR"\} [1-9]/);

    // Member two restarts as a new enclave would: memory (its fleet state) gone, same image.
    await two.runtime!.stop();
    rmSync(join(two.stateDir, FLEET_STATE_FILE), { force: true });
    assert.equal((await putState(one, 'written while two was away')).status, 200);
    startRuntime(two, [one, three, stranger], false);
    await two.runtime!.waitForLine((line) => line.includes('"runtime ready"'), 30_000);
    const rejoined = await eventually(async () => {
      const got = await getState(two);
      return got.body === 'written while two was away' ? got : undefined;
    }, 'the restarted member got the state back');
    assert.equal(rejoined.headers['x-fleet-version'], '3');
  });
});
