/**
 * Loader and typed wrappers for the enclave_native addon (src/native/*.cc): AF_VSOCK and
 * AF_UNIX stream sockets driven by the addon's own uv_poll_t I/O (libuv cannot wrap a vsock fd),
 * plus the few Linux syscalls Node does not expose.
 *
 * The addon reports every failure as a negative errno number; this module turns those into
 * NativeError, coded like Node's system errors (`read ECONNRESET`, .code, .errno, .syscall).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorName } from 'node:util';
import { RuntimeError } from '../core/errors.js';

/** VMADDR_CID_ANY: listen on every CID of this VM (`vsock:any:PORT`). */
export const VMADDR_CID_ANY = 0xffffffff;
/** VMADDR_PORT_ANY: let the kernel pick a free port. */
export const VMADDR_PORT_ANY = 0xffffffff;
/** The Nitro driver's largest NSM response. */
export const NSM_MAX_RESPONSE = 0x3000;
/** Upper bound for `nsmRequest`'s response buffer, whatever the caller asks for. */
export const NSM_RESPONSE_CAP = 64 * 1024;

const UNIX_PATH_MAX_BYTES = 107; // sizeof(sun_path) minus the terminating NUL
const UINT32_MAX = 0xffffffff;

export interface VsockAddress {
  family: 'vsock';
  cid: number;
  port: number;
}

export interface UnixAddress {
  family: 'unix';
  path: string;
}

export type NativeAddress = VsockAddress | UnixAddress;

/** A failed system call, shaped like Node's own: message `connect ECONNREFUSED /run/x.sock`. */
export class NativeError extends RuntimeError {
  /** Negative, as in Node (`-104` for ECONNRESET). */
  readonly errno: number;
  readonly syscall: string;
  readonly address: string | undefined;

  constructor(errno: number, syscall: string, address?: string) {
    const code = errnoName(errno);
    super(code, address === undefined ? `${syscall} ${code}` : `${syscall} ${code} ${address}`);
    this.errno = errno;
    this.syscall = syscall;
    this.address = address;
  }
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(errno);
  } catch {
    return `E${Math.abs(errno)}`;
  }
}

/** Node-style error for a negative errno returned by the addon. */
export function errnoError(errno: number, syscall: string, address?: string): NativeError {
  return new NativeError(errno, syscall, address);
}

/** `-errno` for a name such as 'ECONNRESET', for comparing with addon return values. */
export function negErrno(name: keyof typeof osConstants.errno): number {
  return -osConstants.errno[name];
}

/** Events a Handle delivers to its callback as (type, a, b); mirrors EventType in socket_handle.h. */
export const NativeEvent = {
  /** a: Buffer */
  Read: 1,
  Eof: 2,
  /** a: -errno, b: syscall */
  Error: 3,
  /** a: 0 | -errno */
  Write: 4,
  /** a: 0 | -errno */
  Connect: 5,
  /** a: the accepted fd; wrap it with adoptSocketHandle during the callback, or the addon closes it */
  Connection: 6,
  /** a: -errno (EMFILE, ENFILE, ...); call resumeAccept() later */
  AcceptPaused: 7,
  Close: 8,
} as const;

export type NativeEventCallback = (type: number, a: unknown, b: unknown) => void;

/** The addon's socket object. Methods return 0 (or 1 = pending) on success and -errno on failure. */
export interface NativeHandle {
  readonly fd: number;
  setCallback(callback: NativeEventCallback): void;
  bind(address: NativeAddress): number;
  listen(backlog: number): number;
  resumeAccept(): void;
  /** 0 connected, 1 in progress (NativeEvent.Connect follows), <0 -errno. */
  connect(address: NativeAddress): number;
  readStart(): number;
  readStop(): number;
  /** 0 written, 1 pending (NativeEvent.Write follows), <0 -errno. */
  writev(chunks: readonly Uint8Array[]): number;
  shutdown(): number;
  /** Asynchronous; NativeEvent.Close follows once the fd is closed. */
  close(): void;
  ref(): void;
  unref(): void;
  getsockname(): NativeAddress | number;
  getpeername(): NativeAddress | number;
}

