import { isIP } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { AttestationError } from '../verify/attestation-error.js';
import { attestationDocumentToJson, isDebugDocument } from '../verify/document.js';
import type { VerifiedAttestation } from '../verify/verifier.js';
import { ConfigError, errorCode, RuntimeError } from '../core/errors.js';
import {
  formatNonceServerName,
  generateSniNonce,
  isCaseStableNonce,
  type SniNonceEncoding,
} from '../tls/nonce-label.js';
import { freshNonceBytes, nonceSentInSni, peerCertificateDer, verifyPeerAttestation } from '../tls/attested-client.js';
import { processIo, type CommandIo } from './io.js';
import { parseVerifyOptions } from './attest-verify.js';

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const MAX_CONNECT_TIMEOUT_MS = 10 * 60_000;
const DEFAULT_PORT = 443;

const USAGE = `usage: enclave-runtime attest connect HOST[:PORT] [options]

Opens TLS to HOST (port 443 by default), takes the attestation document out of the server's
certificate (the first label of its longest DNS name) and verifies it, including that its
user_data is the certificate's own public key. Trust comes from the attestation alone: the
certificate chain and host name are not checked.

  --servername NAME   SNI and base host name (default: HOST, unless it is an IP address)
  --fresh-nonce       send a random nonce in SNI (<label>.attest.<servername>) and require it in the document
  --sni-nonce-encoding hex|base64
                      how the server reads the nonce label (its tls.sni_nonce_encoding; default hex).
                      base64 nonces are drawn so their label has no capitals: DNS clients lowercase SNI
  --timeout MS        connect and handshake time limit (default ${DEFAULT_CONNECT_TIMEOUT_MS})
  --root PEM_FILE     trust this root instead of the bundled AWS Nitro root G1
  --at TIME           verification time: ISO-8601 or unix seconds
  --pcr N=HEX         expected PCR value; repeatable, all must match
  --pcr-set FILE      JSON file of accepted PCR sets; repeatable
  --nonce HEX         expected nonce (sent in SNI as well)
  --user-data HEX     expected user_data
  --public-key HEX    expected public_key
  --allow-debug       accept debug-mode enclaves (PCR0/1/2 all zero)
  --json              print the decoded document as JSON on stdout

exit status: 0 valid, 1 invalid or unreachable (the reason on stderr), 2 usage error

examples:
  enclave-runtime attest connect 127.0.0.1:8443 --servername localhost --fresh-nonce --root .enclave-runtime/sim-nsm-root.pem
  enclave-runtime attest connect app.example.com --fresh-nonce --pcr 0=<PCR0 hex> --pcr 1=<PCR1 hex> --pcr 2=<PCR2 hex>
`;

const CONNECT_OPTIONS = {
  servername: { type: 'string' },
  'fresh-nonce': { type: 'boolean' },
  'sni-nonce-encoding': { type: 'string' },
  timeout: { type: 'string' },
} as const;

/** Where to connect and what to send, from HOST[:PORT] and the options. */
interface ConnectTarget {
  host: string;
  port: number;
  /** The SNI to send; undefined for an IP address without --servername. */
  servername: string | undefined;
  nonce: Uint8Array | undefined;
  timeoutMs: number;
}

/** `enclave-runtime attest connect HOST[:PORT] [options]`; resolves with the exit code (0 valid, 1 invalid, 2 usage). */
export async function attestConnectCommand(argv: string[], io: CommandIo = processIo()): Promise<number> {
  let args;
  let target: ConnectTarget;
  try {
    args = parseVerifyOptions(argv, CONNECT_OPTIONS, 'attest connect');
    if (args.help) {
      io.stdout.write(USAGE);
      return 0;
    }
    target = connectTarget(args.positionals, args.values, args.verify.nonce);
  } catch (error) {
    if (error instanceof ConfigError) return usageError(io, error.problems);
    throw error;
  }

  let socket: TLSSocket | undefined;
  try {
    socket = await openTls(target);
    const verified = verifyPeerAttestation(peerCertificateDer(socket), {
      ...args.verify,
      ...(target.nonce ? { nonce: target.nonce } : {}),
    });
    return valid(io, args.json, verified, target);
  } catch (error) {
    if (error instanceof AttestationError) {
      io.stderr.write(`invalid: ${error.code}: ${oneLine(error.message)}\n`);
      if (args.json)
        io.stdout.write(
          `${JSON.stringify({ valid: false, error: { code: error.code, message: error.message } }, null, 2)}\n`,
        );
      return 1;
    }
    const code = errorCode(error);
    io.stderr.write(`error: ${code ? `${code}: ` : ''}${oneLine((error as Error).message)}\n`);
    return 1;
  } finally {
    socket?.destroy();
  }
}

