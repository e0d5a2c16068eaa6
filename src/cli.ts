import { processIo, type CommandIo } from './cli/io.js';
import { version } from './core/version.js';

const USAGE = `usage: enclave-runtime <command> [options]

commands:
  run [--config PATH] [-- CMD ARGS...]        inside the enclave: real NSM, vsock transport
  dev [--config PATH] [--state-dir DIR] [-- CMD ARGS...]
                                              local: tcp transport, simulated NSM, own CA
  host [--config PATH]                        on the parent: ingress -> enclave, egress and DNS relays
  provisioner [--config PATH]                 sign attested enclaves' intermediate CAs (tls.source = "provisioner")
  attest verify FILE|- [options]              verify an attestation document
  attest connect HOST[:PORT] [options]        verify the attestation in a server's certificate
  --version                                   print the version

Every command takes --help: enclave-runtime dev --help, enclave-runtime attest connect --help, ...

examples:
  enclave-runtime dev --config enclave.toml.example -- node examples/demo-app.js
  enclave-runtime attest connect 127.0.0.1:8443 --servername localhost --fresh-nonce --root .enclave-runtime/sim-nsm-root.pem

See README.md for every option of enclave.toml and of attest.
`;

const ATTEST_USAGE = `usage: enclave-runtime attest <verify|connect> [options]

  attest verify FILE|- [options]        verify an attestation document (CBOR, base64 or hex) or a certificate
  attest connect HOST[:PORT] [options]  open TLS to HOST and verify the attestation in its certificate

Run "enclave-runtime attest verify --help" or "enclave-runtime attest connect --help" for the options.
`;

/** Dispatches a command line; resolves with the process exit code. */
export async function main(argv: string[], io: CommandIo = processIo()): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'run':
    case 'dev': {
      const { serveCommand } = await import('./cli/serve-command.js');
      return serveCommand(command, rest, io);
    }
    case 'host': {
      const { hostCommand } = await import('./cli/host-command.js');
      return hostCommand(rest, io);
    }
    case 'provisioner': {
      const { provisionerCommand } = await import('./cli/provisioner-command.js');
      return provisionerCommand(rest, io);
    }
    case 'attest':
      return attest(rest, io);
    case '--version':
    case '-V':
    case 'version':
      io.stdout.write(`enclave-runtime ${version()}\n`);
      return 0;
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      io.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      io.stderr.write(`enclave-runtime: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

async function attest(argv: string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'verify': {
      const { attestVerifyCommand } = await import('./cli/attest-verify.js');
      return attestVerifyCommand(rest, io);
    }
    case 'connect': {
      const { attestConnectCommand } = await import('./cli/attest-connect.js');
      return attestConnectCommand(rest, io);
    }
    case '--help':
    case '-h':
    case 'help':
      io.stdout.write(ATTEST_USAGE);
      return 0;
    default:
      io.stderr.write(
        `enclave-runtime attest: expected "verify" or "connect", got ${sub === undefined ? 'nothing' : `"${sub}"`}\n\n${ATTEST_USAGE}`,
      );
      return 2;
  }
}
