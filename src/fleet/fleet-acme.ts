/**
 * The fleet's side of ACME sharing: the account key and the served certificate (with its key)
 * travel in the fleet state, so the CA sees one account and one order per renewal for the whole
 * fleet. Who orders: the member whose module_id is lowest among itself and the peers reachable at
 * the last round, provided it has joined a fleet or may bootstrap one; the others take the result.
 * During a split each half has its own lowest member, so each may order once; when the halves meet,
 * the later notAfter wins everywhere (FleetState's rule) and the other certificate is dropped.
 *
 * The orderer's pending TLS-ALPN-01 answers travel the same way, pushed to every reachable peer at
 * once (not at the next interval) before the CA is told to validate: behind a load balancer, the
 * CA's validation connections land on any member, not on the orderer.
 */
import type { AcmeFleetLink } from '../tls/acme-certificates.js';
import type { AcmeIssued } from '../tls/acme-order.js';
import type { FleetMember } from './fleet-member.js';

export function acmeFleetLink(member: FleetMember): AcmeFleetLink {
  const { state } = member;
  return {
    shared() {
      const entry = state.acmeCertificate;
      if (!entry) return undefined;
      return {
        certPem: entry.certPem,
        chainPem: entry.chainPem,
        keyPem: entry.keyPem,
        notBefore: new Date(entry.notBefore),
        notAfter: new Date(entry.notAfter),
      };
    },
    mayOrder: () => member.mayOrderAcme(),
    async publish(issued: AcmeIssued, keyPem: string) {
      await state.putAcmeCertificate({
        certPem: issued.certPem,
        chainPem: issued.chainPem,
        keyPem,
        notBefore: issued.notBefore.toISOString(),
        notAfter: issued.notAfter.toISOString(),
      });
    },
    onShared(listener) {
      state.onChange((outcome) => {
        if (outcome.acmeCertificate) listener();
      });
    },
    async share(challenge) {
      await state.putAcmeChallenge(challenge);
      const peersReached = await member.syncNow({ fresh: true });
      return { peersReached, peers: member.peers.length };
    },
    async withdraw(domain) {
      // Peers drop it at their next sync, or at its expiry if they miss that.
      await state.removeAcmeChallenge(domain);
    },
    sharedChallenges: () => state.acmeChallenges(),
    onChallenges(listener) {
      state.onChange((outcome) => {
        if (outcome.acmeChallenges) listener();
      });
    },
  };
}

/**
 * The account key the fleet uses: a peer's when one arrived in the first round, else this
 * member's own (from the state dir), handed to the fleet when this member is the one that orders,
 * so later members take it. A member still waiting for a fleet keeps its own to itself.
 */
export async function fleetAcmeAccountKey(member: FleetMember, local: () => Promise<string>): Promise<string> {
  const shared = member.state.acmeAccount;
  if (shared) return shared.keyPem;
  const own = await local();
  if (member.mayOrderAcme()) await member.state.putAcmeAccount(own);
  return own;
}
