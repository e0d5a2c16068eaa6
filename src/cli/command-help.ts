/**
 * `--help` for the long-running commands. The addresses shown are the schema's defaults for the
 * command's mode, read from the schema itself, so the help cannot drift from what a start with no
 * config file would really listen on.
 */
import { formatAddress } from '../net/address.js';
import { validateConfig } from '../config/validate.js';
import type { CommandIo } from './io.js';

export type ServiceCommand = 'run' | 'dev' | 'host' | 'provisioner';

/** Whether argv asks for help: `--help` or `-h` before any `--` (what follows `--` is the app's). */
export function wantsHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).some((arg) => arg === '--help' || arg === '-h');
}

/** Writes the command's help to stdout; the caller exits 0. */
export function printHelp(command: ServiceCommand, io: CommandIo): number {
  io.stdout.write(helpText(command));
  return 0;
}

export function helpText(command: ServiceCommand): string {
  switch (command) {
    case 'run':
    case 'dev':
      return serveHelp(command);
    case 'host':
      return hostHelp();
    case 'provisioner':
      return provisionerHelp();
  }
}

function serveHelp(mode: 'run' | 'dev'): string {
  const c = validateConfig({}, mode, 'defaults');
  const at = formatAddress;
  const intro =
    mode === 'run'
      ? `Inside the enclave: the real NSM (${c.attestation.device}), vsock transport. Starts the data plane,
then CMD (when given after --), and supervises CMD under [app]'s restart policy.`
      : `On your machine: tcp transport, a simulated NSM and the runtime's own CA (in --state-dir),
otherwise the same as run. With [egress] enabled and egress.relay left at its default, dev also runs
the host side's egress and DNS relays in-process on loopback (see host --help), so egress works with
no second command.`;
  return `usage: enclave-runtime ${mode} [--config PATH]${mode === 'dev' ? ' [--state-dir DIR]' : ''} [-- CMD ARGS...]

${intro}
SIGTERM/SIGINT stop it: ingress drains and CMD gets SIGTERM, then SIGKILL, within
runtime.shutdown_grace_ms (default ${c.runtime.shutdownGraceMs} ms). Exit status: CMD's, else 0; 1 when it
cannot start; 2 for a usage or config error.

options:
  --config PATH       enclave.toml (default: every key at its default; see enclave.toml.example)
${mode === 'dev' ? `  --state-dir DIR     keys, CA and simulated-NSM chain (default ${c.runtime.stateDir})\n` : ''}  -h, --help          this text

default addresses (${mode}):
  ingress             ${at(c.ingress.listen)} -> the app at ${at(c.ingress.app)}
  internal API        ${at(c.attestation.apiListen)}  (GET /attestation-doc, GET /health)
  health, for parent  ${at(c.runtime.healthListen)}
  metrics             ${at(c.metrics.listen)}
  egress, if enabled  DNS ${at(c.egress.dnsListen)}, transparent ${at(c.egress.transparentListen)}, proxy ${at(c.egress.proxyListen)}
                      host relays: egress ${at(c.egress.relay)}, DNS ${at(c.egress.dnsRelay)}

examples:
${
  mode === 'run'
    ? `  enclave-runtime run --config /etc/enclave-runtime/enclave.toml -- /app/server --port 8008
  enclave-runtime run -- python3 -m http.server 8008 --bind 127.0.0.1`
    : `  enclave-runtime dev --config enclave.toml.example -- node examples/demo-app.js
  curl --cacert .enclave-runtime/ca.pem https://localhost:${c.ingress.listen.transport === 'tcp' ? c.ingress.listen.port : 8443}/hello
  curl -s 'http://127.0.0.1:${c.attestation.apiListen.port}/attestation-doc?nonce=00ff' -H 'accept: application/json'`
}
`;
}

function hostHelp(): string {
  const c = validateConfig({}, 'host', 'defaults');
  const at = formatAddress;
  return `usage: enclave-runtime host [--config PATH]

On the parent instance: clients' TCP -> the enclave's ingress, the enclave's egress -> the internet
(egress.allow re-checked, private addresses refused unless host.allow_private), and the enclave's
DNS questions -> the upstream resolver (host.upstream_dns; "system" = /etc/resolv.conf).
SIGTERM/SIGINT stop it, draining ingress for runtime.shutdown_grace_ms. Exit status: 0 after a clean
stop, 1 when it cannot start, 2 for a usage or config error.

options:
  --config PATH       enclave.toml (the same file as the enclave's: [host] and [egress] are read)
  -h, --help          this text

default addresses (host):
  ingress             ${at(c.host.ingressListen)} -> the enclave at ${at(c.host.enclaveIngress)}
  egress relay        ${at(c.host.egressListen)}  (the enclave's egress.relay connects here)
  DNS relay           ${at(c.host.dnsListen)}  (the enclave's egress.dns_relay connects here)

examples:
  enclave-runtime host --config /etc/enclave-runtime/enclave.toml
  sudo systemctl start enclave-runtime-host   (a unit file is in README.md, "Deploy on AWS Nitro Enclaves")
`;
}

function provisionerHelp(): string {
  const c = validateConfig({}, 'host', 'defaults');
  return `usage: enclave-runtime provisioner [--config PATH]

The reference provisioner: signs the intermediate CA of each enclave whose attestation document
verifies against provisioner.root and matches one set of provisioner.allowed_pcrs (required).
Enclaves with tls.source = "provisioner" reach it through the parent. Exit status: 0 after a clean
stop, 1 when it cannot start, 2 for a usage or config error (an empty allowed_pcrs included).

options:
  --config PATH       enclave.toml with a [provisioner] table
  -h, --help          this text

defaults:
  listen              ${formatAddress(c.provisioner.listen)}
  ca_dir              ${c.provisioner.caDir}  (ca-key.pem 0600, ca.pem)
  root                ${c.provisioner.root}  (the bundled AWS Nitro root G1)

examples:
  enclave-runtime provisioner --config provisioner.toml
    with provisioner.toml:  [provisioner]
                            allowed_pcrs = [{ 0 = "<PCR0 hex>", 1 = "<PCR1 hex>", 2 = "<PCR2 hex>" }]
    (the PCRs of your image, from: nitro-cli describe-eif --eif-path app.eif)
`;
}
