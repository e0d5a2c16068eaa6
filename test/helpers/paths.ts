import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
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
/** ../shared beside the checkout, as CI lays it out. */
export const SHARED_DIR = resolve(REPO_ROOT, '..', 'shared');
export const NITRO_FIXTURES = join(SHARED_DIR, 'fixtures', 'nitro');
/** The compiled CLI entry point, for tests that spawn the real command. */
export const CLI = join(REPO_ROOT, 'bin', 'enclave-runtime.js');
