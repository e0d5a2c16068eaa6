import { writeFileSync } from 'node:fs';
import { freePort } from './net.js';

/**
 * The start of a `dev` config for tests that spawn the CLI: every listener on a loopback port the
 * kernel picks (or the one given), metrics off, so parallel tests never fight over a port.
 */
export function loopbackConfigLines(options: {
  appPort?: number;
  apiPort?: number;
  ingress?: boolean;
  tls?: boolean;
  runtime?: string[];
}): string[] {
  const ingress =
    options.ingress === false
      ? ['enabled = false']
      : ['listen = "tcp:127.0.0.1:0"', `app = "tcp:127.0.0.1:${options.appPort ?? 8008}"`];
  return [
    '[runtime]',
    'health_listen = "tcp:127.0.0.1:0"',
    ...(options.runtime ?? []),
    '[ingress]',
    ...ingress,
    ...(options.tls === false ? ['[tls]', 'enabled = false'] : []),
    '[attestation]',
    `api_listen = "tcp:127.0.0.1:${options.apiPort ?? 0}"`,
    '[metrics]',
    'enabled = false',
  ];
}

/**
 * Writes an enclave.toml for `dev` whose listeners (ingress, internal API, health, metrics) are on
 * free loopback ports, so tests can run side by side; `runtime` lines go into [runtime], `tables`
 * (whole tables, headers included) after it. Returns the ports chosen.
 */
export async function writeDevConfig(
  path: string,
  options: { runtime?: string[]; tables?: string[] } = {},
): Promise<{ ingress: number; api: number; health: number; metrics: number }> {
  const [ingress, api, health, metrics] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const lines = [
    '[runtime]',
    `health_listen = "tcp:127.0.0.1:${health}"`,
    'shutdown_grace_ms = 200',
    ...(options.runtime ?? []),
    '[ingress]',
    `listen = "tcp:127.0.0.1:${ingress}"`,
    '[attestation]',
    `api_listen = "tcp:127.0.0.1:${api}"`,
    '[metrics]',
    `listen = "tcp:127.0.0.1:${metrics}"`,
    ...(options.tables ?? []),
  ];
  writeFileSync(path, `${lines.join('\n')}\n`);
  return { ingress, api, health, metrics };
}