/** Events a TlsRelay delivers to its callback as (type, a, b); mirrors RelayEvent in tls_relay.cc. */
export const TlsRelayEvent = {
  /** a: connection id, b: server name; answer with provide(id, credentials | null). */
  Certificate: 1,
  /** a: errno of the failed connect to the app. */
  AppUnreachable: 2,
  /** a: errno (EMFILE, ENFILE, ...); accepting resumes at the next sweep. */
  AcceptPaused: 3,
  /** Every fd is closed; no further events. */
  Closed: 4,
} as const;

/** A parsed certificate, chain and key (tls_relay.cc); opaque to JS. */
export interface NativeTlsCredentials {
  readonly __tlsCredentials: never;
}

export interface NativeTlsRelayOptions {
  app: { ip: string; port: number } | { path: string };
  /** ALPN protocols in wire format (length-prefixed names), in server preference order. */
  alpn: Buffer;
  ciphers: string;
  ciphersuites: string;
  /** A server name containing this (compared lower-case) is passed to JS for its certificate. */
  nonceMarker: string;
  firstByte: boolean;
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  maxConnections: number;
  /** Upper bounds in seconds of the handshake histogram. */
  buckets: readonly number[];
  /**
   * The accept balance between workers sharing the listener: `loads[i]` is worker i's open
   * connections (-1 while it does not accept); this worker writes `loads[index]`.
   */
  balance?: { loads: Int32Array; index: number } | undefined;
  /** Where each counter sits in the stats array. */
  slots: Record<
    | 'accepted'
    | 'active'
    | 'refusedOverCap'
    | 'appUnreachable'
    | 'handshakesOk'
    | 'handshakesFailed'
    | 'handshakeSum'
    | 'handshakeCount'
    | 'handshakeBuckets',
    number
  >;
}

/** The native TLS ingress engine (tls_relay.cc). */
export interface NativeTlsRelay {
  setBase(credentials: NativeTlsCredentials): boolean;
  start(): boolean;
  /** False when the connection is gone. */
  provide(id: number, credentials: NativeTlsCredentials | null): boolean;
  stopAccepting(): void;
  /** Asynchronous; TlsRelayEvent.Closed follows once every fd is closed. */
  close(): void;
}

export interface NativeAddon {
  Handle: new (fd: number, family: number) => NativeHandle;
  /** Takes `listenFd` only when it returns; a throw leaves the fd to the caller. */
  TlsRelay: new (
    listenFd: number,
    options: NativeTlsRelayOptions,
    stats: Float64Array,
    callback: NativeEventCallback,
  ) => NativeTlsRelay;
  TlsCredentials: new (certPem: string, chainPem: string, key: string | NativeTlsCredentials) => NativeTlsCredentials;
  socket(family: number): number;
  dupFd(fd: number): number;
  AF_UNIX: number;
  AF_VSOCK: number;
  openDevice(path: string): number;
  closeFd(fd: number): number;
  nsmRequest(fd: number, request: Uint8Array, maxResponse: number): Buffer | number;
  getOriginalDst(fd: number, family: number): { address: string; port: number } | number;
  setInterfaceUp(name: string): number;
  setHostname(name: string): number;
  hardenProcess(): number;
  processHardening(): { dumpable: number; coreSoft: number; coreHard: number } | number;
  trimHeap(collect: boolean): number;
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) return dirname(fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
}

/**
 * Where the compiled addon is expected: beside this module in the single-file bundle
 * (`<bundle>/lib/enclave_native.node`), else build/Release under the package root (from src/ or dist/src/).
 */
export const NATIVE_ADDON_PATH = ((beside) =>
  existsSync(beside) ? beside : join(packageRoot(), 'build', 'Release', 'enclave_native.node'))(
  join(dirname(fileURLToPath(import.meta.url)), 'enclave_native.node'),
);

let addon: NativeAddon | undefined;
let loadFailure: RuntimeError | undefined;

/** The addon, loaded once; throws ERR_NATIVE_MISSING / ERR_NATIVE_UNSUPPORTED with what to do. */
export function loadNative(): NativeAddon {
  if (addon !== undefined) return addon;
  if (loadFailure !== undefined) throw loadFailure;
  try {
    addon = requireAddon();
    return addon;
  } catch (error) {
    loadFailure = error instanceof RuntimeError ? error : new RuntimeError('ERR_NATIVE_MISSING', String(error));
    throw loadFailure;
  }
}

