/**
 * The start of a `dev` config for tests that spawn the CLI: every listener on a loopback port the
 * kernel picks (or the one given), metrics off, so parallel tests never fight over a port.
 */
export function loopbackConfigLines(options: { appPort?: number; apiPort?: number; ingress?: boolean; tls?: boolean; runtime?: string[] }): string[] {
  const ingress = options.ingress === false ? ['enabled = false'] : ['listen = "tcp:127.0.0.1:0"', `app = "tcp:127.0.0.1:${options.appPort ?? 8008}"`];
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
