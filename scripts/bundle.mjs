#!/usr/bin/env node
// `npm run bundle`: the self-contained runtime that a customer image gains with one COPY.
//
//   dist/enclave-runtime/
//     bin/enclave-runtime        static launcher (packaging/launcher.c): no libc or shell needed in the image
//     bin/node                   the Node binary that runs this script (or --node PATH)
//     lib/<loader>               Node's own ELF interpreter (ld-linux-x86-64.so.2 on x86_64)
//     lib/*.so*                  every shared library Node and the addon need, as ldd resolves them
//     lib/enclave-runtime.mjs    all of the runtime's JavaScript and its dependencies, one ESM file
//     lib/enclave_native.node    the vsock/NSM addon (build/Release)
//     lib/app-sandbox            static seccomp helper the customer command is exec'd through (src/native/app_sandbox.c)
//     lib/roots/aws-nitro-root-g1.pem
//
// Reproducible: no timestamps are written, every file's mtime is SOURCE_DATE_EPOCH (default 0),
// and modes are fixed. Options: --out DIR (default dist/enclave-runtime), --node PATH.
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  utimesSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { out: { type: 'string' }, node: { type: 'string' } } });
const out = resolve(values.out ?? join(ROOT, 'dist', 'enclave-runtime'));
const nodeBinary = realpathSync(values.node ?? process.execPath);
const addon = join(ROOT, 'build', 'Release', 'enclave_native.node');
const rootPem = join(ROOT, 'src', 'verify', 'roots', 'aws-nitro-root-g1.pem');
const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? 0);
const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));

for (const [what, path] of [
  ['the addon (run `npm install` or `npx node-gyp rebuild`)', addon],
  ['the AWS root', rootPem],
]) {
  try {
    statSync(path);
  } catch {
    fail(`missing ${what}: ${path}`);
  }
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'bin'), { recursive: true });
mkdirSync(join(out, 'lib', 'roots'), { recursive: true });

// One ESM file for the runtime and one for the ingress worker threads' entry (src/ingress/ingress-workers.ts
// starts it from beside the bundle). CommonJS dependencies call require() for Node built-ins, which an ESM
// bundle lacks: the banner gives them one. cbor-extract is cbor-x's optional native accelerator; left out,
// cbor-x falls back to its JavaScript decoder.
const bundled = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20.19',
  external: ['cbor-extract'],
  define: { __ENCLAVE_RUNTIME_VERSION__: JSON.stringify(version) },
  banner: {
    js: "import { createRequire as __enclaveCreateRequire } from 'node:module';\nconst require = __enclaveCreateRequire(import.meta.url);",
  },
  legalComments: 'eof',
  logLevel: 'warning',
};
await build({
  ...bundled,
  stdin: {
    contents: "import { main } from './src/cli.ts';\nprocess.exit(await main(process.argv.slice(2)));\n",
    resolveDir: ROOT,
    sourcefile: 'enclave-runtime-entry.ts',
    loader: 'ts',
  },
  outfile: join(out, 'lib', 'enclave-runtime.mjs'),
});
await build({
  ...bundled,
  entryPoints: [join(ROOT, 'src', 'ingress', 'ingress-worker.ts')],
  outfile: join(out, 'lib', 'ingress-worker.mjs'),
});

copyFileSync(nodeBinary, join(out, 'bin', 'node'));
copyFileSync(addon, join(out, 'lib', 'enclave_native.node'));
copyFileSync(rootPem, join(out, 'lib', 'roots', 'aws-nitro-root-g1.pem'));

const { loader, libraries } = sharedLibraries([nodeBinary, addon]);
for (const library of libraries) copyFileSync(library.path, join(out, 'lib', library.name));
const loaderName = basename(loader);
copyFileSync(loader, join(out, 'lib', loaderName));

execFileSync(
  process.env.CC ?? 'gcc',
  [
    '-static',
    '-Os',
    '-s',
    '-Wall',
    '-Wextra',
    '-Werror',
    `-DLOADER="${loaderName}"`,
    `-ffile-prefix-map=${ROOT}=.`,
    '-o',
    join(out, 'bin', 'enclave-runtime'),
    join(ROOT, 'packaging', 'launcher.c'),
  ],
  { stdio: 'inherit' },
);

// Static, like the launcher: the customer's image may have no libc, and Node's loader is not on its PATH.
execFileSync(
  process.env.CC ?? 'gcc',
  [
    '-static',
    '-O2',
    '-s',
    '-Wall',
    '-Wextra',
    '-Werror',
    `-ffile-prefix-map=${ROOT}=.`,
    '-o',
    join(out, 'lib', 'app-sandbox'),
    join(ROOT, 'src', 'native', 'app_sandbox.c'),
  ],
  { stdio: 'inherit' },
);

normalize(out);
const bytes = totalBytes(out);
process.stdout.write(
  `bundle: ${out} (${(bytes / 1024 / 1024).toFixed(1)} MiB, enclave-runtime ${version}, node ${nodeVersion()}, loader ${loaderName})\n`,
);

/** The ELF interpreter and the libraries `ldd` resolves for each binary (the vDSO has no file). */
function sharedLibraries(binaries) {
  let loader;
  const libraries = new Map();
  for (const binary of binaries) {
    const text = execFileSync('ldd', [binary], { encoding: 'utf8' });
    for (const line of text.split('\n')) {
      const linked = /^\s*(\S+) => (\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
      const interpreter = /^\s*(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
      if (line.includes('not found')) fail(`${binary}: ${line.trim()}`);
      if (linked) libraries.set(linked[1], { name: linked[1], path: realpathSync(linked[2]) });
      else if (interpreter) loader = interpreter[1];
    }
  }
  if (loader === undefined) fail(`ldd found no ELF interpreter for ${binaries[0]} (is it statically linked?)`);
  libraries.delete(basename(loader));
  return { loader, libraries: [...libraries.values()] };
}

/** Fixed modes and mtimes, so two builds of the same inputs are byte- and metadata-identical. */
function normalize(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      chmodSync(path, 0o755);
      normalize(path);
    } else {
      const executable =
        dir.endsWith('/bin') ||
        /\.so(\.\d+)*$/.test(entry.name) ||
        entry.name.endsWith('.node') ||
        entry.name === 'app-sandbox';
      chmodSync(path, executable ? 0o755 : 0o644);
    }
    utimesSync(path, epoch, epoch);
  }
  utimesSync(dir, epoch, epoch);
}

function totalBytes(dir) {
  let sum = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    sum += entry.isDirectory() ? totalBytes(path) : statSync(path).size;
  }
  return sum;
}

function nodeVersion() {
  return nodeBinary === realpathSync(process.execPath)
    ? process.version
    : execFileSync(nodeBinary, ['--version'], { encoding: 'utf8' }).trim();
}

function fail(message) {
  process.stderr.write(`bundle: ${message}\n`);
  process.exit(1);
}