function requireAddon(): NativeAddon {
  if (!existsSync(NATIVE_ADDON_PATH)) {
    throw new RuntimeError(
      'ERR_NATIVE_MISSING',
      `the native addon is not built (${NATIVE_ADDON_PATH} is missing): run \`npm install\` or \`npx node-gyp rebuild\` in the package directory`,
    );
  }
  let loaded: Partial<NativeAddon> & { unsupported?: boolean };
  try {
    loaded = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as typeof loaded;
  } catch (error) {
    throw new RuntimeError(
      'ERR_NATIVE_MISSING',
      `the native addon at ${NATIVE_ADDON_PATH} failed to load (rebuild it with \`npx node-gyp rebuild\`): ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (loaded.unsupported === true || typeof loaded.Handle !== 'function') {
    throw new RuntimeError(
      'ERR_NATIVE_UNSUPPORTED',
      `AF_VSOCK sockets and the Nitro syscalls need Linux (this is ${process.platform})`,
    );
  }
  return loaded as NativeAddon;
}

/** Why the addon cannot be used here, or undefined when it can (for tests' `skip` and health output). */
export function nativeUnavailable(): string | undefined {
  try {
    loadNative();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

/** Throws ERR_NATIVE_ADDRESS for an address the kernel would reject or silently truncate. */
export function validateNativeAddress(address: NativeAddress): void {
  const isUint32 = (n: unknown): boolean => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= UINT32_MAX;
  if (address?.family === 'vsock') {
    if (!isUint32(address.cid) || !isUint32(address.port)) {
      throw new RuntimeError(
        'ERR_NATIVE_ADDRESS',
        `vsock cid and port must be integers in 0..${UINT32_MAX}, got cid=${String(address.cid)} port=${String(address.port)}`,
      );
    }
    return;
  }
  if (address?.family === 'unix') {
    if (typeof address.path !== 'string' || address.path === '' || address.path.includes('\0')) {
      throw new RuntimeError('ERR_NATIVE_ADDRESS', 'a unix socket path must be a non-empty string without NUL bytes');
    }
    if (Buffer.byteLength(address.path) > UNIX_PATH_MAX_BYTES) {
      throw new RuntimeError(
        'ERR_NATIVE_ADDRESS',
        `unix socket path is longer than ${UNIX_PATH_MAX_BYTES} bytes: ${address.path}`,
      );
    }
    return;
  }
  throw new RuntimeError(
    'ERR_NATIVE_ADDRESS',
    `unknown address family ${String((address as { family?: unknown })?.family)} (expected 'vsock' or 'unix')`,
  );
}

/** The SPEC's address notation: `vsock:3:7777`, `vsock:any:7777`, `unix:/path`. */
export function formatNativeAddress(address: NativeAddress): string {
  if (address.family === 'unix') return `unix:${address.path}`;
  return `vsock:${address.cid === VMADDR_CID_ANY ? 'any' : address.cid}:${address.port}`;
}

/** A new non-blocking socket of the address's family wrapped in a Handle. */
export function openSocketHandle(family: NativeAddress['family']): NativeHandle {
  const native = loadNative();
  const af = family === 'vsock' ? native.AF_VSOCK : native.AF_UNIX;
  const fd = native.socket(af);
  if (fd < 0) throw errnoError(fd, 'socket');
  return new native.Handle(fd, af);
}

/** Wraps an fd this process owns (an accepted connection); on failure the fd is closed and this throws. */
export function adoptSocketHandle(fd: number, family: NativeAddress['family']): NativeHandle {
  const native = loadNative();
  return new native.Handle(fd, family === 'vsock' ? native.AF_VSOCK : native.AF_UNIX);
}

/** Closes a Handle and resolves once its fd is really closed (it replaces the handle's callback). */
export function closeHandle(handle: NativeHandle): Promise<void> {
  return new Promise((resolve) => {
    handle.setCallback((type) => {
      if (type === NativeEvent.Close) resolve();
    });
    handle.close();
  });
}

/** An address result from getsockname/getpeername, or undefined when the call failed. */
export function handleAddress(result: NativeAddress | number): NativeAddress | undefined {
  return typeof result === 'number' ? undefined : result;
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new RuntimeError('ERR_NATIVE_ARGUMENT', `not a file descriptor: ${fd}`);
}

/** A close-on-exec duplicate of a socket fd (each ingress worker closes its own copy of the listener). */
export function dupFd(fd: number): number {
  checkFd(fd);
  const copy = loadNative().dupFd(fd);
  if (copy < 0) throw errnoError(copy, 'fcntl', 'F_DUPFD_CLOEXEC');
  return copy;
}

/** Opens a device node O_RDWR|O_CLOEXEC (e.g. /dev/nsm); NativeError ENOENT when it does not exist. */
export function openDevice(path: string): number {
  const fd = loadNative().openDevice(path);
  if (fd < 0) throw errnoError(fd, 'open', path);
  return fd;
}

/** Closes an fd returned by openDevice. */
export function closeFd(fd: number): void {
  checkFd(fd);
  const status = loadNative().closeFd(fd);
  if (status < 0) throw errnoError(status, 'close');
}

/** One NSM request/response round trip through the driver's ioctl (synchronous; the driver answers in milliseconds). */
export function nsmRequest(fd: number, request: Uint8Array, maxResponse: number = NSM_MAX_RESPONSE): Buffer {
  checkFd(fd);
  if (!Number.isInteger(maxResponse) || maxResponse < 1) {
    throw new RuntimeError('ERR_NATIVE_ARGUMENT', `maxResponse must be a positive integer, got ${maxResponse}`);
  }
  const result = loadNative().nsmRequest(fd, request, Math.min(maxResponse, NSM_RESPONSE_CAP));
  if (typeof result === 'number') throw errnoError(result, 'ioctl', 'NSM');
  return result;
}

/**
 * The pre-NAT destination of a redirected TCP connection (iptables REDIRECT/DNAT), from the fd of
 * an accepted socket (`(socket as any)._handle.fd` for a net.Socket). A connection conntrack never
 * rewrote gives NativeError ENOENT (or ENOPROTOOPT without conntrack in the kernel).
 */
export function getOriginalDst(fd: number, family: 4 | 6): { address: string; port: number } {
  checkFd(fd);
  const result = loadNative().getOriginalDst(fd, family);
  if (typeof result === 'number') throw errnoError(result, 'getsockopt', 'SO_ORIGINAL_DST');
  return result;
}

/** Sets IFF_UP on an interface (`lo` at enclave boot). Needs CAP_NET_ADMIN. */
export function setInterfaceUp(name: string): void {
  const status = loadNative().setInterfaceUp(name);
  if (status < 0) throw errnoError(status, 'ioctl', name);
}

/** sethostname(2) in the current UTS namespace. Needs CAP_SYS_ADMIN. */
export function setHostname(name: string): void {
  const status = loadNative().setHostname(name);
  if (status < 0) throw errnoError(status, 'sethostname', name);
}

/**
 * Makes this process non-dumpable (PR_SET_DUMPABLE 0: no ptrace attach, no /proc/<pid>/mem for a
 * same-uid process without CAP_SYS_PTRACE) and sets RLIMIT_CORE to 0, so the app cannot read the
 * runtime's keys and secrets from its memory or a core file.
 */
export function hardenProcess(): void {
  const status = loadNative().hardenProcess();
  if (status < 0) throw errnoError(status, 'prctl', 'PR_SET_DUMPABLE/RLIMIT_CORE');
}

/** What the kernel reports now: dumpable (0 = no), the core size limits (-1 = unlimited). */
export function processHardening(): { dumpable: number; coreSoft: number; coreHard: number } {
  const result = loadNative().processHardening();
  if (typeof result === 'number') throw errnoError(result, 'prctl', 'PR_GET_DUMPABLE');
  return result;
}

/**
 * Hands free memory back to the kernel: with `collect`, V8's full memory-reducing collection first
 * (it blocks the event loop for its duration: tens of ms for a heap of 100 MiB), then glibc's
 * malloc_trim(0). True when glibc gave some back; false when it had none or the C library is not glibc.
 */
export function trimHeap(collect = false): boolean {
  return loadNative().trimHeap(collect) === 1;
}

/**
 * Where the app-sandbox helper (src/native/app_sandbox.c) is expected: beside the addon in
 * the bundle (`<bundle>/lib/app-sandbox`), else build/Release/app_sandbox as node-gyp builds it.
 */
export const APP_SANDBOX_PATH = ((beside) =>
  existsSync(beside) ? beside : join(packageRoot(), 'build', 'Release', 'app_sandbox'))(
  join(dirname(fileURLToPath(import.meta.url)), 'app-sandbox'),
);
