/**
 * Three runtimes in one fleet (loopback, direct TCP between members) with ACME against pebble: the
 * certificate is ordered once for the whole fleet (pebble's log counts issued certificates) and
 * every member serves that same certificate for the domain. Pebble validates on a member that does
 * not order, as a load balancer would send it: only the challenge shared through the fleet answers it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { SIM_CHAIN_FILE, SIM_ROOT_FILE } from '../src/attestation/sim-chain.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { parseConfig } from '../src/config/load.js';
import { Runtime } from '../src/runtime.js';
import { peerLeaf } from './helpers/attested-tls.js';
import { eventually } from './helpers/cli-run.js';
import { captureLogs } from './helpers/log-capture.js';
import { freePort, startPebble, type Pebble } from './helpers/pebble.js';
import { commandMissing } from './helpers/privilege.js';
import { startTinyDns } from './helpers/tiny-dns.js';

const DOMAIN = 'fleet.acme.test';
const NAMES = ['a', 'b', 'c'] as const;

function connectVerified(port: number, ca: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: DOMAIN, ca, ALPNProtocols: ['http/1.1'] });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('a fleet sharing one ACME certificate from pebble', { skip: commandMissing('pebble') }, () => {
  let pebble: Pebble;
  let dns: Awaited<ReturnType<typeof startTinyDns>>;
  let app: http.Server;
  let scratch: string;
  const runtimes: Runtime[] = [];
  const ingressPorts: number[] = [];
  const fleetPorts: number[] = [];
  const logs = NAMES.map(() => captureLogs('info'));

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'fleet-acme-'));
    for (let i = 0; i < NAMES.length; i++) {
      ingressPorts.push(await freePort());
      fleetPorts.push(await freePort());
    }
    dns = await startTinyDns([DOMAIN]);
    // Member "a" has the lowest module id, so it is the one that orders; pebble validates on member "b".
    pebble = await startPebble({ tlsPort: ingressPorts[1]!, dnsPort: dns.port });
    app = http.createServer((_request, response) => response.end('app'));
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
    const rootDir = join(scratch, 'root');
    await openSimulatedNsm({ stateDir: rootDir });
    for (const [i, name] of NAMES.entries()) {
      const stateDir = join(scratch, name);
      await mkdir(stateDir, { recursive: true });
      await copyFile(join(rootDir, SIM_CHAIN_FILE), join(stateDir, SIM_CHAIN_FILE));
      await copyFile(join(rootDir, SIM_ROOT_FILE), join(stateDir, SIM_ROOT_FILE));
      const peers = fleetPorts.filter((_, j) => j !== i).map((port) => `"127.0.0.1:${port}"`);
      const config = parseConfig(
        `
[runtime]
state_dir = "${stateDir}"
health_listen = "tcp:127.0.0.1:0"
[ingress]
listen = "tcp:127.0.0.1:${ingressPorts[i]}"
app = "tcp:127.0.0.1:${(app.address() as AddressInfo).port}"
[metrics]
enabled = false
[attestation]
api_listen = "tcp:127.0.0.1:0"
[attestation.simulated]
module_id = "i-${name}-enc0"
[tls]
alpn = ["http/1.1"]
[tls.acme]
enabled = true
directory_url = "${pebble.directoryUrl}"
domains = ["${DOMAIN}"]
ca_file = "${pebble.httpsCaFile}"
retry_min_ms = 200
retry_max_ms = 2000
[fleet]
enabled = true
listen = "tcp:127.0.0.1:${fleetPorts[i]}"
peers = [${peers.join(', ')}]
bootstrap = ${i === 0}
sync_interval_ms = 200
`,
        'dev',
      );
      runtimes.push(await Runtime.start(config, 'dev', logs[i]!.logger));
    }
  });

  after(async () => {
    for (const runtime of runtimes) await runtime.stop(0);
    await pebble?.close();
    await dns?.close();
    app?.close();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it('orders once and serves the same certificate from every member', async () => {
    const root = await pebble.issuingRootPem();
    const fingerprints = await eventually(
      async () => {
        const seen: string[] = [];
        for (const port of ingressPorts) {
          const socket = await connectVerified(port, root);
          seen.push(peerLeaf(socket).fingerprint256);
          socket.destroy();
        }
        return seen;
      },
      `every member serves the ACME certificate\n${logs.map((log) => log.text()).join('\n')}\n${pebble.output()}`,
      2400,
    );
    assert.equal(new Set(fingerprints).size, 1, 'all three serve one certificate');
    const issued = pebble.output().match(/Issued certificate serial/g) ?? [];
    assert.equal(issued.length, 1, `pebble issued ${issued.length} certificates:\n${pebble.output()}`);
    assert.ok(logs[0]!.lines.some((line) => line.msg === 'ACME certificate now served'));
    // Earlier attempts may have run before "b" was up (and failed validation); the last one issued.
    const handed = logs[0]!.lines.filter((line) => line.msg === 'ACME TLS-ALPN-01 challenge handed to the fleet').pop();
    assert.ok(handed, 'the orderer shared its challenge');
    assert.ok((handed.peersReached as number) >= 1, 'a peer had the challenge before the CA was asked');
    assert.ok(
      logs[1]!.lines.some((line) => line.msg === "ACME: answering the fleet's pending TLS-ALPN-01 challenges"),
      'the validated member answered with the shared challenge',
    );
    for (const log of logs.slice(1)) {
      assert.ok(log.lines.some((line) => line.msg === 'ACME certificate taken from the fleet'));
      assert.equal(log.lines.filter((line) => line.msg === 'ACME certificate now served').length, 0);
    }
  });
});
