import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(start: string): string {
  let dir = start;
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${start}`);
    dir = parent;
  }
  return dir;
}

/** The repository root, whether tests run from test/ or from the compiled dist/test/. */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));
/** Real Nitro documents from AWS hardware (public data), with their provenance in SOURCES.md beside them. */
export const NITRO_FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'nitro');
/** The compiled CLI entry point, for tests that spawn the real command. */
export const CLI = join(REPO_ROOT, 'bin', 'enclave-runtime.js');
