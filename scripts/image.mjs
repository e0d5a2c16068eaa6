#!/usr/bin/env node
// `npm run image`: the runtime image, enclave-runtime:<version>, from a bundle built here.
//
// Builds the bundle (scripts/bundle.mjs), then Dockerfile.local with the bundle directory as the
// build context: FROM scratch plus one COPY, so no registry is asked for anything and the image
// has one layer holding exactly the bundle. Dockerfile.runtime builds the same image inside a
// pinned Node image, for machines that can pull it.
//
// Options: --engine podman|docker (default $CONTAINER_ENGINE, else podman when installed, else
// docker), --tag NAME:TAG (default enclave-runtime:<version>), --out DIR (where the bundle is built,
// default dist/enclave-runtime).
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { name, version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const { values } = parseArgs({
  options: { engine: { type: 'string' }, tag: { type: 'string' }, out: { type: 'string' } },
});
const out = resolve(values.out ?? join(ROOT, 'dist', 'enclave-runtime'));
const tag = values.tag ?? `${name}:${version}`;
const engine = values.engine ?? (process.env.CONTAINER_ENGINE || undefined) ?? ['podman', 'docker'].find(installed);
if (engine === undefined) fail('neither podman nor docker is installed (or pass --engine / set CONTAINER_ENGINE)');
if (!installed(engine)) fail(`${engine} is not installed`);
const epoch = String(Number(process.env.SOURCE_DATE_EPOCH ?? 0));

execFileSync(process.execPath, [join(ROOT, 'scripts', 'bundle.mjs'), '--out', out], {
  stdio: 'inherit',
  env: { ...process.env, SOURCE_DATE_EPOCH: epoch },
});

// podman's --timestamp fixes the image's creation time and every file's mtime in the layer, so equal
// bundles give an equal image ID. docker keeps the files' mtimes (SOURCE_DATE_EPOCH already) but
// stamps the image with the build time.
const reproducible = engine.endsWith('podman') ? ['--timestamp', epoch] : [];
const args = ['build', ...reproducible, '--file', join(ROOT, 'Dockerfile.local'), '--tag', tag, out];
process.stdout.write(`image: ${engine} ${args.join(' ')}\n`);
const built = spawnSync(engine, args, { stdio: 'inherit' });
if (built.status !== 0) fail(`${engine} build failed (${built.status ?? built.signal})`);
process.stdout.write(
  `image: ${tag} built with ${engine}; a customer image takes it with COPY --from=${tag} /opt/enclave-runtime /opt/enclave-runtime\n`,
);

function installed(command) {
  return spawnSync(command, ['--version'], { stdio: 'ignore' }).status === 0;
}

function fail(message) {
  process.stderr.write(`image: ${message}\n`);
  process.exit(1);
}
