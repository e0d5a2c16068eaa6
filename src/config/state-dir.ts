import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, open, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { RuntimeError } from '../core/errors.js';

/**
 * More than a first start writes there (simulated NSM chain and root, CA key and ca.pem, ACME
 * account key: about 10 KiB), so a dir without room for them fails here, not halfway through.
 */
const PROBE_BYTES = 16 * 1024;

/** The state dir cannot be used: not creatable, read-only, full, not ours. */
export class StateDirError extends RuntimeError {
  /** The errno code behind it (EROFS, ENOSPC, EACCES, ...). */
  readonly errno: string;

  constructor(message: string, errno: string, options?: { cause?: unknown }) {
    super('ERR_STATE_DIR', message, options);
    this.errno = errno;
  }
}

/**
 * Creates the state dir and proves it writable before any part writes to it, so a read-only or
 * full file system stops start-up with one reason naming the dir and the errno, instead of an
 * error from whichever part happened to write first (which may name only a temp file, or nothing).
 */
export async function prepareStateDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw stateDirError(dir, 'cannot be created', await mkdirCause(dir, error as NodeJS.ErrnoException));
  }
  const probe = join(dir, `.write-probe.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let created = false;
  try {
    const handle = await open(probe, 'wx', 0o600);
    created = true;
    try {
      await handle.writeFile(Buffer.alloc(PROBE_BYTES));
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw stateDirError(dir, 'is not writable', error as NodeJS.ErrnoException);
  } finally {
    if (created) await unlink(probe).catch(() => undefined);
  }
  // After the probe, so a read-only or full file system is reported as such.
  await makePrivate(dir);
}

/** Dirs others use too: making one of them 0700 would lock everyone else out, so they are refused. */
const SHARED_DIRS: ReadonlySet<string> = new Set(['/', '/tmp', '/var/tmp', '/dev/shm', resolve(tmpdir())]);

/**
 * 0700 whatever the dir's mode was: mkdir's mode applies only to a dir it creates, and keys, the
 * simulated NSM chain and the ACME account live here. A symlink is refused rather than followed.
 */
async function makePrivate(dir: string): Promise<void> {
  if (SHARED_DIRS.has(resolve(dir))) {
    throw new StateDirError(
      `the state dir ${dir} is a shared directory; point runtime.state_dir at a directory of its own (the runtime makes it 0700)`,
      'EPERM',
    );
  }
  try {
    const info = await lstat(dir);
    if (info.isSymbolicLink() || !info.isDirectory()) {
      throw new StateDirError(
        `the state dir ${dir} is not a directory (a symlink or a file); point runtime.state_dir at a directory of its own`,
        'ENOTDIR',
      );
    }
    if ((info.mode & 0o7777) !== 0o700) await chmod(dir, 0o700);
  } catch (error) {
    if (error instanceof StateDirError) throw error;
    throw stateDirError(dir, 'cannot be made private (0700)', error as NodeJS.ErrnoException);
  }
}

function stateDirError(dir: string, what: string, cause: NodeJS.ErrnoException): StateDirError {
  const errno = cause.code ?? 'EIO';
  // Node's messages read "EROFS: read-only file system, open '<path>'": keep the errno and its text.
  const text = cause.message.split(', ')[0] ?? errno;
  return new StateDirError(
    `the state dir ${dir} ${what}: ${text.startsWith(errno) ? text : `${errno}: ${text}`}`,
    errno,
    { cause },
  );
}

/**
 * Node's recursive mkdir reports ENOENT when a parent is on a read-only file system; making the
 * first missing level on its own gets the real errno (EROFS, EACCES, ...).
 */
async function mkdirCause(dir: string, error: NodeJS.ErrnoException): Promise<NodeJS.ErrnoException> {
  if (error.code !== 'ENOENT') return error;
  let missing = resolve(dir);
  for (let parent = dirname(missing); parent !== missing; missing = parent, parent = dirname(parent)) {
    const exists = await stat(parent).then(
      () => true,
      () => false,
    );
    if (!exists) continue;
    try {
      await mkdir(missing, { mode: 0o700 });
    } catch (real) {
      return real as NodeJS.ErrnoException;
    }
    return error;
  }
  return error;
}
