import { randomBytes } from 'node:crypto';
import { mkdir, open, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { RuntimeError } from './errors.js';

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
}

function stateDirError(dir: string, what: string, cause: NodeJS.ErrnoException): StateDirError {
  const errno = cause.code ?? 'EIO';
  // Node's messages read "EROFS: read-only file system, open '<path>'": keep the errno and its text.
  const text = cause.message.split(', ')[0] ?? errno;
  return new StateDirError(`the state dir ${dir} ${what}: ${text.startsWith(errno) ? text : `${errno}: ${text}`}`, errno, { cause });
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
