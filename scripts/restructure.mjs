#!/usr/bin/env node
// One-off (issue 14): moves the sources into the layered layout and rewrites every path that
// points at them. Run once, from the repository root, on the tree where every branch is merged:
//
//   node scripts/restructure.mjs            do it (git mv + rewrites), then delete this script
//   node scripts/restructure.mjs --check    print what would change, change nothing
//
// It knows only the MOVES below; everything else is found: each relative specifier in a .ts/.mts/
// .mjs/.js file (import/export/import()/new URL(..., import.meta.url)) is resolved against the file
// that holds it, mapped, and made relative again from where that file ends up, so files added by
// other branches are rewritten too. Repository paths written as text (`src/bridge/native/addon.cc`
// in binding.gyp, `src/attestation/roots` in package.json, `dist/src/...`, `join(ROOT, 'src', ...)`
// segment lists) are mapped as well. Running it twice changes nothing the second time.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CHECK = process.argv.includes('--check');

/** old -> new; a key ending in '/' moves a whole folder (files other branches add to it included). */
export const MOVES = {
  // The network layer: addresses, transports, relaying, PROXY protocol, the vsock/unix socket wrappers.
  'src/bridge/address.ts': 'src/net/address.ts',
  'src/bridge/transport.ts': 'src/net/transport.ts',
  'src/bridge/relay.ts': 'src/net/relay.ts',
  'src/bridge/proxy-protocol.ts': 'src/net/proxy-protocol.ts',
  'src/bridge/native-socket.ts': 'src/net/native-socket.ts',
  'src/bridge/native-server.ts': 'src/net/native-server.ts',
  // The addon on its own: C++ sources, its loader and the reaper wrapper.
  'src/bridge/native/': 'src/native/',
  'src/bridge/native-binding.ts': 'src/native/native-binding.ts',
  'src/bridge/native-reaper.ts': 'src/native/native-reaper.ts',
  // Ingress as a feature.
  'src/bridge/ingress.ts': 'src/ingress/ingress.ts',
  'src/bridge/well-known-attestation.ts': 'src/ingress/well-known-attestation.ts',
  // Wire formats both the enclave and the host (or provisioner) speak.
  'src/egress/egress-header.ts': 'src/wire/egress-header.ts',
  'src/egress/dns-message.ts': 'src/wire/dns-message.ts',
  'src/egress/domain-name.ts': 'src/wire/domain-name.ts',
  'src/provisioner/protocol.ts': 'src/wire/provisioner-protocol.ts',
  // Verifying attestation (what a client does) apart from producing it (src/attestation: NSM, API).
  'src/attestation/verifier.ts': 'src/verify/verifier.ts',
  'src/attestation/document.ts': 'src/verify/document.ts',
  'src/attestation/document-encoding.ts': 'src/verify/document-encoding.ts',
  'src/attestation/cose-sign1.ts': 'src/verify/cose-sign1.ts',
  'src/attestation/certificate-chain.ts': 'src/verify/certificate-chain.ts',
  'src/attestation/certificate-binding.ts': 'src/verify/certificate-binding.ts',
  'src/attestation/root-store.ts': 'src/verify/root-store.ts',
  'src/attestation/attestation-error.ts': 'src/verify/attestation-error.ts',
  'src/attestation/roots/': 'src/verify/roots/',
  // Cross-cutting primitives.
  'src/errors.ts': 'src/core/errors.ts',
  'src/error-codes.ts': 'src/core/error-codes.ts',
  'src/log.ts': 'src/core/log.ts',
  'src/version.ts': 'src/core/version.ts',
  'src/lifecycle.ts': 'src/core/lifecycle.ts',
  'src/diagnostics.ts': 'src/core/diagnostics.ts',
  'src/backoff.ts': 'src/core/backoff.ts',
  'src/http-kit.ts': 'src/core/http-kit.ts',
  // Observation next to the metrics; the customer's command next to the app; the state dir next to config.
  'src/health.ts': 'src/metrics/health.ts',
  'src/http-endpoint.ts': 'src/metrics/http-endpoint.ts',
  'src/supervisor.ts': 'src/app/supervisor.ts',
  'src/state-dir.ts': 'src/config/state-dir.ts',
  // Packaging is not source of the runtime.
  'src/bundle/launcher.c': 'packaging/launcher.c',
};

