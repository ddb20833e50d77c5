/**
 * Identity as both proxies use it: the SPIFFE ID a workload's certificate carries, and a workload certificate as
 * the rotation manager keeps it.
 *
 * @module
 */

import type { CertTimes } from "../../certs/rotation.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import type { Workload } from "../../mesh/workload.ts";
import type { WorkloadCredentials } from "../hbone/tls.ts";

/** The identity a workload's certificate carries. */
export function workloadIdentity(w: Workload): SpiffeId {
  return SpiffeId.of(w.trustDomain, w.namespace, w.serviceAccount);
}

/** A workload certificate as the rotation manager keeps it. */
export type WorkloadCert = WorkloadCredentials & CertTimes;