function connectTarget(
  positionals: readonly string[],
  values: Record<string, unknown>,
  nonceOption: Uint8Array | undefined,
): ConnectTarget {
  const problems: string[] = [];
  if (positionals.length !== 1) {
    throw new ConfigError(
      [
        positionals.length === 0
          ? 'expected HOST[:PORT]'
          : `expected one HOST[:PORT], got ${positionals.length}: ${positionals.join(' ')}`,
      ],
      'attest connect',
    );
  }
  const address = parseHostPort(positionals[0]!);
  if (typeof address === 'string') problems.push(address);

  const servernameOption = typeof values['servername'] === 'string' ? values['servername'] : undefined;
  if (servernameOption !== undefined && !/^[A-Za-z0-9.-]{1,253}$/.test(servernameOption)) {
    problems.push(`--servername ${JSON.stringify(servernameOption.slice(0, 64))}: expected a DNS name`);
  }
  const fresh = values['fresh-nonce'] === true;
  if (fresh && nonceOption !== undefined) problems.push('--fresh-nonce and --nonce both choose the nonce; give one');

  let timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS;
  if (typeof values['timeout'] === 'string') {
    const n = Number(values['timeout']);
    if (!Number.isInteger(n) || n < 1 || n > MAX_CONNECT_TIMEOUT_MS)
      problems.push(
        `--timeout ${JSON.stringify(values['timeout'])}: expected milliseconds from 1 to ${MAX_CONNECT_TIMEOUT_MS}`,
      );
    else timeoutMs = n;
  }
  const encodingOption = values['sni-nonce-encoding'];
  let encoding: SniNonceEncoding = 'hex';
  if (encodingOption === 'base64' || encodingOption === 'hex') encoding = encodingOption;
  else if (encodingOption !== undefined)
    problems.push(
      `--sni-nonce-encoding ${JSON.stringify(String(encodingOption).slice(0, 32))}: expected hex or base64`,
    );
  if (nonceOption !== undefined && nonceOption.byteLength > 0 && !isCaseStableNonce(nonceOption, encoding)) {
    problems.push(
      `--nonce: its base64 label ${JSON.stringify(Buffer.from(nonceOption).toString('base64url').slice(0, 64))} has capitals or "_", which DNS clients may lowercase or refuse, so the server could attest other bytes; choose a nonce whose base64url form is [a-z0-9-] only, or use --sni-nonce-encoding hex`,
    );
  }
  if (problems.length > 0 || typeof address === 'string') throw new ConfigError(problems, 'attest connect');

  let nonce = fresh ? generateSniNonce(encoding, freshNonceBytes(encoding)) : nonceOption;
  const baseHost = servernameOption ?? (isIP(address.host) ? undefined : address.host);
  let servername = baseHost;
  if (nonce !== undefined) {
    if (nonce.byteLength === 0)
      throw new ConfigError(['--nonce: an empty nonce cannot be sent in SNI'], 'attest connect');
    servername = formatNonceServerName(nonce, baseHost ?? address.host, encoding);
    // The document must carry what the server reads from the SNI.
    nonce = nonceSentInSni(servername, nonce, encoding);
  }
  return { host: address.host, port: address.port, servername, nonce, timeoutMs };
}

/** HOST, HOST:PORT, [IPv6] or [IPv6]:PORT; a bare IPv6 address has no port. */
function parseHostPort(text: string): { host: string; port: number } | string {
  let host = text;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracketed) {
    host = bracketed[1]!;
    portText = bracketed[2];
  } else if (isIP(text) !== 6) {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) {
      host = text.slice(0, colon);
      portText = text.slice(colon + 1);
    }
  }
  if (host.length === 0 || host.length > 253 || (isIP(host) === 0 && !/^[A-Za-z0-9.-]+$/.test(host)))
    return `${JSON.stringify(text.slice(0, 64))}: expected HOST[:PORT]`;
  if (portText === undefined) return { host, port: DEFAULT_PORT };
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535)
    return `${JSON.stringify(text.slice(0, 64))}: the port must be 1 to 65535`;
  return { host, port };
}

/** Connect and finish the handshake within the time limit; the peer's identity is judged by the caller. */
function openTls(target: ConnectTarget): Promise<TLSSocket> {
  return new Promise<TLSSocket>((resolve, reject) => {
    const socket = connect({
      host: target.host,
      port: target.port,
      ...(target.servername === undefined ? {} : { servername: target.servername }),
      // The attestation is the trust anchor here (see USAGE); Node's CA and name checks would
      // refuse every enclave behind a private CA before its document could be read.
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    });
    const timer = setTimeout(() => {
      socket.destroy(
        new RuntimeError(
          'ERR_CONNECT_TIMEOUT',
          `no TLS handshake with ${target.host}:${target.port} within ${target.timeoutMs} ms`,
        ),
      );
    }, target.timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    // Errors after the handshake (the server closing first) must not crash the command.
    socket.on('error', () => {});
  });
}

function valid(io: CommandIo, json: boolean, verified: VerifiedAttestation, target: ConnectTarget): number {
  const { document } = verified;
  const connection = {
    host: target.host,
    port: target.port,
    servername: target.servername ?? null,
    nonce: target.nonce ? Buffer.from(target.nonce).toString('hex') : null,
  };
  if (json) {
    io.stdout.write(
      `${JSON.stringify({ valid: true, debug: isDebugDocument(document), connection, document: attestationDocumentToJson(document) }, null, 2)}\n`,
    );
    return 0;
  }
  const notes = [
    isDebugDocument(document) ? 'debug mode' : '',
    'binds the certificate key',
    target.nonce ? 'carries the nonce' : '',
  ].filter((n) => n !== '');
  io.stdout.write(
    `valid: ${target.host}:${target.port} is module ${document.moduleId}, ${document.pcrs.size} PCRs, signed ${new Date(document.timestamp).toISOString()} (${notes.join(', ')})\n`,
  );
  return 0;
}

function usageError(io: CommandIo, problems: readonly string[]): number {
  for (const problem of problems) io.stderr.write(`enclave-runtime attest connect: ${oneLine(problem)}\n`);
  io.stderr.write('run "enclave-runtime attest connect --help" for the options\n');
  return 2;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}
