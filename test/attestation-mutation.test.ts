import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AttestationError, type AttestationErrorCode } from '../src/verify/attestation-error.js';
import { verifyCertificateChain } from '../src/verify/certificate-chain.js';
import { resolveTrustedRoots } from '../src/verify/root-store.js';
import { decodeAttestation, verifyAttestation } from '../src/verify/verifier.js';
import { NITRO_FIXTURES } from './helpers/paths.js';

// Verification times copied from test/fixtures/nitro/SOURCES.md ("Per-file provenance"):
// yawn/nitro-attest pins 1736179625; pontifex's chain verifies at its doc timestamp 1758628609;
// evervault's beta doc verifies at 1665651482 (its doc timestamp). They cover a definite-length
// payload, an indefinite-length one (pontifex) and a 256-byte nonce (evervault beta).
const SUBJECTS = [
  { file: 'yawn-nitro-attest-attestation.cose', encoding: 'raw', at: 1736179625 },
  { file: 'worldcoin-pontifex-real-attestation-doc.b64', encoding: 'base64', at: 1758628609 },
  { file: 'evervault-beta-valid-attestation-doc.cbor', encoding: 'raw', at: 1665651482 },
] as const;

function load(subject: (typeof SUBJECTS)[number]): Buffer {
  const raw = readFileSync(join(NITRO_FIXTURES, subject.file));
  return subject.encoding === 'base64' ? Buffer.from(raw.toString('latin1').trim(), 'base64') : raw;
}

