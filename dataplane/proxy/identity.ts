/**
 * Identity as both proxies use it: the SPIFFE ID a workload's certificate carries, and a workload certificate as
 * the rotation manager keeps it.
 *
 * @module
 */

import type { CertificateAuthority } from "../../certs/ca.ts";
import type { CertTimes } from "../../certs/rotation.ts";
import { certificatesToPem } from "../../certs/x509.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import type { Workload } from "../../mesh/workload.ts";
import type { WorkloadCredentials } from "../hbone/tls.ts";

/** The identity a workload's certificate carries. */
export function workloadIdentity(w: Workload): SpiffeId {
  return SpiffeId.of(w.trustDomain, w.namespace, w.serviceAccount);
}

/** A workload certificate as the rotation manager keeps it. */
export type WorkloadCert = WorkloadCredentials & CertTimes;

/** A workload certificate for `identity` signed by a CA held in this process (`--ca-dir`, tests), valid `ttlMs`. */
export async function issueLocally(ca: CertificateAuthority, identity: string, ttlMs: number): Promise<WorkloadCert> {
  const issued = await ca.issue(SpiffeId.parse(identity, "identity"), { ttlMs });
  const leaf = issued.chain[0];
  return {
    identity: SpiffeId.parse(identity),
    chainPem: certificatesToPem(issued.chain),
    keyPem: issued.keyPem,
    rootsPem: certificatesToPem(issued.roots),
    notBefore: leaf.notBefore.getTime(),
    notAfter: leaf.notAfter.getTime(),
  };
}
