import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { ConfigError } from '../src/core/errors.js';

function problems(text: string, mode: 'run' | 'dev' | 'host' = 'dev'): string[] {
  try {
    parseConfig(text, mode);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return [...error.problems];
  }
  assert.fail('the config was accepted');
}

describe('[fleet] config', () => {
  test('defaults: off; vsock under run, loopback and direct dialling under dev; host relays off', () => {
    const run = parseConfig('', 'run');
    assert.equal(run.fleet.enabled, false);
    assert.deepEqual(run.fleet.listen, { transport: 'vsock', cid: 0xffffffff, port: 7790 });
    assert.deepEqual(run.fleet.relay, { transport: 'vsock', cid: 3, port: 7791 });
    assert.equal(run.fleet.bootstrap, false);
    assert.equal(run.fleet.syncIntervalMs, 5000);
    const dev = parseConfig('', 'dev');
    assert.deepEqual(dev.fleet.listen, { transport: 'tcp', host: '127.0.0.1', port: 7790 });
    assert.equal(dev.fleet.relay, undefined);
    const host = parseConfig('', 'host');
    assert.equal(host.host.fleetListen, undefined);
    assert.equal(host.host.fleetRelayListen, undefined);
    assert.deepEqual(host.host.enclaveFleet, { transport: 'vsock', cid: 16, port: 7790 });
  });

  test('allow_debug needs a debug_psk of at least 32 characters, never quoted back', () => {
    const missing = problems('[fleet]\nenabled = true\nallow_debug = true\n');
    assert.ok(
      missing.some((problem) => problem.startsWith('fleet.debug_psk')),
      missing.join('\n'),
    );
    const short = problems('[fleet]\nenabled = true\nallow_debug = true\ndebug_psk = "tooshort-secret"\n');
    assert.ok(
      short.some((problem) => /debug_psk/.test(problem)),
      short.join('\n'),
    );
    assert.ok(short.every((problem) => !problem.includes('tooshort-secret')));
    const config = parseConfig(`[fleet]\nenabled = true\nallow_debug = true\ndebug_psk = "${'k'.repeat(32)}"\n`, 'dev');
    assert.equal(config.fleet.debugPsk, 'k'.repeat(32));
  });

  test('peers, bootstrap and the host relay keys are read', () => {
    const config = parseConfig(
      [
        '[fleet]',
        'enabled = true',
        'peers = ["enclaves.internal.example", "10.0.1.5:7790", "[fd00::5]:7790"]',
        'bootstrap = true',
        '[host]',
        'fleet_listen = "tcp:0.0.0.0:7790"',
        'fleet_relay_listen = "vsock:any:7791"',
      ].join('\n'),
      'host',
    );
    assert.deepEqual(config.fleet.peers, ['enclaves.internal.example', '10.0.1.5:7790', '[fd00::5]:7790']);
    assert.equal(config.fleet.bootstrap, true);
    assert.deepEqual(config.host.fleetListen, { transport: 'tcp', host: '0.0.0.0', port: 7790 });
    assert.deepEqual(config.host.fleetRelayListen, { transport: 'vsock', cid: 0xffffffff, port: 7791 });
  });

  test('bad values are refused naming the key and the value', () => {
    assert.match(problems('[fleet]\npeers = ["http://x"]').join('\n'), /fleet\.peers.*http:\/\/x/);
    assert.match(problems('[fleet]\npeers = ["10.0.0.1:99999"]').join('\n'), /fleet\.peers.*99999/);
    assert.match(problems('[fleet]\nsync_interval_ms = 10').join('\n'), /fleet\.sync_interval_ms/);
    assert.match(
      problems('[fleet]\nbootstrapp = true').join('\n'),
      /fleet\.bootstrapp: unknown key; did you mean "fleet\.bootstrap"/,
    );
    assert.match(problems('[host]\nfleet_listen = "vsock:any:7790"', 'host').join('\n'), /host\.fleet_listen/);
  });
});
