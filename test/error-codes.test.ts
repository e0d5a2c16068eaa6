import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';
import { ERROR_CODES } from '../src/core/error-codes.js';
import { errorCode, RuntimeError } from '../src/core/errors.js';
import { REPO_ROOT } from './helpers/paths.js';

const declared = new Set(Object.keys(ERROR_CODES));

/** Every quoted 'ERR_...' in src/, with where it is: codes other branches add are found too. */
function quotedCodes(): Map<string, string> {
  const src = join(REPO_ROOT, 'src');
  const found = new Map<string, string>();
  for (const entry of readdirSync(src, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
    const file = join(entry.parentPath, entry.name);
    if (file.endsWith('error-codes.ts')) continue;
    for (const match of readFileSync(file, 'utf8').matchAll(/'(ERR_[A-Z0-9_]+)'/g)) {
      if (!found.has(match[1]!)) found.set(match[1]!, relative(REPO_ROOT, file));
    }
  }
  return found;
}

/** The codes of the README's "Error codes" table. */
function readmeCodes(): string[] {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Error codes\n');
  assert.ok(start >= 0, 'README has an "Error codes" section');
  const section = readme.slice(start + 1, readme.indexOf('\n## ', start + 1));
  return [...section.matchAll(/^\| `(ERR_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]!);
}

describe('error codes', () => {
  it('every code quoted in src/ is declared in src/core/error-codes.ts', () => {
    const undeclared = [...quotedCodes()]
      .filter(([code]) => !declared.has(code))
      .map(([code, file]) => `${code} (${file})`);
    assert.deepEqual(undeclared, [], 'add each to src/core/error-codes.ts and to the README table');
  });

  it('every declared code is still raised somewhere', () => {
    const quoted = quotedCodes();
    assert.deepEqual(
      [...declared].filter((code) => !quoted.has(code)),
      [],
    );
  });

  it("the README's table lists exactly the declared codes, each once", () => {
    const rows = readmeCodes();
    assert.deepEqual([...rows].sort(), [...declared].sort());
  });

  it('errorCode reads the code of anything thrown, and only string codes', () => {
    assert.equal(errorCode(new RuntimeError('ERR_CONFIG', 'x')), 'ERR_CONFIG');
    assert.equal(errorCode(Object.assign(new Error('x'), { code: 'ENOENT' })), 'ENOENT');
    assert.equal(errorCode(Object.assign(new Error('x'), { code: 1 })), undefined);
    assert.equal(errorCode(new Error('x')), undefined);
    assert.equal(errorCode('ERR_CONFIG'), undefined);
    assert.equal(errorCode(null), undefined);
    assert.equal(errorCode(undefined), undefined);
  });
});
