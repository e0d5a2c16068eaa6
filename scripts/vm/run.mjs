#!/usr/bin/env node
// `npm run test:vm`: the node:test files of test/vm/ inside a QEMU guest with a real Linux kernel, the emulated
// Nitro Secure Module (/dev/nsm) and vsock loopback (CID 1).
//
//   host                                   guest (TCG, 1 vCPU, only lo)
//   prepare.sh: QEMU + kernel + busybox    /init (busybox): modules, mounts, then exec
//   bundle.mjs: node + libs + runtime  ->  enclave-runtime run (PID 1, attestation.mode = "nsm")
//   9p shares: the clone (ro), bundle      └─ app: node --test dist/test/vm/*.test.js -> ttyS1
//   ttyS1 -> results file, printed live    then `reboot -f`; -no-reboot makes QEMU exit
//
// The guest's TAP output is printed as it arrives; the exit code is the guest's node --test exit code (1 when the
// guest never reported one). A watchdog kills QEMU after VM_TIMEOUT_S seconds (default 900). Temporary files go to
// a fresh directory under /tmp, removed at the end. Options: VM_TEST_FILES="a.test.js b.test.js" (names within
// dist/test/vm) runs only those.
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const HERE = join(ROOT, 'scripts', 'vm');
const TIMEOUT_S = Number(process.env.VM_TIMEOUT_S ?? 900);
const RESULT_MARK = 'VM-RESULT ';
const started = Date.now();

function say(text) {
  process.stderr.write(`vm: ${text}\n`);
}

function fail(text) {
  say(text);
  process.exit(1);
}

if (process.getuid?.() !== 0) fail('needs root (apt-get for QEMU, the kernel and busybox)');
if (!Number.isFinite(TIMEOUT_S) || TIMEOUT_S <= 0)
  fail(`VM_TIMEOUT_S must be a positive number of seconds, got ${process.env.VM_TIMEOUT_S}`);

const testDir = join(ROOT, 'dist', 'test', 'vm');
const wanted = (process.env.VM_TEST_FILES ?? '').split(/\s+/).filter(Boolean);
const testFiles =
  wanted.length > 0
    ? wanted
    : existsSync(testDir)
      ? readdirSync(testDir)
          .filter((name) => name.endsWith('.test.js'))
          .sort()
      : [];
if (testFiles.length === 0) fail(`no test files in ${testDir} (run \`npm run build\` first)`);
for (const name of testFiles) {
  if (!/^[\w.-]+\.test\.js$/.test(name) || !existsSync(join(testDir, name))) fail(`no test file ${name} in ${testDir}`);
}

const tools = Object.fromEntries(
  execFileSync('bash', [join(HERE, 'prepare.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    .trim()
    .split('\n')
    .map((line) => line.split(/=(.*)/s).slice(0, 2)),
);
say(`tools ready after ${seconds()} s`);

const work = mkdtempSync(join(tmpdir(), 'enclave-vm-'));
let qemu;
let watchdog;
const cleanup = () => {
  clearTimeout(watchdog);
  if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
};
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    cleanup();
    process.exit(130);
  });
}

try {
  process.exitCode = await boot();
} catch (error) {
  say(error instanceof Error ? error.message : String(error));
  process.exitCode = 1;
} finally {
  cleanup();
}

