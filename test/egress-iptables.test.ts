import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { applyRules, buildRules, EGRESS_CHAIN, IptablesError } from '../src/egress/iptables-rules.js';
import { silentLogger } from '../src/core/log.js';
import { NetnsLab } from './helpers/netns.js';
import { netnsUnavailable } from './helpers/privilege.js';

describe('egress redirect rules', () => {
  it('redirect all outbound TCP, and DNS, except loopback and the runtime own relay destinations', () => {
    const rules = buildRules({
      transparentPort: 4444,
      dnsPort: 53,
      ipv6: true,
      exclude: [
        { host: '10.0.0.5', port: 4433 },
        { host: 'fd00::5', port: 8585 },
        { host: 'relay.internal', port: 1 },
      ],
    });
    assert.deepEqual(rules.ipv4, [
      ['-A', EGRESS_CHAIN, '-d', '127.0.0.0/8', '-j', 'RETURN'],
      ['-A', EGRESS_CHAIN, '-p', 'tcp', '-d', '10.0.0.5', '--dport', '4433', '-j', 'RETURN'],
      ['-A', EGRESS_CHAIN, '-p', 'udp', '--dport', '53', '-j', 'REDIRECT', '--to-ports', '53'],
      ['-A', EGRESS_CHAIN, '-p', 'tcp', '--dport', '53', '-j', 'REDIRECT', '--to-ports', '53'],
      ['-A', EGRESS_CHAIN, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '4444'],
    ]);
    assert.deepEqual(rules.ipv6, [
      ['-A', EGRESS_CHAIN, '-d', '::1/128', '-j', 'RETURN'],
      ['-A', EGRESS_CHAIN, '-p', 'tcp', '-d', 'fd00::5', '--dport', '8585', '-j', 'RETURN'],
      ['-A', EGRESS_CHAIN, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '4444'],
    ]);
    assert.deepEqual(buildRules({ transparentPort: 4444, ipv6: false, exclude: [] }).ipv6, []);
  });

  it('says which package to install when a binary is missing', async () => {
    await assert.rejects(
      applyRules(
        { transparentPort: 4444, ipv6: false, exclude: [] },
        { logger: silentLogger(), iptables: '/nonexistent/iptables' },
      ),
      (error: unknown) =>
        error instanceof IptablesError &&
        error.code === 'ERR_IPTABLES' &&
        /\/nonexistent\/iptables not found: install the iptables/.test(error.message),
    );
  });

  describe('applied inside a network namespace', { skip: netnsUnavailable() }, () => {
    const lab = new NetnsLab();
    let ns = '';
    let dir = '';
    const binaries: Record<string, string> = {};

    before(() => {
      ns = lab.addNamespace('ipt');
      dir = mkdtempSync(join(tmpdir(), 'iptables-'));
      // The runtime runs iptables/ip in its own namespace; these wrappers make that the test's namespace.
      for (const name of ['iptables', 'ip6tables', 'ip']) {
        binaries[name] = join(dir, name);
        writeFileSync(binaries[name]!, `#!/bin/sh\nexec ip netns exec ${ns} ${name} "$@"\n`);
        chmodSync(binaries[name]!, 0o755);
      }
    });
    after(async () => {
      await lab.cleanup();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    const options = () => ({
      logger: silentLogger(),
      iptables: binaries.iptables!,
      ip6tables: binaries.ip6tables!,
      ip: binaries.ip!,
    });

    it('adds the chain, the jump and a default route via lo, and removes exactly those', async () => {
      assert.equal(lab.exec(ns, 'ip', ['route', 'show', 'default']).trim(), '');
      const applied = await applyRules({ transparentPort: 4444, dnsPort: 8053, ipv6: true, exclude: [] }, options());
      assert.equal(applied.ipv6, true);
      const v4 = lab.exec(ns, 'iptables', ['-t', 'nat', '-S']);
      assert.match(v4, /^-A OUTPUT -j ENCLAVE_EGRESS$/m);
      assert.match(v4, /^-A ENCLAVE_EGRESS -d 127\.0\.0\.0\/8 -j RETURN$/m);
      assert.match(v4, /^-A ENCLAVE_EGRESS -p udp -m udp --dport 53 -j REDIRECT --to-ports 8053$/m);
      assert.match(v4, /^-A ENCLAVE_EGRESS -p tcp -j REDIRECT --to-ports 4444$/m);
      assert.match(
        lab.exec(ns, 'ip6tables', ['-t', 'nat', '-S']),
        /^-A ENCLAVE_EGRESS -p tcp -j REDIRECT --to-ports 4444$/m,
      );
      assert.match(lab.exec(ns, 'ip', ['route', 'show', 'default']), /^default dev lo scope link src 127\.0\.0\.1/);
      assert.match(lab.exec(ns, 'ip', ['-6', 'route', 'show', 'default']), /default dev lo/);

      await applied.remove();
      assert.doesNotMatch(lab.exec(ns, 'iptables', ['-t', 'nat', '-S']), /ENCLAVE_EGRESS/);
      assert.doesNotMatch(lab.exec(ns, 'ip6tables', ['-t', 'nat', '-S']), /ENCLAVE_EGRESS/);
      assert.equal(lab.exec(ns, 'ip', ['route', 'show', 'default']).trim(), '');
      assert.equal(lab.exec(ns, 'ip', ['-6', 'route', 'show', 'default']).trim(), '');
      await applied.remove();
    });

    it('reuses a chain left by a crashed run, and leaves an existing default route alone', async () => {
      lab.exec(ns, 'iptables', ['-t', 'nat', '-N', EGRESS_CHAIN]);
      lab.exec(ns, 'iptables', ['-t', 'nat', '-A', EGRESS_CHAIN, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '9']);
      lab.exec(ns, 'iptables', ['-t', 'nat', '-A', 'OUTPUT', '-j', EGRESS_CHAIN]);
      lab.exec(ns, 'ip', ['route', 'add', 'default', 'dev', 'lo', 'metric', '7']);
      const applied = await applyRules({ transparentPort: 4444, ipv6: false, exclude: [] }, options());
      const v4 = lab.exec(ns, 'iptables', ['-t', 'nat', '-S']);
      assert.doesNotMatch(v4, /--to-ports 9$/m, 'the stale rules were flushed');
      assert.equal(v4.match(/-j ENCLAVE_EGRESS/g)?.length, 1, 'one jump');
      await applied.remove();
      assert.doesNotMatch(lab.exec(ns, 'iptables', ['-t', 'nat', '-S']), /ENCLAVE_EGRESS/);
      assert.match(lab.exec(ns, 'ip', ['route', 'show', 'default']), /metric 7/, 'a route it did not add stays');
    });
  });
});
