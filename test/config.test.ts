import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { SCHEMA, type Table } from '../src/config/schema.js';
import { REPO_ROOT } from './helpers/paths.js';
import { problemsOf } from './helpers/config-problems.js';

describe('enclave.toml', () => {
  it('defaults differ by mode as SPEC says', () => {
    const run = parseConfig('', 'run');
    const dev = parseConfig('', 'dev');
    assert.deepEqual(run.ingress.listen, { transport: 'vsock', cid: 0xffffffff, port: 7777 });
    assert.deepEqual(dev.ingress.listen, { transport: 'tcp', host: '127.0.0.1', port: 8443 });
    assert.deepEqual(run.ingress.app, { transport: 'tcp', host: '127.0.0.1', port: 8008 });
    assert.deepEqual(run.attestation.apiListen, { transport: 'tcp', host: '127.0.0.1', port: 9999 });
    assert.equal(run.attestation.mode, 'nsm');
    assert.equal(dev.attestation.mode, 'simulated');
  });

  it('dev always simulates the NSM, even when the file asks for the device', () => {
    assert.equal(parseConfig('[attestation]\nmode = "nsm"', 'dev').attestation.mode, 'simulated');
  });

  it('reads values into the typed config', () => {
    const config = parseConfig(
      `[ingress]\nlisten = "unix:/tmp/in.sock"\napp = "tcp:[::1]:9000"\nmax_connections = 7\nproxy_protocol = "v2"\n` +
        `[attestation.simulated.pcrs]\n0 = "${'ab'.repeat(48)}"\n`,
      'run',
    );
    assert.deepEqual(config.ingress.listen, { transport: 'unix', path: '/tmp/in.sock' });
    assert.deepEqual(config.ingress.app, { transport: 'tcp', host: '::1', port: 9000 });
    assert.equal(config.ingress.maxConnections, 7);
    assert.equal(config.ingress.proxyProtocol, 'v2');
    assert.deepEqual(config.attestation.simulated.pcrs[0], Buffer.alloc(48, 0xab));
  });

  it('the shipped enclave.toml.example is valid and documents every key with a comment', () => {
    const text = readFileSync(join(REPO_ROOT, 'enclave.toml.example'), 'utf8');
    parseConfig(text, 'dev');
    parseConfig(text.replace('listen = "tcp:127.0.0.1:8443"', 'listen = "vsock:any:7777"'), 'run');
    const lines = text.split('\n');
    const walk = (table: Table, path: string) => {
      for (const [key, entry] of Object.entries(table.entries)) {
        const here = path ? `${path}.${key}` : key;
        if (entry.kind === 'table') {
          assert.ok(lines.includes(`[${here}]`), `enclave.toml.example lacks the table [${here}]`);
          walk(entry, here);
          continue;
        }
        if (entry.kind === 'tableList') {
          // Shown commented out (an active entry would need a real KMS): each key as `# key = ...` under a doc line.
          assert.ok(
            lines.includes(`# [[${here}]]`) || lines.includes(`[[${here}]]`),
            `enclave.toml.example lacks [[${here}]]`,
          );
          for (const itemKey of Object.keys(entry.item.entries)) {
            const at = lines.findIndex(
              (line) => line.startsWith(`# ${itemKey} = `) || line.startsWith(`${itemKey} = `),
            );
            assert.ok(at > 0, `enclave.toml.example lacks ${here}[].${itemKey}`);
            assert.match(lines[at - 1] as string, /^# (?![a-z_]+ = )/, `${here}[].${itemKey} has no comment above it`);
          }
          continue;
        }
        if (key === 'pcrs') continue;
        const at = lines.findIndex((line) => line.startsWith(`${key} = `));
        assert.ok(at > 0, `enclave.toml.example lacks ${here}`);
        assert.match(lines[at - 1] as string, /^# /, `${here} has no comment above it`);
      }
    };
    walk(SCHEMA, '');
  });

  describe('bad files: every message names the key', () => {
    const cases: Array<[string, string, RegExp]> = [
      [
        'unknown key with a suggestion',
        '[ingress]\nmax_conections = 5',
        /ingress\.max_conections: unknown key; did you mean "ingress\.max_connections"\?/,
      ],
      ['unknown section', '[ingres]\nenabled = true', /^ingres: unknown key; did you mean "ingress"\?/],
      ['wrong type', '[ingress]\nenabled = "yes"', /^ingress\.enabled: "yes" is not allowed; expected true or false/],
      [
        'integer out of range',
        '[ingress]\nmax_connections = 0',
        /^ingress\.max_connections: 0 is not allowed; expected an integer from 1 to 1000000/,
      ],
      [
        'float for integer',
        '[ingress]\nidle_timeout_ms = 1.5',
        /^ingress\.idle_timeout_ms: 1\.5 is not allowed; expected an integer/,
      ],
      [
        'enum',
        '[ingress]\nproxy_protocol = "v3"',
        /^ingress\.proxy_protocol: "v3" is not allowed; expected one of "off", "v1", "v2", "any"/,
      ],
      [
        'app_connect',
        '[ingress]\napp_connect = "lazy"',
        /^ingress\.app_connect: "lazy" is not allowed; expected one of "eager", "first-byte"/,
      ],
      [
        'bad address transport',
        '[ingress]\napp = "udp:1.2.3.4:5"',
        /^ingress\.app: "udp:1\.2\.3\.4:5" has an unknown transport "udp"; expected vsock:CID:PORT/,
      ],
      ['bad port', '[ingress]\napp = "tcp:127.0.0.1:70000"', /^ingress\.app: .*port 70000 is outside 0\.\.65535/],
      [
        'api on vsock',
        '[attestation]\napi_listen = "vsock:any:9999"',
        /^attestation\.api_listen: .*expected a tcp address/,
      ],
      [
        'log level',
        '[runtime]\nlog_level = "loud"',
        /^runtime\.log_level: "loud" is not allowed; expected one of "trace"/,
      ],
      [
        'short PCR',
        '[attestation.simulated.pcrs]\n0 = "abcd"',
        /^attestation\.simulated\.pcrs: .*PCR 0 as 96 hex digits/,
      ],
      [
        'PCR index',
        `[attestation.simulated.pcrs]\n16 = "${'00'.repeat(48)}"`,
        /^attestation\.simulated\.pcrs: .*PCR indexes 0 to 15, not "16"/,
      ],
      ['section is a value', 'tls = 5', /^tls: 5 is not allowed; expected a table \[tls\]/],
      [
        'forwarding to itself',
        '[ingress]\nlisten = "tcp:127.0.0.1:8008"',
        /ingress\.listen and ingress\.app are the same address/,
      ],
      ['TOML syntax', '[ingress\nenabled = true', /TOML syntax error at line 1/],
      [
        'egress allow entry',
        '[egress]\nallow = ["api.example.com", "*.*.bad"]',
        /^egress\.allow: egress allow entry "\*\.\*\.bad" is invalid/,
      ],
      [
        'nonce encoding',
        '[tls]\nsni_nonce_encoding = "base32"',
        /^tls\.sni_nonce_encoding: "base32" is not allowed; expected one of "hex", "base64"/,
      ],
    ];
    for (const [name, toml, expected] of cases) {
      it(name, () => {
        const problems = problemsOf(toml);
        assert.ok(
          problems.some((p) => expected.test(p)),
          `no problem matched ${expected}:\n${problems.join('\n')}`,
        );
      });
    }

    it('reports every problem at once, not just the first', () => {
      const problems = problemsOf('[ingress]\nenabled = 1\nmax_connections = -1\nbogus = 2');
      assert.equal(problems.length, 3);
      assert.ok(problems.some((p) => p.startsWith('ingress.enabled')));
      assert.ok(problems.some((p) => p.startsWith('ingress.max_connections')));
      assert.ok(problems.some((p) => p.startsWith('ingress.bogus')));
    });

    it('names every bad egress.allow entry, in the same pass as a bad key elsewhere', () => {
      const problems = problemsOf(
        [
          '[egress]',
          'allow = ["api.example.com", "*.*.bad", "10.0.0.0/33", "ok.example:443", "has space.example", "host:99999"]',
          '[ingress]',
          'max_connections = 0',
        ].join('\n'),
      );
      const allow = problems.filter((p) => p.startsWith('egress.allow: '));
      assert.deepEqual(
        allow.map((p) => /entry ("[^"]*") is invalid/.exec(p)?.[1]),
        ['"*.*.bad"', '"10.0.0.0/33"', '"has space.example"', '"host:99999"'],
        problems.join('\n'),
      );
      assert.ok(
        problems.some((p) => p.startsWith('ingress.max_connections: 0 is not allowed')),
        problems.join('\n'),
      );
      assert.equal(problems.length, 5, problems.join('\n'));
    });

    it('shows a huge bad egress.allow entry truncated', () => {
      const problems = problemsOf(`[egress]\nallow = ["${'a b'.repeat(300)}"]`);
      assert.equal(problems.length, 1);
      assert.ok(problems[0]!.length < 300, problems[0]);
    });

    it('dev refuses a vsock ingress', () => {
      const problems = problemsOf('[ingress]\nlisten = "vsock:any:7777"', 'dev');
      assert.ok(problems.some((p) => p.startsWith('ingress.listen: dev mode')));
    });

    it('truncates a huge bad value in the message', () => {
      const problems = problemsOf(`[ingress]\napp = "${'x'.repeat(5000)}"`);
      assert.ok(
        problems.every((p) => p.length < 600),
        'a message carried the whole value',
      );
    });
  });
});
