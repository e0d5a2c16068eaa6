/**
 * The one canonical form of a host name that egress policy compares: lowercase ASCII,
 * internationalised labels as punycode (UTS #46 via node:url), no trailing dot.
 * Two spellings of one name normalise to the same string, and a look-alike (Cyrillic 'а' for
 * Latin 'a') normalises to a different xn-- label, so plain string equality is a safe match.
 */
import { domainToASCII } from 'node:url';
import { RuntimeError } from '../core/errors.js';

export const DOMAIN_NAME_MAX_LENGTH = 253;
export const DOMAIN_LABEL_MAX_LENGTH = 63;
// Unicode input is shorter than its punycode, so anything longer is hopeless before any work.
const INPUT_MAX_LENGTH = 4 * DOMAIN_NAME_MAX_LENGTH;
// Underscore is not a host-name character, but real service names (_acme-challenge) use it.
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;
// WHATWG URL parsers read a name whose last label is numeric as an IPv4 address ("127.1", "0x7f").
const NUMERIC_LABEL = /^(?:[0-9]+|0x[0-9a-f]*)$/;
// node:url would percent-decode or otherwise reinterpret other ASCII; only IDNA sees non-ASCII.
const ASCII_ALLOWED = /^[A-Za-z0-9._-]*$/;

/** A string that is not a usable domain name; `value` is the input as given. */
export class DomainNameError extends RuntimeError {
  readonly value: string;

  constructor(value: string, reason: string) {
    const shown = value.length > 80 ? `${value.slice(0, 80)}...` : value;
    super('ERR_DOMAIN_NAME', `invalid domain name ${JSON.stringify(shown)}: ${reason}`);
    this.value = value;
  }
}

/** Normalise a host name for comparison, or throw DomainNameError saying why it is not one. */
export function normaliseDomainName(input: string): string {
  if (input.length > INPUT_MAX_LENGTH)
    throw new DomainNameError(input, `longer than ${DOMAIN_NAME_MAX_LENGTH} characters`);
  const name = input.endsWith('.') ? input.slice(0, -1) : input;
  if (name === '') throw new DomainNameError(input, 'empty name');
  const asciiPart = name.replace(/[^\x00-\x7f]/g, '');
  if (!ASCII_ALLOWED.test(asciiPart)) {
    const bad = /[^A-Za-z0-9._-]/.exec(asciiPart)![0];
    throw new DomainNameError(input, `invalid character ${JSON.stringify(bad)}`);
  }
  if (name.split('.').some((label) => label === '')) throw new DomainNameError(input, 'empty label');
  if (NUMERIC_LABEL.test(lastLabel(name.toLowerCase()))) {
    throw new DomainNameError(input, 'last label is numeric, so it would be read as an IPv4 address');
  }
  const ascii = domainToASCII(name);
  if (ascii === '') throw new DomainNameError(input, 'not a valid internationalised domain name');
  if (ascii.length > DOMAIN_NAME_MAX_LENGTH)
    throw new DomainNameError(input, `longer than ${DOMAIN_NAME_MAX_LENGTH} characters`);
  for (const label of ascii.split('.')) {
    if (label === '') throw new DomainNameError(input, 'empty label');
    if (label.length > DOMAIN_LABEL_MAX_LENGTH)
      throw new DomainNameError(input, `label longer than ${DOMAIN_LABEL_MAX_LENGTH} characters`);
    if (!LABEL.test(label))
      throw new DomainNameError(
        input,
        `label ${JSON.stringify(label)} must be letters, digits, '-' or '_' and not start or end with '-'`,
      );
  }
  if (NUMERIC_LABEL.test(lastLabel(ascii)))
    throw new DomainNameError(input, 'last label is numeric, so it would be read as an IPv4 address');
  return ascii;
}

/** The normalised name, or undefined when `input` is not a domain name. */
export function tryNormaliseDomainName(input: string): string | undefined {
  try {
    return normaliseDomainName(input);
  } catch (error) {
    if (error instanceof DomainNameError) return undefined;
    throw error;
  }
}

function lastLabel(name: string): string {
  return name.slice(name.lastIndexOf('.') + 1);
}