async function boot() {
  // The runtime the guest runs as PID 1 is the self-contained bundle, as in a customer image.
  const bundle = join(work, 'bundle');
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'bundle.mjs'), '--out', bundle], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });

  const initrd = join(work, 'initrd.cpio');
  buildInitramfs(join(work, 'initramfs'), initrd);

  const console = join(work, 'console.log');
  const results = join(work, 'results.log');
  writeFileSync(results, '');
  const args = [
    '-L',
    tools.FIRMWARE,
    '-accel',
    'tcg',
    '-cpu',
    'max',
    '-m',
    '1024',
    '-smp',
    '1',
    '-display',
    'none',
    '-vga',
    'none',
    '-monitor',
    'none',
    '-no-reboot',
    '-nic',
    'none',
    '-device',
    'virtio-nsm-pci',
    '-device',
    'virtio-rng-pci',
    '-kernel',
    tools.KERNEL,
    '-initrd',
    initrd,
    // no_timer_check: on a loaded host, TCG can be too slow for the kernel's IO-APIC timer check, which then panics.
    '-append',
    'console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check',
    '-serial',
    `file:${console}`,
    '-serial',
    `file:${results}`,
    '-virtfs',
    `local,path=${ROOT},mount_tag=repo,security_model=none,readonly=on`,
    '-virtfs',
    `local,path=${bundle},mount_tag=bundle,security_model=none,readonly=on`,
  ];
  say(`booting (${testFiles.length} test files; watchdog ${TIMEOUT_S} s)`);
  qemu = spawn(tools.QEMU, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise((resolve) => qemu.once('exit', (code, signal) => resolve({ code, signal })));
  let timedOut = false;
  watchdog = setTimeout(() => {
    timedOut = true;
    qemu.kill('SIGKILL');
  }, TIMEOUT_S * 1000);

  // Print the guest's results as they arrive, without the serial line's carriage returns.
  const reader = openSync(results, 'r');
  let offset = 0;
  let output = '';
  const pump = () => {
    const buffer = Buffer.alloc(65536);
    for (;;) {
      const n = readSync(reader, buffer, 0, buffer.length, offset);
      if (n <= 0) return;
      offset += n;
      const text = buffer.subarray(0, n).toString('utf8').replaceAll('\r', '');
      output += text;
      process.stdout.write(text.replace(new RegExp(`^${RESULT_MARK}.*\\n?`, 'm'), ''));
    }
  };
  const poller = setInterval(pump, 200);
  const { code, signal } = await exited;
  clearInterval(poller);
  pump();
  closeSync(reader);

  const marked = output.match(new RegExp(`^${RESULT_MARK}(\\d+)`, 'm'));
  const took = `${seconds()} s in all`;
  if (marked) {
    const status = Number(marked[1]);
    say(`guest tests ${status === 0 ? 'passed' : `failed (node --test exited ${status})`}; ${took}`);
    if (status !== 0) printConsoleTail(console);
    return status === 0 ? 0 : 1;
  }
  say(
    timedOut
      ? `the guest did not finish within ${TIMEOUT_S} s; QEMU killed`
      : `QEMU exited (${signal ?? code}) before the guest reported a result`,
  );
  printConsoleTail(console);
  return 1;
}

function buildInitramfs(dir, out) {
  for (const sub of [
    'bin',
    'dev',
    'proc',
    'sys',
    'tmp',
    'etc',
    'lib',
    'lib64',
    'usr/bin',
    'modules',
    'vm',
    'opt/bundle',
    'run',
  ]) {
    mkdirSync(join(dir, sub), { recursive: true });
  }
  copyFileSync(tools.BUSYBOX, join(dir, 'bin', 'busybox'));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  for (const name of readFileSync(join(tools.MODULES, 'order'), 'utf8').split('\n').filter(Boolean)) {
    copyFileSync(join(tools.MODULES, `${name}.ko`), join(dir, 'modules', `${name}.ko`));
  }
  copyFileSync(join(tools.MODULES, 'order'), join(dir, 'modules', 'order'));
  for (const name of ['init.sh', 'app.sh']) {
    copyFileSync(join(HERE, 'guest', name), join(dir, name === 'init.sh' ? 'init' : join('vm', name)));
  }
  chmodSync(join(dir, 'init'), 0o755);
  copyFileSync(join(ROOT, 'test', 'vm', 'enclave-vm.toml'), join(dir, 'vm', 'enclave.toml'));
  writeFileSync(join(dir, 'vm', 'env'), `REPO='${ROOT}'\nTEST_FILES='${testFiles.join(' ')}'\n`);
  writeFileSync(join(dir, 'etc', 'hosts'), '127.0.0.1 localhost internet.test\n');
  writeFileSync(
    join(dir, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n',
  );
  writeFileSync(join(dir, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  // An uncompressed cpio: the kernel reads it as is, which under TCG beats decompressing.
  execFileSync('sh', ['-c', `cd "${dir}" && find . | "${tools.BUSYBOX}" cpio -o -H newc > "${out}" 2>/dev/null`]);
  statSync(out);
}

function printConsoleTail(path) {
  if (!existsSync(path)) return;
  const lines = readFileSync(path, 'utf8').replaceAll('\r', '').split('\n');
  say(`the guest's console (last ${Math.min(lines.length, 80)} lines):`);
  process.stderr.write(`${lines.slice(-80).join('\n')}\n`);
}

function seconds() {
  return ((Date.now() - started) / 1000).toFixed(1);
}
