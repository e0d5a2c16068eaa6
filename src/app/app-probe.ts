/**
 * How /health decides the customer app is up (`[app] healthcheck`): a plain connect to its port
 * (an unmodified app needs no health endpoint), or an HTTP GET of its own health route, which
 * only answers 2xx/3xx when the app says it is well.
 */
import { formatAddress, parseAddress, type Address } from '../net/address.js';
import { connect } from '../net/transport.js';
import { ConfigError } from '../core/errors.js';

/** The status line and headers of a health answer fit in this; the body is never read. */
const MAX_RESPONSE_HEAD_BYTES = 8 * 1024;

export interface ProbeResult {
  up: boolean;
  detail: string;
}

export interface AppProbe {
  /** What is probed, for logs: `tcp:127.0.0.1:8008` or `GET tcp:127.0.0.1:8008/healthz`. */
  readonly target: string;
  probe(timeoutMs: number): Promise<ProbeResult>;
}

/** Builds the probe `[app] healthcheck` asks for; `app` is ingress.app. */
export function createAppProbe(healthcheck: string, app: Address): AppProbe {
  if (healthcheck === '') return connectProbe(app);
  if (healthcheck.startsWith('/'))
    return httpProbe(app, healthcheck, app.transport === 'tcp' ? hostHeader(app.host, app.port) : 'localhost');
  if (healthcheck.startsWith('http://')) {
    let url: URL;
    try {
      url = new URL(healthcheck);
    } catch {
      throw new ConfigError([`app.healthcheck: ${JSON.stringify(healthcheck)} is not a URL`]);
    }
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = url.port === '' ? 80 : Number(url.port);
    return httpProbe({ transport: 'tcp', host, port }, `${url.pathname}${url.search}`, url.host);
  }
  try {
    return connectProbe(parseAddress(healthcheck));
  } catch (error) {
    throw new ConfigError([`app.healthcheck: ${(error as Error).message}`]);
  }
}

function hostHeader(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function connectProbe(address: Address): AppProbe {
  const target = formatAddress(address);
  return {
    target,
    async probe(timeoutMs) {
      try {
        const socket = await connect(address, { timeoutMs });
        socket.destroy();
        return { up: true, detail: `accepting on ${target}` };
      } catch (error) {
        return { up: false, detail: `${target}: ${errorCode(error)}` };
      }
    },
  };
}

// A few lines of HTTP/1.1 over any transport (tcp, unix or vsock alike), reading only the status line.
function httpProbe(address: Address, path: string, host: string): AppProbe {
  const target = `GET ${formatAddress(address)}${path}`;
  return {
    target,
    async probe(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      let socket;
      try {
        socket = await connect(address, { timeoutMs });
      } catch (error) {
        return { up: false, detail: `${target}: ${errorCode(error)}` };
      }
      try {
        const status = await readStatus(
          socket,
          `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: enclave-runtime-health\r\nConnection: close\r\n\r\n`,
          Math.max(deadline - Date.now(), 1),
        );
        const up = status >= 200 && status < 400;
        return { up, detail: `${target}: HTTP ${status}` };
      } catch (error) {
        return { up: false, detail: `${target}: ${errorCode(error)}` };
      } finally {
        socket.destroy();
      }
    },
  };
}

function readStatus(socket: import('node:stream').Duplex, request: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let head = '';
    const timer = setTimeout(() => done(new Error('ETIMEDOUT')), timeoutMs);
    const done = (error: Error | undefined, status?: number) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
      if (error) reject(error);
      else resolve(status as number);
    };
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const line = head.indexOf('\r\n');
      if (line >= 0) {
        const match = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(head.slice(0, line));
        return match ? done(undefined, Number(match[1])) : done(new Error('not an HTTP answer'));
      }
      if (head.length > MAX_RESPONSE_HEAD_BYTES) done(new Error('no HTTP status line'));
    };
    const onError = (error: Error) => done(error);
    const onEnd = () => done(new Error('closed before answering'));
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
    socket.write(request);
  });
}

function errorCode(error: unknown): string {
  return (error as { code?: string }).code ?? (error as Error).message;
}