function codeOf(fn: () => unknown): AttestationErrorCode | 'accepted' {
  try {
    fn();
    return 'accepted';
  } catch (error) {
    assert.ok(error instanceof AttestationError, `only AttestationError escapes, got ${String(error)}`);
    return error.code;
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal CBOR walker, written for the test: it finds where each item of the real documents
// sits, so a mutation can target exactly one PCR value, the nonce or one certificate.
// ---------------------------------------------------------------------------------------------
interface Item {
  start: number;
  /** Where the content of a byte/text string starts (after its head). */
  contentStart: number;
  end: number;
  major: number;
  children: Item[];
}

function readItem(bytes: Uint8Array, start: number): Item {
  const initial = bytes[start]!;
  const major = initial >> 5;
  const info = initial & 0x1f;
  let offset = start + 1;
  let argument = info;
  if (info === 24) argument = bytes[offset++]!;
  else if (info === 25) {
    argument = (bytes[offset]! << 8) | bytes[offset + 1]!;
    offset += 2;
  } else if (info === 26) {
    argument = Buffer.from(bytes).readUInt32BE(offset);
    offset += 4;
  } else if (info === 27) {
    argument = Number(Buffer.from(bytes).readBigUInt64BE(offset));
    offset += 8;
  }
  const indefinite = info === 31;
  const children: Item[] = [];
  if (major === 2 || major === 3) {
    assert.ok(!indefinite, 'no chunked strings in NSM output');
    return { start, contentStart: offset, end: offset + argument, major, children };
  }
  if (major === 4 || major === 5) {
    const count = major === 5 ? argument * 2 : argument;
    for (let i = 0; indefinite ? bytes[offset] !== 0xff : i < count; i++) {
      const child = readItem(bytes, offset);
      children.push(child);
      offset = child.end;
    }
    if (indefinite) offset += 1;
    return { start, contentStart: offset, end: offset, major, children };
  }
  if (major === 6) {
    const child = readItem(bytes, offset);
    return { start, contentStart: offset, end: child.end, major, children: [child] };
  }
  return { start, contentStart: offset, end: offset, major, children };
}

function text(bytes: Uint8Array, item: Item): string {
  return Buffer.from(bytes.subarray(item.contentStart, item.end)).toString('utf8');
}

interface Layout {
  protectedHeader: Item;
  payload: Item;
  signature: Item;
  /** Offsets inside the payload bytes. */
  fields: Map<string, Item>;
}

function layout(doc: Buffer): Layout {
  const outer = readItem(doc, 0);
  assert.equal(outer.end, doc.length);
  const [protectedHeader, , payload, signature] = outer.children;
  assert.ok(protectedHeader && payload && signature);
  const payloadBytes = doc.subarray(payload.contentStart, payload.end);
  const map = readItem(payloadBytes, 0);
  assert.equal(map.major, 5);
  const fields = new Map<string, Item>();
  for (let i = 0; i < map.children.length; i += 2)
    fields.set(text(payloadBytes, map.children[i]!), map.children[i + 1]!);
  return { protectedHeader, payload, signature, fields };
}

function cborHead(major: number, length: number): Buffer {
  const m = major << 5;
  if (length < 24) return Buffer.from([m | length]);
  if (length < 0x100) return Buffer.from([m | 24, length]);
  if (length < 0x10000) return Buffer.from([m | 25, length >> 8, length & 0xff]);
  const b = Buffer.alloc(5);
  b[0] = m | 26;
  b.writeUInt32BE(length, 1);
  return b;
}

/** Re-encodes the outer COSE_Sign1 array around `payload`, keeping the other three elements as they were. */
function withPayload(doc: Buffer, l: Layout, payload: Uint8Array): Buffer {
  return Buffer.concat([
    Buffer.from([0x84]),
    doc.subarray(l.protectedHeader.start, l.protectedHeader.end),
    doc.subarray(l.protectedHeader.end, l.payload.start), // the unprotected header
    cborHead(2, payload.byteLength),
    payload,
    doc.subarray(l.signature.start, l.signature.end),
  ]);
}

function flipInPayload(doc: Buffer, l: Layout, payloadOffset: number, mask = 0xff): Buffer {
  const payload = Buffer.from(doc.subarray(l.payload.contentStart, l.payload.end));
  payload[payloadOffset]! ^= mask;
  return withPayload(doc, l, payload);
}

function flipAt(doc: Buffer, offset: number, mask = 0xff): Buffer {
  const copy = Buffer.from(doc);
  copy[offset]! ^= mask;
  return copy;
}

/** Deterministic sample: every `stride`-th offset in [from, to), plus the last one. */
function sample(from: number, to: number, stride: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i += stride) out.push(i);
  if (out[out.length - 1] !== to - 1) out.push(to - 1);
  return out;
}

for (const subject of SUBJECTS) {
  describe(`mutations of ${subject.file}`, () => {
    const doc = load(subject);
    const at = new Date(subject.at * 1000);
    const l = layout(doc);
    const verify = (bytes: Uint8Array) => () => verifyAttestation(bytes, { at, allowDebug: true });

    it('the unmutated document verifies, and re-encoding its payload reproduces it byte for byte', () => {
      verifyAttestation(doc, { at });
      assert.ok(withPayload(doc, l, doc.subarray(l.payload.contentStart, l.payload.end)).equals(doc));
      assert.equal(l.signature.end - l.signature.contentStart, 96);
    });

    it('every byte of the signature, flipped either way, is ERR_ATTESTATION_SIGNATURE', () => {
      for (let offset = l.signature.contentStart; offset < l.signature.end; offset++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          assert.equal(
            codeOf(verify(flipAt(doc, offset, mask))),
            'ERR_ATTESTATION_SIGNATURE',
            `signature byte ${offset - l.signature.contentStart} ^ ${mask}`,
          );
        }
      }
    });

    it('PCR value bytes are signed: flips are ERR_ATTESTATION_SIGNATURE', () => {
      const pcrs = l.fields.get('pcrs')!;
      const decoded = decodeAttestation(doc);
      assert.equal(pcrs.children.length / 2, decoded.pcrs.size);
      let checked = 0;
      for (let i = 0; i < pcrs.children.length; i += 2) {
        const value = pcrs.children[i + 1]!;
        for (const offset of sample(value.contentStart, value.end, 5)) {
          const mutated = flipInPayload(doc, l, offset);
          // The mutation really lands in that PCR, and nowhere else.
          const index = decoded.pcrs.size > 0 ? [...decoded.pcrs.keys()][i / 2]! : -1;
          assert.notDeepEqual(decodeAttestation(mutated).pcrs.get(index), decoded.pcrs.get(index));
          assert.equal(
            codeOf(verify(mutated)),
            'ERR_ATTESTATION_SIGNATURE',
            `PCR${index} byte ${offset - value.contentStart}`,
          );
          checked++;
        }
      }
      assert.ok(checked >= 16 * 10);
    });

    it('nonce, user_data and public_key bytes are signed: flips are ERR_ATTESTATION_SIGNATURE', () => {
      let checked = 0;
      for (const name of ['nonce', 'user_data', 'public_key']) {
        const value = l.fields.get(name)!;
        if (value.major !== 2) continue; // null in this document
        for (const offset of sample(value.contentStart, value.end, 3)) {
          assert.equal(
            codeOf(verify(flipInPayload(doc, l, offset))),
            'ERR_ATTESTATION_SIGNATURE',
            `${name} byte ${offset - value.contentStart}`,
          );
          checked++;
        }
      }
      assert.ok(checked > 0, 'the document carries at least one of them');
    });

    it('cabundle certificate bytes are rejected (signature, chain or format/schema by where they fall)', () => {
      const cabundle = l.fields.get('cabundle')!;
      assert.equal(cabundle.children.length, 4);
      const allowed = new Set([
        'ERR_ATTESTATION_SIGNATURE',
        'ERR_ATTESTATION_CHAIN',
        'ERR_ATTESTATION_FORMAT',
        'ERR_ATTESTATION_SCHEMA',
      ]);
      for (const [n, cert] of cabundle.children.entries()) {
        for (const offset of sample(cert.contentStart, cert.end, 4)) {
          const code = codeOf(verify(flipInPayload(doc, l, offset)));
          assert.ok(allowed.has(code), `cabundle[${n}] byte ${offset - cert.contentStart}: ${code}`);
        }
      }
    });

    it('signing certificate bytes are rejected', () => {
      const cert = l.fields.get('certificate')!;
      const allowed = new Set(['ERR_ATTESTATION_SIGNATURE', 'ERR_ATTESTATION_CHAIN']);
      for (const offset of sample(cert.contentStart, cert.end, 4)) {
        const code = codeOf(verify(flipInPayload(doc, l, offset)));
        assert.ok(allowed.has(code), `certificate byte ${offset - cert.contentStart}: ${code}`);
      }
    });

    it('no single flipped byte anywhere yields a valid document', () => {
      const allowed = new Set([
        'ERR_ATTESTATION_FORMAT',
        'ERR_ATTESTATION_SCHEMA',
        'ERR_ATTESTATION_SIGNATURE',
        'ERR_ATTESTATION_CHAIN',
      ]);
      // Every byte outside the payload body (COSE structure, headers, signature) and a sample inside it.
      const offsets = [
        ...sample(0, l.payload.contentStart + 64, 1),
        ...sample(l.payload.contentStart + 64, l.payload.end, 11),
        ...sample(l.payload.end, doc.length, 1),
      ];
      for (const offset of offsets) {
        const code = codeOf(verify(flipAt(doc, offset)));
        assert.ok(allowed.has(code), `byte ${offset}: ${code}`);
      }
    });
  });
}

