import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { resolveAppUser } from '../src/app/app-user.js';
import { restartDelayMs, shouldRestart } from '../src/app/restart-policy.js';
import { ConfigError } from '../src/core/errors.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';
import { commandMissing } from './helpers/privilege.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'supervisor-'));
chmodSync(dir, 0o755);
after(() => rmSync(dir, { recursive: true, force: true }));

/** A config on free ports: no TLS (nothing to terminate), no metrics, the simulated NSM even under `run`. */
async function writeConfig(name: string, extra = '', runtimeExtra = ''): Promise<{ path: string; apiPort: number }> {
  const [apiPort, ingressPort, appPort, healthPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const path = join(dir, `${name}.toml`);
  writeFileSync(
    path,
    `[runtime]\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\nlog_relay = "off"\nstate_dir = "${join(dir, `${name}-state`)}"\nshutdown_grace_ms = 100\n${runtimeExtra}` +
      `[ingress]\nlisten = "tcp:127.0.0.1:${ingressPort}"\napp = "tcp:127.0.0.1:${appPort}"\n[tls]\nenabled = false\n` +
      `[attestation]\nmode = "simulated"\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nenabled = false\n${extra}`,
  );
  return { path, apiPort };
}

interface Run {
  child: ChildProcessWithoutNullStreams;
  stdout: () => string;
  logs: Array<Record<string, unknown>>;
  exit: Promise<number | null>;
  waitForOutput(text: string): Promise<void>;
}

function run(argv: string[], prefix: string[] = [], env: NodeJS.ProcessEnv = {}): Run {
  const command = prefix.length > 0 ? prefix[0]! : process.execPath;
  const args = prefix.length > 0 ? [...prefix.slice(1), process.execPath, CLI, ...argv] : [CLI, ...argv];
  const child = spawn(command, args, { cwd: REPO_ROOT, env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  const logs: Array<Record<string, unknown>> = [];
  const watchers: Array<() => void> = [];
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    for (const watcher of watchers) watcher();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString();
    const lines = err.split('\n');
    err = lines.pop() ?? '';
    for (const line of lines) if (line.startsWith('{')) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  const exit = once(child, 'exit').then(([code]) => code as number | null);
  return {
    child,
    stdout: () => out,
    logs,
    exit,
    waitForOutput: (text) =>
      new Promise((resolve, reject) => {
        const check = () => out.includes(text) && resolve();
        watchers.push(check);
        check();
        void exit.then((code) =>
          reject(
            new Error(
              `exited with ${code} before printing "${text}"; stdout: ${out}; logs: ${JSON.stringify(logs.slice(-5))}`,
            ),
          ),
        );
      }),
  };
}

/** A throwaway customer command: a Node script written for one test. */
function script(name: string, source: string): string {
  const path = join(dir, `${name}.cjs`);
  writeFileSync(path, source);
  return path;
}

describe('the restart policy and [app] user, as functions', () => {
  it('restarts per policy until max_restarts is used up, with a doubling backoff capped at 60 s', () => {
    assert.equal(shouldRestart('never', 1, 0, 10), false);
    assert.equal(shouldRestart('on-failure', 0, 0, 10), false);
    assert.equal(shouldRestart('on-failure', 3, 0, 10), true);
    assert.equal(shouldRestart('always', 0, 9, 10), true);
    assert.equal(shouldRestart('always', 0, 10, 10), false);
    assert.deepEqual(
      [1, 2, 3, 4].map((n) => restartDelayMs(500, n)),
      [500, 1000, 2000, 4000],
    );
    assert.equal(restartDelayMs(1000, 40), 60_000);
    assert.equal(restartDelayMs(0, 3), 0);
  });

  it('resolves NAME, UID, NAME:GROUP and UID:GID from the image files', () => {
    const passwd = join(dir, 'passwd');
    const group = join(dir, 'group');
    writeFileSync(passwd, 'root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/false\n');
    writeFileSync(group, 'root:x:0:\nstaff:x:50:\napp:x:1002:\n');
    const files = { passwd, group };
    assert.deepEqual(resolveAppUser('app', files), { uid: 1001, gid: 1002 });
    assert.deepEqual(resolveAppUser('app:staff', files), { uid: 1001, gid: 50 });
    assert.deepEqual(resolveAppUser('1001', files), { uid: 1001, gid: 1002 });
    assert.deepEqual(resolveAppUser('4242', files), { uid: 4242, gid: 4242 });
    assert.deepEqual(resolveAppUser('4242:7', files), { uid: 4242, gid: 7 });
    assert.throws(
      () => resolveAppUser('nobody-here', files),
      (error) => error instanceof ConfigError && /app\.user: no user "nobody-here"/.test(error.message),
    );
    assert.throws(() => resolveAppUser('app:wheel', files), /no group "wheel"/);
  });
});

describe('supervising the customer command', () => {
  it('starts the command only once the services are up, and passes its exit code through', async () => {
    const { path, apiPort } = await writeConfig('ready');
    // The first thing the command does is call the internal API; 7 means it answered.
    const first = script(
      'ready',
      `const http = require('node:http');
       http.get('http://127.0.0.1:${apiPort}/health', (res) => { res.resume(); console.log('health ' + res.statusCode); process.exit(7); })
         .on('error', (e) => { console.log('unreachable ' + e.code); process.exit(3); });`,
    );
    const started = run(['dev', '--config', path, '--', process.execPath, first]);
    assert.equal(await started.exit, 7, started.stdout());
    assert.match(started.stdout(), /^health (200|503)\n$/);
  });

  it('forwards SIGHUP and SIGTERM to the command and exits with the code it chose', async () => {
    const { path } = await writeConfig('signals');
    const trapper = script(
      'signals',
      `process.on('SIGHUP', () => console.log('got SIGHUP'));
       process.on('SIGTERM', () => { console.log('got SIGTERM'); process.exit(42); });
       console.log('waiting'); setInterval(() => {}, 1000);`,
    );
    const started = run(['dev', '--config', path, '--', process.execPath, trapper]);
    await started.waitForOutput('waiting\n');
    started.child.kill('SIGHUP');
    await started.waitForOutput('got SIGHUP\n');
    started.child.kill('SIGTERM');
    assert.equal(await started.exit, 42);
    assert.equal(started.stdout(), 'waiting\ngot SIGHUP\ngot SIGTERM\n');
    assert.ok(started.logs.some((line) => line.msg === 'runtime stopped'));
  });

  it('reports a command killed by a signal as 128+N', async () => {
    const { path } = await writeConfig('killed');
    const selfKill = script('killed', `process.kill(process.pid, 'SIGKILL');`);
    assert.equal(await run(['dev', '--config', path, '--', process.execPath, selfKill]).exit, 137);
  });

  it('restarts on failure up to max_restarts, then exits with the last code', async () => {
    const counter = join(dir, 'restarts.txt');
    const { path } = await writeConfig(
      'on-failure',
      `[app]\nrestart = "on-failure"\nmax_restarts = 2\nrestart_backoff_ms = 10\n`,
    );
    const failing = script(
      'failing',
      `require('node:fs').appendFileSync(${JSON.stringify(counter)}, 'run\\n'); process.exit(3);`,
    );
    const started = run(['dev', '--config', path, '--', process.execPath, failing]);
    assert.equal(await started.exit, 3);
    assert.equal(readFileSync(counter, 'utf8'), 'run\nrun\nrun\n');
    assert.equal(started.logs.filter((line) => line.msg === 'customer command exited; restarting').length, 2);
    assert.ok(started.logs.some((line) => line.msg === 'customer command used up app.max_restarts; stopping'));
  });

  it('"always" restarts a command that succeeded; "on-failure" does not', async () => {
    const always = join(dir, 'always.txt');
    const { path } = await writeConfig(
      'always',
      `[app]\nrestart = "always"\nmax_restarts = 1\nrestart_backoff_ms = 0\n`,
    );
    const ok = script('ok-always', `require('node:fs').appendFileSync(${JSON.stringify(always)}, 'run\\n');`);
    assert.equal(await run(['dev', '--config', path, '--', process.execPath, ok]).exit, 0);
    assert.equal(readFileSync(always, 'utf8'), 'run\nrun\n');

    const once_ = join(dir, 'on-failure-ok.txt');
    const second = await writeConfig(
      'on-failure-ok',
      `[app]\nrestart = "on-failure"\nmax_restarts = 5\nrestart_backoff_ms = 0\n`,
    );
    const okOnce = script('ok-once', `require('node:fs').appendFileSync(${JSON.stringify(once_)}, 'run\\n');`);
    assert.equal(await run(['dev', '--config', second.path, '--', process.execPath, okOnce]).exit, 0);
    assert.equal(readFileSync(once_, 'utf8'), 'run\n');
  });

  it('SIGTERM during the restart backoff stops for good', async () => {
    const { path } = await writeConfig(
      'backoff',
      `[app]\nrestart = "always"\nmax_restarts = 100\nrestart_backoff_ms = 60000\n`,
    );
    const quick = script('quick', `console.log('ran'); process.exit(5);`);
    const started = run(['dev', '--config', path, '--', process.execPath, quick]);
    await started.waitForOutput('ran\n');
    await new Promise<void>((resolve, reject) => {
      let polls = 0;
      const poll = setInterval(() => {
        if (started.logs.some((line) => line.msg === 'customer command exited; restarting')) {
          clearInterval(poll);
          resolve();
        } else if (++polls > 1500) {
          clearInterval(poll);
          reject(new Error('the restart was never scheduled'));
        }
      }, 20);
    });
    started.child.kill('SIGTERM');
    assert.equal(await started.exit, 5);
    assert.equal(started.stdout(), 'ran\n');
  });

  it('runs the command with [app] env, cwd and (as root) user', async () => {
    const asRoot = process.getuid?.() === 0;
    const { path } = await writeConfig(
      'env',
      `[app]\ncwd = "${dir}"\nenv = { GREETING = "hello from toml" }\n${asRoot ? 'user = "65534:65534"\n' : ''}`,
    );
    const show = script(
      'env',
      `console.log(JSON.stringify({ greeting: process.env.GREETING, cwd: process.cwd(), uid: process.getuid(), gid: process.getgid() }));`,
    );
    const started = run(['dev', '--config', path, '--', process.execPath, show]);
    assert.equal(await started.exit, 0, JSON.stringify(started.logs.slice(-3)));
    const seen = JSON.parse(started.stdout()) as { greeting: string; cwd: string; uid: number; gid: number };
    assert.equal(seen.greeting, 'hello from toml');
    assert.equal(seen.cwd, dir);
    if (asRoot) assert.deepEqual([seen.uid, seen.gid], [65534, 65534]);
  });

  it('refuses an [app] user that does not exist with exit code 2', async () => {
    const { path } = await writeConfig('bad-user', `[app]\nuser = "no-such-user-here"\n`);
    const started = run(['dev', '--config', path, '--', process.execPath, '-e', '0']);
    assert.equal(await started.exit, 2);
    assert.ok(
      started.logs.some(
        (line) =>
          line.msg === 'the command cannot be started' && /no user "no-such-user-here"/.test(String(line.reason)),
      ),
    );
  });
});

const pidNamespaceUnavailable = (): string | undefined => {
  if (process.getuid?.() !== 0) return 'needs root (a PID namespace)';
  const missing = commandMissing('unshare');
  if (missing) return missing;
  const probe = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--uts', 'true'], { stdio: 'ignore' });
  return probe.status === 0
    ? undefined
    : 'cannot create PID/UTS namespaces (unshare --pid --fork --mount-proc --uts failed)';
};

describe('`run` as PID 1 of a new PID namespace', { skip: pidNamespaceUnavailable() }, () => {
  // The command orphans a grandchild (its intermediate shell exits at once), checks it was
  // re-parented to PID 1, and waits for /proc/<pid> to disappear: gone means reaped, 'Z' means a zombie.
  const orphanCheck = script(
    'orphan',
    `const fs = require('node:fs');
     const { spawnSync } = require('node:child_process');
     const os = require('node:os');
     const limitMs = Number(process.env.REAP_LIMIT_MS);
     const pid = Number(spawnSync('sh', ['-c', 'sleep 0.2 >/dev/null 2>&1 & echo $!'], { encoding: 'utf8' }).stdout.trim());
     const ppid = /PPid:\\s+(\\d+)/.exec(fs.readFileSync('/proc/' + pid + '/status', 'utf8'))[1];
     const started = Date.now();
     const poll = () => {
       let state;
       try { state = fs.readFileSync('/proc/' + pid + '/stat', 'utf8').split(') ')[1][0]; } catch { state = 'gone'; }
       if (state === 'gone' || (state === 'Z' && Date.now() - started > limitMs)) {
         console.log(JSON.stringify({ self: process.pid, ppid: Number(ppid), orphan: state, hostname: os.hostname() }));
         process.exit(state === 'gone' ? 0 : 9);
       }
       setTimeout(poll, 25);
     };
     poll();`,
  );

  it('reaps an orphaned grandchild, sets the hostname, and exits with the command code', async () => {
    const { path } = await writeConfig('pid1', '', 'hostname = "pid1-test"\n');
    // A generous bound for a slow CI machine: a reaped orphan is gone within one SIGCHLD.
    const started = run(
      ['run', '--config', path, '--', process.execPath, orphanCheck],
      ['unshare', '--pid', '--fork', '--mount-proc', '--uts'],
      { REAP_LIMIT_MS: '30000' },
    );
    const code = await started.exit;
    const result = JSON.parse(started.stdout()) as { self: number; ppid: number; orphan: string; hostname: string };
    assert.equal(code, 0, `${started.stdout()} ${JSON.stringify(started.logs.slice(-5))}`);
    assert.equal(result.ppid, 1, 'the orphan was re-parented to the runtime, PID 1');
    assert.notEqual(result.self, 1, 'the command is not PID 1; the runtime is');
    assert.equal(result.orphan, 'gone');
    assert.equal(result.hostname, 'pid1-test');
    assert.ok(started.logs.some((line) => line.msg === 'init duties done: lo up, reaping orphans' && line.pid === 1));
  });

  it('control: a plain Node as PID 1 leaves the same orphan a zombie', async () => {
    const control = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, orphanCheck], {
      encoding: 'utf8',
      env: { ...process.env, REAP_LIMIT_MS: '1500' },
      timeout: 30_000,
    });
    assert.equal(control.status, 9, control.stdout + control.stderr);
    assert.equal((JSON.parse(control.stdout) as { orphan: string }).orphan, 'Z');
  });
});
