/**
 * How the customer's command is started so that it cannot leave the enclave around the egress
 * allowlist: through the app-sandbox helper (src/native/app_sandbox.c), which installs a
 * seccomp filter (no_new_privs; AF_VSOCK sockets, io_uring and non-native syscall ABIs refused)
 * and then execs the command. iptables covers IP only; the parent's relays listen on vsock.
 */
import { existsSync } from 'node:fs';
import { APP_SANDBOX_PATH } from '../native/native-binding.js';
import { RuntimeError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

/** What to spawn: the file and its argv (after argv[0]). */
export interface AppLaunch {
  file: string;
  args: readonly string[];
  /** Whether the seccomp filter applies. */
  sandboxed: boolean;
}

/**
 * `command args` as the supervisor spawns it: through the helper unless `allowVsock`. Node drops to
 * `[app] user` before exec, so the helper (and the filter) already run as that user. Throws
 * ERR_APP_SANDBOX when the helper is missing on Linux: the command never starts unfiltered by accident.
 */
export function appLaunch(
  command: string,
  args: readonly string[],
  allowVsock: boolean,
  logger: Logger,
  helper: string = APP_SANDBOX_PATH,
): AppLaunch {
  if (allowVsock) {
    logger.warn(
      { command },
      "app.allow_vsock = true: the command may create AF_VSOCK sockets and reach the parent's relays directly",
    );
    return { file: command, args, sandboxed: false };
  }
  if (process.platform !== 'linux') {
    // No Nitro parent and no seccomp there; dev relays are loopback TCP, which the egress rules cover.
    logger.warn(
      { platform: process.platform },
      'no seccomp filter on this platform; the command runs without the app sandbox',
    );
    return { file: command, args, sandboxed: false };
  }
  if (!existsSync(helper)) {
    throw new RuntimeError(
      'ERR_APP_SANDBOX',
      `the app-sandbox helper is missing (${helper}): rebuild with \`npm run install\` (node-gyp builds it beside the addon), or set app.allow_vsock = true to run the command without the seccomp filter`,
    );
  }
  return { file: helper, args: [command, ...args], sandboxed: true };
}

/**
 * The runtime's own AWS credentials: what the KMS client reads (kms-settings.ts) and what an AWS
 * SDK would take as credentials in their place. Region variables stay: they are not secrets, and the
 * app's SDK needs one for the KMS proxy.
 */
export const AWS_CREDENTIAL_VARIABLES: readonly string[] = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_SECURITY_TOKEN',
  'AWS_CREDENTIAL_EXPIRATION',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_ROLE_ARN',
  'AWS_ROLE_SESSION_NAME',
  'AWS_PROFILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CONFIG_FILE',
];

/**
 * The command's environment: the runtime's, without its AWS credentials unless `passAwsCredentials`,
 * then `[app] env`, then `extra` (secrets). What the operator set in `[app] env` or as a secret is passed
 * whatever this says: only what the runtime inherited is withheld.
 */
export function appEnvironment(
  inherited: NodeJS.ProcessEnv,
  configured: Readonly<Record<string, string>>,
  extra: Readonly<Record<string, string>>,
  passAwsCredentials: boolean,
): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...inherited };
  if (!passAwsCredentials) {
    const withheld = new Set(AWS_CREDENTIAL_VARIABLES);
    for (const name of Object.keys(base)) if (withheld.has(name.toUpperCase())) delete base[name];
  }
  return { ...base, ...configured, ...extra };
}
