/**
 * `[[secrets]]` in enclave.toml: KMS ciphertexts that the runtime decrypts at boot, with this
 * enclave as the KMS Recipient, and hands to the customer command as environment variables.
 */
import { base64Bytes, bool, oneOf, optional, table, tableList, text, type ConfigValue } from '../config/field.js';

/** Entries in [[secrets]]; each is one KMS call at boot. */
export const MAX_SECRETS = 64;
/** KMS's own cap on a CiphertextBlob. */
export const MAX_SECRET_CIPHERTEXT_BYTES = 6144;
/** Environment variable names as POSIX shells accept them. */
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

/** The schema of [[secrets]], for src/config/schema.ts (which checks its shape where it uses it). */
export const SECRETS = tableList(
  "KMS ciphertexts decrypted at boot (this enclave as the KMS Recipient) into the command's environment",
  table('one secret', {
    name: optional(
      text(
        'the environment variable the customer command gets',
        '',
        ENV_NAME,
        'an environment variable name: letters, digits and _, not starting with a digit, at most 128',
      ),
    ),
    ciphertext: optional(base64Bytes('the KMS CiphertextBlob, base64', MAX_SECRET_CIPHERTEXT_BYTES)),
    file: optional(text('a file holding the CiphertextBlob, raw bytes or base64', '')),
    key_id: optional(
      text(
        'the KMS key the blob must be under: key id, key ARN, alias/name or alias ARN',
        '',
        /^[A-Za-z0-9:/_.+=,@-]{1,2048}$/,
        'a KMS key id, key ARN, alias name or alias ARN',
      ),
    ),
    required: bool('a failure stops start-up (false: the variable is left unset, with a warning)', true),
    encoding: oneOf('how the plaintext becomes the value: "utf8" text, or "base64" of the bytes', 'utf8', [
      'utf8',
      'base64',
    ]),
  }),
  { maxItems: MAX_SECRETS, required: ['name'], refine: checkSecretEntries },
);

/** One [[secrets]] entry as the runtime uses it. Exactly one of `ciphertext` and `file` is set. */
export type SecretEntry = ConfigValue<typeof SECRETS>[number];

/** Rules across keys and entries, on the entries as written; each message names the entry as `secrets[i]`. */
function checkSecretEntries(entries: ReadonlyArray<Record<string, unknown>>, path: string): string[] {
  const problems: string[] = [];
  const seen = new Map<string, number>();
  for (const [i, entry] of entries.entries()) {
    const here = `${path}[${i}]`;
    const { name, ciphertext, file } = entry;
    if (ciphertext !== undefined && file !== undefined)
      problems.push(`${here}: both ciphertext and file are set; give one`);
    if (ciphertext === undefined && file === undefined)
      problems.push(`${here}: neither ciphertext nor file is set; give one`);
    if (typeof name === 'string') {
      const first = seen.get(name);
      if (first !== undefined) problems.push(`${here}.name: "${name}" is already the name of ${path}[${first}]`);
      else seen.set(name, i);
    }
  }
  return problems;
}
