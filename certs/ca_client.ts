/**
 * The client of the CA service (certs/service.ts), as ztunnel's CA client in shared mode: a fresh P-256
 * key and CSR per request, the identity asked for in the request (upstream's `ImpersonatedIdentity`), and a
 * check that the leaf returned carries exactly that identity (upstream's `SanError` otherwise). The answer's
 * roots become the trust bundle, so the bundle is refreshed with every renewal.
 *
 * @module
 */

import type { SpiffeId } from "../mesh/identity.ts";
import { type ControlConnection, ControlError } from "../mesh/control_client.ts";
import { type CertificateRequest, CERTIFICATES_PATH } from "../mesh/protocol/config_stream.ts";
import { createWorkloadCsr } from "./csr.ts";
import { svidIdentity } from "./verify.ts";
import { CertError, parseCertificates } from "./x509.ts";

/** A certificate obtained from the CA service. */
export interface ObtainedCert {
  identity: SpiffeId;
  chainPem: string;
  keyPem: string;
  rootsPem: string;
  notBefore: number;
  notAfter: number;
}

/** Asks the CA service for a certificate for `identity`, valid `ttlMs`. */
export async function requestCertificate(
  connection: ControlConnection,
  identity: SpiffeId,
  ttlMs: number,
  signal?: AbortSignal,
): Promise<ObtainedCert> {
  const { csrPem, keyPem } = await createWorkloadCsr(identity);
  const body: CertificateRequest = { csr: csrPem, identity: identity.toString(), ttlSeconds: Math.round(ttlMs / 1000) };
  const response = await connection.request("POST", CERTIFICATES_PATH, body, signal);
  const answer = await response.json().catch(() => ({})) as { chain?: unknown; roots?: unknown };
  if (typeof answer.chain !== "string" || typeof answer.roots !== "string") {
    throw new ControlError("the CA service answered without chain and roots");
  }
  const chain = parseCertificates(answer.chain, "the CA service's chain");
  parseCertificates(answer.roots, "the CA service's roots");
  const leaf = chain[0];
  const got = svidIdentity(leaf, identity.trustDomain);
  if (!got.equals(identity)) {
    throw new CertError("BAD_SAN", `the CA service signed ${got} when ${identity} was asked for`);
  }
  return {
    identity,
    chainPem: answer.chain,
    keyPem,
    rootsPem: answer.roots,
    notBefore: leaf.notBefore.getTime(),
    notAfter: leaf.notAfter.getTime(),
  };
}
