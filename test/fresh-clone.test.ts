import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { REPO_ROOT } from './helpers/paths.js';

/**
 * A new user's first step: a clone with nothing beside it must build and pass the tests that read
 * the Nitro fixtures. The clone is of the committed HEAD, into an otherwise empty directory, so a
 * test reaching outside the repository (a sibling directory, say) fails here. node_modules and the
 * built addon are reused from this checkout, to keep the test to a build and a few test files.
 */

const ADDON = join(REPO_ROOT, 'build', 'Release', 'enclave_native.node');
/** Written split so that this file does not match its own search. */
const OUTSIDE = ['..', 'shared'].join('/');

function unavailable(): string | undefined {
  if (spawnSync('git', ['--version']).status !== 0) return 'git is not installed';
  if (spawnSync('git', ['-C', REPO_ROOT, 'rev-parse', 'HEAD']).status !== 0)
    return `${REPO_ROOT} is not a git checkout`;
  if (!existsSync(join(REPO_ROOT, 'node_modules', 'typescript'))) return 'node_modules is not installed (npm ci first)';
  if (!existsSync(ADDON)) return `the native addon is not built (${ADDON})`;
  return undefined;
}
const skip = unavailable();
if (skip) console.log(`# fresh-clone: skipped: ${skip}`);

const empty = mkdtempSync(join(tmpdir(), 'fresh-clone-'));
after(() => rmSync(empty, { recursive: true, force: true }));

/** Test files whose source reads the fixtures through helpers/paths.ts; the slow ones (bundling, fuzzing) run in the main suite. */
function fixtureTests(clone: string): string[] {
  return readdirSync(join(clone, 'test'))
    .filter((name) => name.endsWith('.test.ts') && !/^(bundle|hardening-|image-)/.test(name))
    .filter((name) => readFileSync(join(clone, 'test', name), 'utf8').includes(['NITRO', 'FIXTURES'].join('_')))
    .map((name) => join('dist', 'test', name.replace(/\.ts$/, '.js')));
}

describe('a fresh clone in an empty directory', { skip, timeout: 15 * 60_000 }, () => {
  const clone = join(empty, 'enclave-runtime');

  it('is the committed HEAD, with the fixtures and their sources inside it', () => {
    const head = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    execFileSync('git', ['clone', '--quiet', '--no-checkout', REPO_ROOT, clone]);
    execFileSync('git', ['-C', clone, 'checkout', '--quiet', head]);
    assert.deepEqual(readdirSync(empty), ['enclave-runtime'], 'nothing beside the clone');
    assert.ok(existsSync(join(clone, 'test', 'fixtures', 'nitro', 'SOURCES.md')));
    assert.ok(existsSync(join(clone, 'docs', 'SPEC.md')));
  });

  it(`has no file under src/, test/ or bench/ that reads ${OUTSIDE}`, () => {
    const tracked = execFileSync('git', ['-C', clone, 'ls-files', 'src', 'test', 'bench'], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean);
    assert.ok(tracked.length > 50, 'the clone has its sources');
    const offenders = tracked.filter(
      (path) => !path.startsWith('test/fixtures/') && readFileSync(join(clone, path), 'latin1').includes(OUTSIDE),
    );
    assert.deepEqual(offenders, []);
  });

  it('builds, and passes the tests that read the Nitro fixtures', () => {
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(clone, 'node_modules'), 'dir');
    mkdirSync(join(clone, 'build', 'Release'), { recursive: true });
    copyFileSync(ADDON, join(clone, 'build', 'Release', 'enclave_native.node'));

    // The package's own build (types and the browser bundle too), as `npm test` runs it.
    const build = spawnSync('npm', ['run', 'build'], { cwd: clone, encoding: 'utf8' });
    assert.equal(build.status, 0, `npm run build in the clone:\n${build.stdout}${build.stderr}`);

    const files = fixtureTests(clone);
    assert.ok(files.length >= 3, `expected several fixture tests, found: ${files.join(', ')}`);
    // Without NODE_TEST_CONTEXT (set for children of a test), the inner runner reports TAP on stdout as a user's would.
    const { NODE_TEST_CONTEXT: _inner, ...env } = process.env;
    const run = spawnSync(process.execPath, ['--test', '--test-reporter=tap', '--test-concurrency=1', ...files], {
      cwd: clone,
      env,
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    const summary = run.stdout.split('\n').filter((line) => /^# (tests|pass|fail|skipped)/.test(line));
    assert.equal(run.status, 0, `tests in the clone failed:\n${run.stdout.slice(-6000)}${run.stderr.slice(-2000)}`);
    assert.ok(summary.includes('# fail 0') && summary.includes('# skipped 0'), summary.join('\n'));
  });
});
