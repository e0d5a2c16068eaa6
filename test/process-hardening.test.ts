import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, it } from 'node:test';
import { prepareStateDir } from '../src/config/state-dir.js';
import { runCli } from './helpers/cli-run.js';
import { freePort } from './helpers/net.js';
import { REPO_ROOT } from './helpers/paths.js';
import { NATIVE_SKIP } from './native-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'process-hardening-'));
chmodSync(dir, 0o755);
after(() => rmSync(dir, { recursive: true, force: true }));
const BINDING = pathToFileURL(join(REPO_ROOT, 'dist', 'src', 'native', 'native-binding.js')).href;

describe('the runtime keeps its memory from the app: not dumpable, no core files', { skip: NATIVE_SKIP }, () => {
  it('hardenProcess() sets PR_SET_DUMPABLE 0 and RLIMIT_CORE 0 (soft and hard)', () => {
    // In a child: the test runner itself stays as it was.
    const script = `import { hardenProcess, processHardening } from ${JSON.stringify(BINDING)};
      const before = processHardening(); hardenProcess(); console.log(JSON.stringify({ before, after: processHardening() }));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(child.status, 0, child.stderr);
    const { before, after } = JSON.parse(child.stdout) as Record<
      'before' | 'after',
      { dumpable: number; coreSoft: number; coreHard: number }
    >;
    assert.equal(before.dumpable, 1, 'a fresh process is dumpable (so the check below can fail)');
    assert.deepEqual(after, { dumpable: 0, coreSoft: 0, coreHard: 0 });
  });

  it('`dev` hardens itself before it starts the command: the command sees its parent with a core limit of 0', async () => {
    const [api, ingress, health] = [await freePort(), await freePort(), await freePort()];
    const config = join(dir, 'dev.toml');
    writeFileSync(
      config,
      `[runtime]\nhealth_listen = "tcp:127.0.0.1:${health}"\nstate_dir = "${join(dir, 'state')}"\nshutdown_grace_ms = 100\n` +
        `[ingress]\nlisten = "tcp:127.0.0.1:${ingress}"\n[tls]\nenabled = false\n[attestation]\napi_listen = "tcp:127.0.0.1:${api}"\n[metrics]\nenabled = false\n`,
    );
    const app = `const line = require('node:fs').readFileSync('/proc/' + process.ppid + '/limits', 'utf8').split('\\n').find((l) => l.startsWith('Max core file size'));
      process.exit(/^Max core file size\\s+0\\s+0\\s/.test(line) ? 0 : 9);`;
    const run = runCli(['dev', '--config', config, '--', process.execPath, '-e', app]);
    assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-2000));
  });
});

describe('the state dir is private (0700), also when it already exists', () => {
  it('makes an existing 0755 dir 0700, and a fresh one 0700', async () => {
    const existing = join(dir, 'existing');
    mkdirSync(existing, { mode: 0o755 });
    chmodSync(existing, 0o755);
    await prepareStateDir(existing);
    assert.equal(statSync(existing).mode & 0o7777, 0o700);
    const fresh = join(dir, 'fresh', 'state');
    await prepareStateDir(fresh);
    assert.equal(statSync(fresh).mode & 0o7777, 0o700);
    // A sticky, world-writable dir of its own (a tmpfs mount point, say) is taken over too.
    const sticky = join(dir, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    await prepareStateDir(sticky);
    assert.equal(statSync(sticky).mode & 0o7777, 0o700);
  });

  it('refuses a symlink and a shared dir rather than changing them', async () => {
    const target = join(dir, 'target');
    mkdirSync(target, { mode: 0o755 });
    chmodSync(target, 0o755);
    symlinkSync(target, join(dir, 'link'));
    await assert.rejects(prepareStateDir(join(dir, 'link')), {
      code: 'ERR_STATE_DIR',
      message: /not a directory \(a symlink or a file\)/,
    });
    assert.equal(statSync(target).mode & 0o7777, 0o755);
    const tmpMode = statSync(tmpdir()).mode;
    await assert.rejects(prepareStateDir(tmpdir()), { code: 'ERR_STATE_DIR', message: /is a shared directory/ });
    assert.equal(statSync(tmpdir()).mode, tmpMode);
  });
});
