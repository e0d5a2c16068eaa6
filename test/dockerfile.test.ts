import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from './helpers/paths.js';

// hadolint is not packaged for Debian, so CI checks here what matters most for a reproducible,
// buildable Dockerfile.runtime; README "Linting Dockerfile.runtime" gives the manual hadolint run.
const DOCKERFILE = join(REPO_ROOT, 'Dockerfile.runtime');

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

/** Instructions with continuation lines joined and comments dropped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = '';
  let start = 0;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) return;
    if (pending === '') start = index + 1;
    if (line.startsWith('#')) return;
    pending += `${line.replace(/\\$/, '').trim()} `;
    if (!line.endsWith('\\')) {
      const [keyword = '', ...rest] = pending.trim().split(/\s+/);
      out.push({ keyword: keyword.toUpperCase(), args: rest.join(' '), line: start });
      pending = '';
    }
  });
  assert.equal(pending, '', 'the Dockerfile ends inside a continued line');
  return out;
}

function dockerignore(): string[] {
  const path = join(REPO_ROOT, '.dockerignore');
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
}

describe('Dockerfile.runtime', () => {
  const parsed = instructions(readFileSync(DOCKERFILE, 'utf8'));
  const args = new Map<string, string>();
  for (const instruction of parsed) {
    if (instruction.keyword !== 'ARG') continue;
    const [name, value] = instruction.args.split('=') as [string, string | undefined];
    if (value !== undefined && !args.has(name)) args.set(name, value);
  }
  const expand = (text: string) =>
    text.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, name: string) => args.get(name) ?? `<unset ${name}>`);

  it('pins every base image to an exact version or a digest, never latest', () => {
    const stages: string[] = [];
    for (const { keyword, args: rest, line } of parsed.filter((i) => i.keyword === 'FROM')) {
      void keyword;
      const [image = '', as, name] = expand(rest).split(/\s+/);
      if (as?.toUpperCase() === 'AS' && name) stages.push(name);
      if (image === 'scratch' || stages.slice(0, -1).includes(image)) continue;
      assert.doesNotMatch(image, /<unset/, `line ${line}: ${image} uses an ARG without a default`);
      assert.doesNotMatch(image, /:latest(@|$)/, `line ${line}: ${image} is :latest`);
      const pinned = /@sha256:[0-9a-f]{64}$/.test(image) || /:[^:@/]*\d+\.\d+\.\d+[^:@/]*$/.test(image);
      assert.ok(pinned, `line ${line}: ${image} is not pinned to an exact version (x.y.z) or a digest`);
    }
    assert.ok(stages.length >= 2, 'a multi-stage build');
    const last = parsed.filter((i) => i.keyword === 'FROM').at(-1);
    assert.match(last?.args ?? '', /^scratch\b/, 'the last stage is FROM scratch');
  });

  it('COPYs only files that exist and that .dockerignore lets through, and --from names an earlier stage', () => {
    const ignored = dockerignore();
    const stages: string[] = [];
    let copies = 0;
    for (const { keyword, args: rest, line } of parsed) {
      if (keyword === 'FROM') {
        const match = /\s+AS\s+(\S+)/i.exec(rest);
        if (match) stages.push(match[1] as string);
        continue;
      }
      assert.notEqual(keyword, 'ADD', `line ${line}: ADD fetches and unpacks implicitly; use COPY`);
      if (keyword !== 'COPY') continue;
      const words = rest.split(/\s+/).filter((word) => word !== '');
      const flags = words.filter((word) => word.startsWith('--'));
      const paths = words.filter((word) => !word.startsWith('--'));
      assert.ok(paths.length >= 2, `line ${line}: COPY needs a source and a destination`);
      const from = flags.find((flag) => flag.startsWith('--from='))?.slice('--from='.length);
      if (from !== undefined) {
        assert.ok(stages.slice(0, -1).includes(from), `line ${line}: --from=${from} is not an earlier stage`);
        continue;
      }
      for (const source of paths.slice(0, -1)) {
        copies++;
        const clean = source.replace(/^\.\//, '').replace(/\/$/, '');
        assert.ok(existsSync(join(REPO_ROOT, clean)), `line ${line}: COPY source ${source} does not exist`);
        for (const pattern of ignored) {
          assert.ok(
            clean !== pattern && !clean.startsWith(`${pattern}/`),
            `line ${line}: ${source} is excluded by .dockerignore (${pattern})`,
          );
        }
      }
    }
    assert.ok(copies >= 4, 'the build copies the sources it needs');
  });

  it('is reproducible and lint-clean where hadolint would look', () => {
    const text = readFileSync(DOCKERFILE, 'utf8');
    assert.match(text, /SOURCE_DATE_EPOCH/, 'SOURCE_DATE_EPOCH reaches the bundle');
    assert.match(text, /npm ci\b/, 'dependencies come from the lockfile');
    for (const { args: rest, line } of parsed.filter((i) => i.keyword === 'RUN')) {
      if (/apt-get install/.test(rest)) {
        assert.match(rest, /--no-install-recommends/, `line ${line}: DL3015`);
        assert.match(rest, /-y\b/, `line ${line}: DL3014`);
        assert.match(rest, /rm -rf \/var\/lib\/apt\/lists/, `line ${line}: DL3009`);
      }
      assert.doesNotMatch(rest, /\b(curl|wget)\b/, `line ${line}: nothing is downloaded outside the package managers`);
      assert.doesNotMatch(rest, /^cd\s/, `line ${line}: DL3003, use WORKDIR`);
    }
    for (const { keyword, args: rest, line } of parsed) {
      if (keyword === 'ENTRYPOINT' || keyword === 'CMD')
        assert.doesNotThrow(() => JSON.parse(rest), `line ${line}: ${keyword} in exec (JSON) form`);
    }
    const workdirs = parsed.filter((i) => i.keyword === 'WORKDIR');
    for (const { args: rest, line } of workdirs) assert.match(rest, /^\//, `line ${line}: DL3000, WORKDIR is absolute`);
  });

  it('has the final stage Dockerfile.local builds from a prebuilt bundle (`npm run image`)', () => {
    const local = instructions(readFileSync(join(REPO_ROOT, 'Dockerfile.local'), 'utf8'));
    const final = parsed.slice(parsed.findLastIndex((i) => i.keyword === 'FROM'));
    const shape = (stage: Instruction[]) =>
      stage.map(({ keyword, args: rest }) =>
        keyword === 'COPY' ? `COPY ${rest.split(/\s+/).at(-1)}` : `${keyword} ${rest.replace(/\s+AS\s+\S+$/i, '')}`,
      );
    assert.deepEqual(shape(local), shape(final), 'the same FROM, destination, ENTRYPOINT and CMD');
    assert.deepEqual(
      local.filter((i) => i.keyword === 'COPY').map((i) => i.args),
      ['. /opt/enclave-runtime'],
      'the build context (the bundle directory) is the whole layer',
    );
  });

  it('matches the two lines README gives a customer Dockerfile', () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    assert.match(readme, /COPY --from=\S+ \/opt\/enclave-runtime \/opt\/enclave-runtime/);
    assert.match(readme, /ENTRYPOINT \["\/opt\/enclave-runtime\/bin\/enclave-runtime", "run", "--", /);
    const final = parsed.slice(parsed.findLastIndex((i) => i.keyword === 'FROM'));
    assert.ok(final.some((i) => i.keyword === 'COPY' && /\/opt\/enclave-runtime \/opt\/enclave-runtime$/.test(i.args)));
  });
});
