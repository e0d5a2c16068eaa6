import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Address } from '../src/net/address.js';
import { parseConfig } from '../src/config/load.js';
import { channels, type StopFailure } from '../src/core/diagnostics.js';
import { startHost } from '../src/host/host-service.js';
import { CloserStack, type Part } from '../src/core/lifecycle.js';
import { silentLogger } from '../src/core/log.js';
import { tcpConnect } from './helpers/net.js';
import { errorCode } from '../src/core/errors.js';

const portOf = (address: Address) =>
  address.transport === 'tcp' ? address.port : assert.fail(`not tcp: ${JSON.stringify(address)}`);

/** True when nothing accepts on the port any more. */
async function refused(port: number): Promise<boolean> {
  try {
    (await tcpConnect(port)).destroy();
    return false;
  } catch (error) {
    return errorCode(error) === 'ECONNREFUSED';
  }
}

describe('the closer stack', () => {
  it('stops in reverse order with the grace, goes on past a failing stop, reports it, and empties', async () => {
    const order: string[] = [];
    const published: StopFailure[] = [];
    const listener = (message: StopFailure) => published.push(message);
    channels.stopFailed.subscribe(listener);
    try {
      const stack = new CloserStack(silentLogger());
      const part: Part = {
        name: 'first',
        stop: async (graceMs) => {
          order.push(`first:${graceMs}`);
        },
      };
      assert.equal(stack.add(part), part);
      stack.push(() => {
        order.push('failing');
        throw new Error('cannot stop');
      }, 'failing');
      stack.push(async (graceMs) => {
        order.push(`last:${graceMs}`);
      });
      assert.equal(stack.size, 3);
      const failures = await stack.closeAll(250);
      assert.deepEqual(order, ['last:250', 'failing', 'first:250']);
      assert.deepEqual(
        failures.map((f) => [f.part, (f.error as Error).message]),
        [['failing', 'cannot stop']],
      );
      assert.deepEqual(
        published.map((f) => f.part),
        ['failing'],
      );
      assert.equal(stack.size, 0);
      assert.deepEqual(await stack.closeAll(), []);
      assert.equal(order.length, 3);
    } finally {
      channels.stopFailed.unsubscribe(listener);
    }
  });
});

describe('the host service', () => {
  it('stops every relay and the ingress even when one of them fails to stop', async () => {
    const config = parseConfig(
      [
        '[egress]',
        'allow = ["allowed.test"]',
        '[host]',
        'ingress_listen = "tcp:127.0.0.1:0"',
        'enclave_ingress = "tcp:127.0.0.1:9"',
        'egress_listen = "tcp:127.0.0.1:0"',
        'dns_listen = "tcp:127.0.0.1:0"',
        'upstream_dns = "127.0.0.1:53"',
      ].join('\n'),
      'run',
    );
    const host = await startHost(config, silentLogger());
    const ports = {
      ingress: portOf(host.ingress.address),
      egress: portOf(host.egressRelay.address),
      dns: portOf(host.dnsRelay.address),
    };
    for (const port of Object.values(ports)) assert.equal(await refused(port), false);
    // The egress relay is stopped between the ingress and the DNS relay; make its stop fail.
    const realClose = host.egressRelay.close.bind(host.egressRelay);
    host.egressRelay.close = async () => {
      await realClose();
      throw new Error('injected stop failure');
    };
    try {
      await host.close(0);
      assert.deepEqual(
        { ingress: await refused(ports.ingress), egress: await refused(ports.egress), dns: await refused(ports.dns) },
        { ingress: true, egress: true, dns: true },
      );
    } finally {
      // Whatever close() left open, so a regression fails here instead of keeping the process alive.
      await Promise.allSettled([host.ingress.stop(0), realClose(), host.dnsRelay.close()]);
    }
  });
});
