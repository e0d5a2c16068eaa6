import { benchWorkers } from './runtime-process.js';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { spawnSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { spawnOwned, stopOwned, tail } from './child-processes.js';
import { childrenGone, rssBytes, treeCpuSeconds } from './proc-stat.js';
import type { Subject } from './subject.js';

/** How users get the peers; printed whenever one is missing. */
export const PEER_INSTALL = 'apt-get install -y socat nginx libnginx-mod-stream';
const START_TIMEOUT_MS = 10_000;

/** A peer that could not be started: its rows are skipped with this reason, the rest of the run goes on. */
export class PeerMissing extends Error {}

/** The path of `name` on PATH or in the sbin folders (nginx lives in /usr/sbin, often not on a user's PATH). */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A port nobody listens on now. Another process could take it before the peer binds; start() then fails loudly. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen({ host: '127.0.0.1', port: 0 });
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Whether 127.0.0.1:port is in LISTEN, read from /proc so that checking opens no connection (socat would fork for it). */
function isListening(port: number): boolean {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .some((line) => {
      const fields = line.trim().split(/\s+/);
      return fields[1] === local && fields[3] === '0A';
    });
}

async function waitListening(child: ChildProcess, port: number, what: string, lastLines: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!isListening(port)) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new PeerMissing(`${what} exited at start: ${lastLines() || `code ${child.exitCode ?? child.signalCode}`}`);
    if (Date.now() > deadline)
      throw new PeerMissing(
        `${what} did not listen on 127.0.0.1:${port} within ${START_TIMEOUT_MS} ms: ${lastLines()}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** socat as users run it for a TCP relay: one fork per connection. */
export class SocatPeer implements Subject {
  readonly name = 'socat';
  readonly tls = false;
  readonly port: number;
  readonly #child: ChildProcess;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.port = port;
  }

  static async start(appPort: number): Promise<SocatPeer> {
    const socat = findTool('socat');
    if (!socat) throw new PeerMissing(`socat is not installed (${PEER_INSTALL})`);
    const port = await freePort();
    // The issue's command, bound to loopback: the bench listens nowhere else.
    const child = spawnOwned(socat, [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `TCP:127.0.0.1:${appPort}`]);
    const lastLines = tail(child.stderr);
    child.stdout?.resume();
    await waitListening(child, port, 'socat', lastLines);
    return new SocatPeer(child, port);
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  /** The listener plus its forks, the live ones and those it has reaped. */
  cpuSeconds(): number {
    return treeCpuSeconds(this.pid);
  }

  async settle(): Promise<void> {
    // socat's fork lingers up to its 0.5 s half-close timeout; its CPU counts once it is reaped.
    await childrenGone(this.pid, 3000);
  }

  stop(): Promise<void> {
    return stopOwned(this.#child);
  }
}

export interface NginxCertificate {
  certPath: string;
  keyPath: string;
}

/** nginx's stream module terminating TLS in front of the app: the usual way to add TLS to a TCP service. */
export class NginxPeer implements Subject {
  readonly name = 'nginx';
  readonly tls = true;
  readonly port: number;
  readonly #child: ChildProcess;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.port = port;
  }

  static async start(appPort: number, dir: string, certificate: NginxCertificate): Promise<NginxPeer> {
    const nginx = findTool('nginx');
    if (!nginx) throw new PeerMissing(`nginx is not installed (${PEER_INSTALL})`);
    const port = await freePort();
    const confPath = join(dir, 'nginx.conf');
    writeFileSync(confPath, nginxConf({ dir, port, appPort, certificate, loadModule: streamModule(nginx) }));
    // -p and -e keep every path nginx touches (pid, logs, temp) inside the bench's temp dir.
    const child = spawnOwned(nginx, ['-p', dir, '-e', join(dir, 'error.log'), '-c', confPath, '-g', 'daemon off;']);
    const lastLines = tail(child.stderr);
    child.stdout?.resume();
    await waitListening(child, port, 'nginx', () => lastLines() || readLog(join(dir, 'error.log')));
    return new NginxPeer(child, port);
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  /** Master and worker together (the master is idle once started). */
  cpuSeconds(): number {
    return treeCpuSeconds(this.pid);
  }

  async settle(): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  rssBytes(): number {
    return rssBytes(this.pid);
  }

  stop(): Promise<void> {
    return stopOwned(this.#child);
  }
}

/** The load_module line Debian's nginx needs (its stream module is a separate, dynamic package), or '' when built in. */
function streamModule(nginx: string): string {
  const version = spawnSync(nginx, ['-V'], { encoding: 'utf8' });
  const configure = `${version.stdout ?? ''}${version.stderr ?? ''}`;
  if (configure.includes('--with-stream=dynamic')) {
    const modules = /--modules-path=(\S+)/.exec(configure)?.[1] ?? '/usr/lib/nginx/modules';
    const module = join(modules, 'ngx_stream_module.so');
    if (!existsSync(module))
      throw new PeerMissing(`nginx's stream module is not installed (${module}; ${PEER_INSTALL})`);
    return `load_module ${module};`;
  }
  if (/--with-stream(\s|$)/.test(configure)) return '';
  throw new PeerMissing('this nginx was built without the stream module');
}

function nginxConf(options: {
  dir: string;
  port: number;
  appPort: number;
  certificate: NginxCertificate;
  loadModule: string;
}): string {
  return `# Written by the bench. As many workers as the runtime's ingress threads (BENCH_WORKERS, default 1).
${options.loadModule}
worker_processes ${benchWorkers('BENCH_NGINX_WORKERS')};
pid ${join(options.dir, 'nginx.pid')};
error_log ${join(options.dir, 'error.log')} warn;
events { worker_connections 4096; }
stream {
  server {
    listen 127.0.0.1:${options.port} ssl;
    ssl_certificate ${options.certificate.certPath};
    ssl_certificate_key ${options.certificate.keyPath};
    ssl_protocols TLSv1.3;
    proxy_pass 127.0.0.1:${options.appPort};
  }
}
`;
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join('\n');
  } catch {
    return '';
  }
}
