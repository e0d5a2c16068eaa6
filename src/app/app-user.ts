/**
 * `[app] user`: NAME, UID, NAME:GROUP or UID:GID into numeric ids. Names are looked up in the
 * image's /etc/passwd and /etc/group directly: the bundle carries no NSS modules, and an enclave
 * image has no other user database.
 */
import { readFileSync } from 'node:fs';
import { ConfigError, errorCode } from '../core/errors.js';

/** An account file larger than this is not one an enclave image ships; refuse to parse it. */
const MAX_ACCOUNT_FILE_BYTES = 4 * 1024 * 1024;

export interface AppUser {
  uid: number;
  gid: number;
}

export interface AccountFiles {
  passwd?: string;
  group?: string;
}

/** Resolves `[app] user` to ids; throws ConfigError naming the key when a name or id is unknown. */
export function resolveAppUser(spec: string, files: AccountFiles = {}): AppUser {
  const [userPart = '', groupPart] = spec.split(':');
  const passwd = readAccounts(files.passwd ?? '/etc/passwd');
  let uid: number;
  let primaryGid: number | undefined;
  if (/^\d+$/.test(userPart)) {
    uid = checkedId(userPart, spec);
    const entry = passwd?.find((fields) => fields[2] === userPart);
    primaryGid = entry ? checkedId(entry[3] ?? '', spec) : undefined;
  } else {
    const entry = passwd?.find((fields) => fields[0] === userPart);
    if (!entry) throw new ConfigError([`app.user: no user "${userPart}" in ${files.passwd ?? '/etc/passwd'}`]);
    uid = checkedId(entry[2] ?? '', spec);
    primaryGid = checkedId(entry[3] ?? '', spec);
  }
  let gid: number;
  if (groupPart === undefined) {
    // A bare UID with no passwd entry runs with the same number as its group, as Docker does.
    gid = primaryGid ?? uid;
  } else if (/^\d+$/.test(groupPart)) {
    gid = checkedId(groupPart, spec);
  } else {
    const entry = readAccounts(files.group ?? '/etc/group')?.find((fields) => fields[0] === groupPart);
    if (!entry) throw new ConfigError([`app.user: no group "${groupPart}" in ${files.group ?? '/etc/group'}`]);
    gid = checkedId(entry[2] ?? '', spec);
  }
  return { uid, gid };
}

function checkedId(text: string, spec: string): number {
  const id = Number(text);
  if (!/^\d+$/.test(text) || id > 0xfffffffe)
    throw new ConfigError([`app.user: "${spec}" has an id outside 0..4294967294`]);
  return id;
}

/** The colon-separated lines of an account file, or undefined when it does not exist. */
function readAccounts(path: string): string[][] | undefined {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.byteLength > MAX_ACCOUNT_FILE_BYTES)
      throw new ConfigError([`app.user: ${path} is larger than ${MAX_ACCOUNT_FILE_BYTES} bytes`]);
    text = bytes.toString('utf8');
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  return text
    .split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}
