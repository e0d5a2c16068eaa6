import { readFileSync } from 'node:fs';
import { verifyAttestation } from '../src/verify/verifier.js';
import { RoundLog } from './stats.js';

export interface VerifyFixture {
  path: string;
  /** When the document's certificates were valid (fixtures/nitro/SOURCES.md). */
  at: Date;
}

/**
 * `attest verify`'s work on one real AWS document, in-process: COSE decode, the ES384 signature, the
 * chain to the bundled AWS root, the policy. Key `verify`, in ms per document.
 */
export function measureVerify(
  fixture: VerifyFixture,
  rounds: number,
  perRound: number,
  log: (line: string) => void,
): RoundLog {
  const bytes = new Uint8Array(Buffer.from(readFileSync(fixture.path, 'utf8').trim(), 'base64'));
  // A debug-mode document (evervault's GA sample): allowDebug so every check runs to the end.
  const options = { at: fixture.at, allowDebug: true };
  const result = new RoundLog();
  for (let round = 0; round <= rounds; round++) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < perRound; i++) verifyAttestation(bytes, options);
    const ms = Number(process.hrtime.bigint() - started) / 1e6 / perRound;
    if (round === 0) continue;
    result.add('verify', ms);
    log(`  round ${round}: ${ms.toFixed(3)} ms per document`);
  }
  return result;
}
