// Bundles enclave-runtime/browser (src/browser/index.ts) into one ESM file with no Node built-ins:
// platform "browser" makes esbuild refuse any node: import that slips into the shared modules.
// The AWS Nitro root G1 is built in, after checking it against AWS's published fingerprint.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { AWS_NITRO_ROOT_G1_SHA256 } = await import(join(root, 'dist/src/verify/root-store.js'));
const pem = readFileSync(join(root, 'src/verify/roots/aws-nitro-root-g1.pem'), 'utf8');
const body = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/.exec(pem)?.[1] ?? '';
const fingerprint = createHash('sha256')
  .update(Buffer.from(body.replace(/\s+/g, ''), 'base64'))
  .digest('hex')
  .toUpperCase();
if (fingerprint !== AWS_NITRO_ROOT_G1_SHA256)
  throw new Error(`the bundled AWS root has SHA-256 ${fingerprint}, not ${AWS_NITRO_ROOT_G1_SHA256}`);

await build({
  absWorkingDir: root,
  entryPoints: ['src/browser/index.ts'],
  outfile: 'dist/browser/enclave-runtime-browser.js',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  minify: true,
  sourcemap: true,
  legalComments: 'eof',
  define: { __ENCLAVE_RUNTIME_AWS_NITRO_ROOT_PEM__: JSON.stringify(pem) },
  logLevel: 'warning',
});
