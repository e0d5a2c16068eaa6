/**
 * `enclave-runtime host` as a process: ingress to the enclave, the egress relay and the DNS
 * relay, all on loopback tcp (in production they are vsock), then a clean stop on SIGTERM.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DnsTcpFrameReader, encodeTcpFrame, parseDnsResponse } from '../src/wire/dns-message.js';
import { buildQuery } from '../src/egress/dns-forwarder.js';
import { EgressStatus, encodeEgressHeader, parseEgressReply } from '../src/wire/egress-header.js';
import { startAuthoritativeDns, type AuthoritativeDns } from './helpers/egress-internet.js';
import { exchange, readAll, startReplyServer, tcpConnect } from './helpers/net.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'host-command-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, lines: string[]): string {
  const path = join(dir, name);
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

const portOf = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));

describe('enclave-runtime host', () => {
  it('exits 2 on a bad option or config, and 1 when it cannot start', () => {
    const run = (args: string[]) =>
      spawnSync(process.execPath, [CLI, 'host', ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 20_000 });
    assert.equal(run(['--bogus']).status, 2);
    const badKey = run(['--config', writeConfig('bad.toml', ['[host]', 'allow_privat = true'])]);
    assert.equal(badKey.status, 2);
    assert.match(badKey.stderr, /allow_privat/);
    const badUpstream = run([
      '--config',
      writeConfig('upstream.toml', [
        '[host]',
        'upstream_dns = "resolver.example"',
        'egress_listen = "tcp:127.0.0.1:0"',
        'dns_listen = "tcp:127.0.0.1:0"',
      ]),
    ]);
    assert.equal(badUpstream.status, 1);
    assert.match(badUpstream.stderr, /ERR_DNS_UPSTREAM/);
  });

  describe('running', () => {
    let enclave: Awaited<ReturnType<typeof startReplyServer>>;
    let upstream: AuthoritativeDns;
    let child: ReturnType<typeof spawn>;
    let ready: Record<string, string>;
    const stderr: string[] = [];

    before(async () => {
      enclave = await startReplyServer((request) => Buffer.concat([Buffer.from('enclave got: '), request]));
      upstream = await startAuthoritativeDns({ 'allowed.test': { A: ['127.0.0.1'] } }, '127.0.0.1', 0);
      const config = writeConfig('host.toml', [
        '[runtime]',
        'shutdown_grace_ms = 200',
        '[egress]',
        'allow = ["allowed.test"]',
        '[host]',
        'ingress_listen = "tcp:127.0.0.1:0"',
        `enclave_ingress = "tcp:127.0.0.1:${enclave.port}"`,
        'egress_listen = "tcp:127.0.0.1:0"',
        'dns_listen = "tcp:127.0.0.1:0"',
        `upstream_dns = "127.0.0.1:${upstream.port}"`,
        'allow_private = true',
      ]);
      child = spawn(process.execPath, [CLI, 'host', '--config', config], {
        cwd: REPO_ROOT,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr!.setEncoding('utf8');
      ready = await new Promise((resolve, reject) => {
        let buffered = '';
        child.stderr!.on('data', (text: string) => {
          buffered += text;
          const lines = buffered.split('\n');
          buffered = lines.pop()!;
          for (const line of lines) {
            stderr.push(line);
            const parsed = JSON.parse(line) as Record<string, string>;
            if (parsed.msg === 'host ready') resolve(parsed);
          }
        });
        child.once('exit', (code) => reject(new Error(`host exited ${code}: ${stderr.join('\n')}`)));
      });
    });
    after(async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      enclave.server.close();
      await upstream.close();
    });

    it('forwards ingress to the enclave', async () => {
      const answer = await exchange(await tcpConnect(portOf(ready.ingress!)), Buffer.from('hello'));
      assert.equal(answer.toString(), 'enclave got: hello');
    });

    it('answers DNS for the enclave, then relays a connection to the name it resolved', async () => {
      const dns = await tcpConnect(portOf(ready.dnsRelay!));
      const reader = new DnsTcpFrameReader();
      const frames: Buffer[] = [];
      dns.on('data', (chunk: Buffer) => frames.push(...reader.push(chunk)));
      dns.end(encodeTcpFrame(buildQuery({ name: 'allowed.test', type: 1, class: 1 })));
      await once(dns, 'end');
      dns.destroy();
      assert.deepEqual(
        parseDnsResponse(frames[0]!).answers.map((a) => a.data),
        ['127.0.0.1'],
      );

      const stream = await tcpConnect(portOf(ready.egressRelay!));
      const answer = readAll(stream);
      stream.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: enclave.port }));
      stream.end('ping');
      const data = await answer;
      assert.deepEqual(parseEgressReply(data), { kind: 'reply', status: EgressStatus.OK, length: 4 });
      assert.equal(data.subarray(4).toString(), 'enclave got: ping');
    });

    it('stops on SIGTERM with exit code 0', async () => {
      child.kill('SIGTERM');
      const [code] = await once(child, 'close');
      assert.equal(code, 0);
      assert.ok(stderr.some((line) => line.includes('"host stopped"')));
    });
  });
});
