/**
 * Workload keys and certificate requests, as ztunnel makes them for Istio's CA: ECDSA P-256, an empty
 * subject, and the identity as the only (URI) SAN. The CA ignores the SAN and signs for the identity it
 * authorized; the CSR's signature proves the caller holds the key.
 *
 * @module
 */

import type { SpiffeId } from "../mesh/identity.ts";
import { P256, privateKeyToPem, x509 } from "./x509.ts";

/** A new workload key pair and its CSR. */
export interface WorkloadCsr {
  keys: CryptoKeyPair;
  /** PKCS#8 PEM of the private key. */
  keyPem: string;
  /** PKCS#10 PEM. */
  csrPem: string;
}

/** Makes an ECDSA P-256 key pair and a CSR for `identity`. */
export async function createWorkloadCsr(identity: SpiffeId): Promise<WorkloadCsr> {
  const keys = await crypto.subtle.generateKey(P256, true, ["sign", "verify"]) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: P256,
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity.toString() }], true),
    ],
  });
  return { keys, keyPem: await privateKeyToPem(keys.privateKey), csrPem: csr.toString("pem") };
}