/** Prose that names a folder the moves take apart: exact text -> its replacement (skipped when absent). */
const PROSE = {
  'README.md': [
    [
      '| bridge | `src/bridge/` | vsock <-> TCP for ingress (parent -> enclave -> app port), with our own N-API addon for AF_VSOCK |',
      '| ingress | `src/ingress/`, `src/net/` | vsock <-> TCP for ingress (parent -> enclave -> app port), PROXY protocol, GET /.well-known/attestation |\n' +
        '| native | `src/native/` | our own N-API addon: AF_VSOCK sockets, the NSM ioctl, SO_ORIGINAL_DST, hostname, interfaces, the reaper |',
    ],
    [
      '| attestation | `src/attestation/` | `/dev/nsm`, a simulated NSM, the app\'s API on 127.0.0.1:9999, and a verifier for clients |',
      '| attestation | `src/attestation/` | `/dev/nsm`, a simulated NSM, the app\'s API on 127.0.0.1:9999 |\n' +
        '| verify | `src/verify/` | the verifier for clients: COSE_Sign1, the document, the chain to the pinned AWS root |',
    ],
  ],
};

const CODE = /\.(ts|mts|mjs|js|cjs)$/;
const CODE_DIRS = ['src', 'test', 'bench', 'scripts', 'bin', 'examples'];
/** Files (outside code) whose text names repository paths. */
const TEXT_FILES = ['binding.gyp', 'package.json', 'Dockerfile.runtime', '.dockerignore', 'README.md', 'tsconfig.json', '.ci/run'];
const SKIP = [/^test\/fixtures\//, /^scripts\/restructure\.mjs$/];

function git(...args) {
  return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' });
}

const tracked = git('ls-files', '-z').split('\0').filter((f) => f !== '' && existsSync(join(ROOT, f)));
const trackedSet = new Set(tracked);

const sources = Object.keys(MOVES);
for (const target of Object.values(MOVES)) {
  if (sources.some((s) => target === s || (s.endsWith('/') && target.startsWith(s)))) throw new Error(`move chain at ${target}`);
}

/** Maps a repository-relative POSIX path (file or folder, no trailing slash) to its new place. */
function mapPath(path) {
  if (Object.hasOwn(MOVES, path) && !path.endsWith('/')) return MOVES[path];
  let best;
  for (const source of sources) {
    if (!source.endsWith('/')) continue;
    const bare = source.slice(0, -1);
    if ((path === bare || path.startsWith(source)) && (best === undefined || source.length > best.length)) best = source;
  }
  if (best === undefined) return path;
  const target = MOVES[best].slice(0, -1);
  return path === best.slice(0, -1) ? target : target + path.slice(best.length - 1);
}

/** Like mapPath, for a path as written in code: `x.js` stands for `x.ts` when only that exists. */
function mapWritten(path) {
  const direct = mapPath(path);
  if (direct !== path) return direct;
  for (const [js, ts] of [['.js', '.ts'], ['.mjs', '.mts']]) {
    if (path.endsWith(js)) {
      const source = path.slice(0, -js.length) + ts;
      const mapped = mapPath(source);
      if (mapped !== source) return mapped.slice(0, -ts.length) + js;
    }
  }
  return path;
}

function relativeSpecifier(fromFile, toPath) {
  let spec = posix.relative(posix.dirname(fromFile), toPath);
  if (!spec.startsWith('.')) spec = `./${spec}`;
  return spec;
}

/** `'./x.js'`, `"../y/z.js"`: every relative string literal resolving to something that moves. */
function rewriteSpecifiers(file, text) {
  const newFile = mapPath(file);
  return text.replace(/(['"`])(\.\.?\/[^'"`\n$]*)\1/g, (whole, quote, spec) => {
    // `new URL('../../package.json', import.meta.url)` is written for the compiled file in dist/:
    // a path that leaves the repository from the source file is resolved from there.
    let [from, to] = [file, newFile];
    let target = posix.normalize(posix.join(posix.dirname(from), spec));
    if (target.startsWith('..')) {
      [from, to] = [`dist/${file}`, `dist/${newFile}`];
      target = posix.normalize(posix.join(posix.dirname(from), spec));
      if (target.startsWith('..')) return whole;
    }
    const trailing = spec.endsWith('/') ? '/' : '';
    const mapped = mapWritten(target.replace(/\/$/, ''));
    if (mapped === target.replace(/\/$/, '') && to === from) return whole;
    let next = relativeSpecifier(to, mapped) + trailing;
    if (spec === './' || spec === '../') next = next.endsWith('/') ? next : `${next}/`;
    return next === spec ? whole : `${quote}${next}${quote}`;
  });
}

/** `src/bridge/native/addon.cc`, `dist/src/errors.js`: repository paths written as text. */
function rewriteRepoPaths(text) {
  return text.replace(/(?<![\w./-])((?:dist\/)?)(src\/[A-Za-z0-9_./-]*[A-Za-z0-9_])/g, (whole, dist, path) => {
    const mapped = mapWritten(path);
    if (mapped === path) return whole;
    // dist/ holds compiled code only: a moved non-source (packaging/launcher.c) has no dist/ copy.
    return `${dist && mapped.startsWith('src/') ? dist : ''}${mapped}`;
  });
}

/** `join(ROOT, 'src', 'attestation', 'roots', FILE)`: quoted path segments in a row. */
function rewriteSegments(text) {
  return text.replace(/(['"])(?:dist\1\s*,\s*\1)?src\1(?:\s*,\s*\1[A-Za-z0-9_.-]+\1)+/g, (whole) => {
    const quote = whole[0];
    const parts = [...whole.matchAll(/(['"])([A-Za-z0-9_.-]+)\1/g)].map((m) => m[2]);
    const dist = parts[0] === 'dist';
    const path = parts.slice(dist ? 1 : 0).join('/');
    const mapped = mapWritten(path);
    if (mapped === path) return whole;
    const segments = [...(dist && mapped.startsWith('src/') ? ['dist'] : []), ...mapped.split('/')];
    return segments.map((s) => `${quote}${s}${quote}`).join(', ');
  });
}

/** Where errorCode() is declared, in the layout the tree has before the moves (after them, on a second run). */
const ERRORS_MODULE = trackedSet.has('src/errors.ts') ? 'src/errors.ts' : mapPath('src/errors.ts');
const CODE_CAST = /\(([A-Za-z_$][\w$.]*) as (?:NodeJS\.ErrnoException|\{ code\?: (?:string|unknown) \})\)\.code\b/g;

/** `(error as NodeJS.ErrnoException).code` and `(error as { code?: string }).code` become `errorCode(error)`. */
function useErrorCode(file, text) {
  if (file === ERRORS_MODULE || !/^(src|test|bench)\//.test(file) || !file.endsWith('.ts')) return text;
  // A file with an errorCode of its own keeps its casts.
  if (/\b(?:function|const|let|var|class)\s+errorCode\b/.test(text)) return text;
  CODE_CAST.lastIndex = 0;
  if (!CODE_CAST.test(text)) return text;
  let next = text.replace(CODE_CAST, 'errorCode($1)');
  const spec = relativeSpecifier(file, ERRORS_MODULE.replace(/\.ts$/, '.js'));
  const existing = [...next.matchAll(/^import \{([^}]*)\} from '([^']+)';$/gm)].find(
    (m) => posix.normalize(posix.join(posix.dirname(file), m[2])) === ERRORS_MODULE.replace(/\.ts$/, '.js'),
  );
  if (existing) {
    const names = existing[1].split(',').map((n) => n.trim()).filter(Boolean);
    if (!names.includes('errorCode')) {
      const line = `import { ${[...names, 'errorCode'].sort((a, b) => a.replace(/^type /, '').localeCompare(b.replace(/^type /, ''))).join(', ')} } from '${existing[2]}';`;
      next = next.replace(existing[0], line);
    }
  } else if (!/\berrorCode\b[^(]*\bfrom\b/.test(next)) {
    const imports = [...next.matchAll(/^import\b[^;]*;$/gm)];
    const at = imports.length > 0 ? imports.at(-1).index + imports.at(-1)[0].length : 0;
    next = `${next.slice(0, at)}\nimport { errorCode } from '${spec}';${next.slice(at)}`;
  }
  return next;
}

function inScope(file) {
  if (SKIP.some((re) => re.test(file))) return false;
  if (TEXT_FILES.includes(file)) return true;
  return CODE.test(file) && CODE_DIRS.includes(file.split('/')[0]);
}

// 1. Rewrite contents while every file is still where its specifiers say it is.
const changed = [];
for (const file of tracked) {
  if (!inScope(file)) continue;
  const before = readFileSync(join(ROOT, file), 'utf8');
  let after = before;
  if (CODE.test(file)) after = rewriteSegments(rewriteSpecifiers(file, useErrorCode(file, after)));
  after = rewriteRepoPaths(after);
  for (const [from, to] of PROSE[file] ?? []) after = after.replace(from, to);
  if (file === 'Dockerfile.runtime' && mapPath('src/bundle/launcher.c').startsWith('packaging/')) {
    // The launcher is no longer under src/: the build stage copies packaging/ too.
    if (!/^COPY packaging \.\/packaging$/m.test(after)) after = after.replace(/^COPY src \.\/src$/m, '$&\nCOPY packaging ./packaging');
  }
  if (after !== before) {
    changed.push(file);
    if (!CHECK) writeFileSync(join(ROOT, file), after);
  }
}

// 2. Move.
const moves = [];
for (const file of tracked) {
  const target = mapPath(file);
  if (target === file) continue;
  if (trackedSet.has(target) || existsSync(join(ROOT, target))) throw new Error(`${file} -> ${target}: the target exists`);
  moves.push([file, target]);
}
for (const [from, to] of moves) {
  if (CHECK) continue;
  mkdirSync(dirname(join(ROOT, to)), { recursive: true });
  git('mv', from, to);
}
// Folders the moves emptied (git keeps no folders, but a checkout would show them).
for (const [from] of moves) {
  for (let dir = dirname(join(ROOT, from)); dir !== ROOT && !CHECK; dir = dirname(dir)) {
    if (!existsSync(dir) || readdirSync(dir).length > 0) break;
    rmdirSync(dir);
  }
}

// 3. Report, and what was left behind in folders that were taken apart.
const after = git('ls-files', '-z').split('\0').filter(Boolean);
const leftovers = after.filter(
  (f) => (f.startsWith('src/bridge/') || f.startsWith('src/bundle/') || /^src\/[^/]+\.ts$/.test(f)) && !['src/cli.ts', 'src/runtime.ts'].includes(f),
);
console.log(`${CHECK ? 'would move' : 'moved'} ${moves.length} files, ${CHECK ? 'would rewrite' : 'rewrote'} ${changed.length} files`);
for (const [from, to] of moves) console.log(`  ${from} -> ${to}`);
for (const file of changed) console.log(`  rewrote ${file}`);
if (leftovers.length > 0) {
  console.log('not in MOVES (left where they are, their imports rewritten; place them by hand if they belong elsewhere):');
  for (const file of leftovers) console.log(`  ${file}`);
}
if (!CHECK && moves.length === 0 && changed.length === 0) console.log('nothing to do: already restructured');