describe('chain-level mutations (certificates checked on their own, at the document time)', () => {
  const subject = SUBJECTS[0];
  const doc = decodeAttestation(load(subject));
  const at = new Date(subject.at * 1000);
  const roots = resolveTrustedRoots();

  it('the unmutated chain verifies', () => {
    verifyCertificateChain(doc, roots, at);
  });

  it('a flipped byte in cabundle[0] no longer matches the pinned root: ERR_ATTESTATION_ROOT', () => {
    const root = doc.cabundle[0]!;
    for (const offset of sample(0, root.byteLength, 7)) {
      const mutated = Buffer.from(root);
      mutated[offset]! ^= 0xff;
      const code = codeOf(() =>
        verifyCertificateChain(
          { certificate: doc.certificate, cabundle: [mutated, ...doc.cabundle.slice(1)] },
          roots,
          at,
        ),
      );
      // An unparseable root is a chain (DER) error before it can be compared.
      assert.ok(code === 'ERR_ATTESTATION_ROOT' || code === 'ERR_ATTESTATION_CHAIN', `root byte ${offset}: ${code}`);
    }
  });

  it('a flipped byte in an intermediate or the signing certificate breaks the chain: ERR_ATTESTATION_CHAIN', () => {
    for (let n = 1; n <= doc.cabundle.length; n++) {
      const original = n < doc.cabundle.length ? doc.cabundle[n]! : doc.certificate;
      for (const offset of sample(0, original.byteLength, 3)) {
        const mutated = Buffer.from(original);
        mutated[offset]! ^= 0xff;
        const input =
          n < doc.cabundle.length
            ? { certificate: doc.certificate, cabundle: doc.cabundle.map((c, i) => (i === n ? mutated : c)) }
            : { certificate: mutated, cabundle: doc.cabundle };
        assert.equal(
          codeOf(() => verifyCertificateChain(input, roots, at)),
          'ERR_ATTESTATION_CHAIN',
          `${n < doc.cabundle.length ? `cabundle[${n}]` : 'certificate'} byte ${offset}`,
        );
      }
    }
  });

  it('a reordered, shortened or padded cabundle is ERR_ATTESTATION_CHAIN or _ROOT', () => {
    const [root, regional, zonal, instance] = doc.cabundle as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
    const cases: [Uint8Array[], AttestationErrorCode][] = [
      [[root, zonal, regional, instance], 'ERR_ATTESTATION_CHAIN'],
      [[root, regional, instance], 'ERR_ATTESTATION_CHAIN'],
      [[root, regional, zonal], 'ERR_ATTESTATION_CHAIN'],
      [[root, regional, zonal, instance, instance], 'ERR_ATTESTATION_CHAIN'],
      [[regional, zonal, instance], 'ERR_ATTESTATION_ROOT'],
      [[root, root, regional, zonal, instance], 'ERR_ATTESTATION_CHAIN'],
      // The signing certificate posing as a CA.
      [[root, regional, zonal, instance, doc.certificate], 'ERR_ATTESTATION_CHAIN'],
    ];
    for (const [cabundle, code] of cases) {
      assert.equal(
        codeOf(() => verifyCertificateChain({ certificate: doc.certificate, cabundle }, roots, at)),
        code,
      );
    }
  });
});
