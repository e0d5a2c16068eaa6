import { readFileSync } from 'node:fs';

/** Set by esbuild's `define` in the single-file bundle, which has no package.json beside it. */
declare const __ENCLAVE_RUNTIME_VERSION__: string | undefined;

/** The package version: injected at bundle time, else read from package.json above dist/. */
export function version(): string {
  if (typeof __ENCLAVE_RUNTIME_VERSION__ === 'string') return __ENCLAVE_RUNTIME_VERSION__;
  const manifest = new URL('../../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version;
}
