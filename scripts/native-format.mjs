#!/usr/bin/env node
// clang-format over the addon's C/C++ sources (every tracked .cc/.h/.c, wherever they live):
// `--check` fails on a file that is not formatted, no flag rewrites them. Skipped, with a note,
// where clang-format is not installed (.ci/run installs it).
import { execFileSync, spawnSync } from 'node:child_process';

const files = execFileSync('git', ['ls-files', '-z', '*.cc', '*.h', '*.c'], { encoding: 'utf8' })
  .split('\0')
  .filter(Boolean);
if (spawnSync('clang-format', ['--version']).error) {
  console.log('clang-format is not installed: the C++ sources were not checked');
  process.exit(0);
}
const args = process.argv.includes('--check') ? ['--dry-run', '--Werror'] : ['-i'];
const result = spawnSync('clang-format', [...args, ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
