/**
 * Verifying a peer's certificate chain for the data plane: the SPIFFE layer over TLS. A peer is accepted
 * only when its chain leads to a root of the trust bundle, every certificate on it is within its validity,
 * intermediates may sign, and the leaf is a proper X509-SVID (spiffe `standards/X509-SVID.md`): exactly one
 * URI SAN (stricter than ztunnel, which takes the first), which is a valid SPIFFE ID in the pinned trust
 * domain; no NUL byte in any SAN (CVE-2025-66220, CVE-2026-47778); not a CA and no keyCertSign or cRLSign;
 * an EKU, if present, that allows the role the peer plays.
 *
 * @module
 */

import { SpiffeId } from "../mesh/identity.ts";
import { CertError, x509 } from "./x509.ts";

/** The longest chain accepted, leaf included. */
export const MAX_CHAIN_DEPTH = 8;

/** What to verify a peer chain against. */
export interface VerifyOptions {
  /** The trust bundle. */
  roots: readonly x509.X509Certificate[];
  /** The only trust domain accepted. */
  trustDomain: string;
  /** Verification time; now by default. */
  now?: Date;
  /** The role the peer plays: a server must allow serverAuth, a client clientAuth. */
  purpose?: "server" | "client";
}

/** Checks the leaf as an X509-SVID and returns its identity. */
export function svidIdentity(
  leaf: x509.X509Certificate,
  trustDomain: string,
  purpose?: "server" | "client",
): SpiffeId {
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  const names = san?.names.items ?? [];
  for (const n of names) {
    if (typeof n.value === "string" && n.value.includes("\0")) {
      throw new CertError("BAD_SAN", "the peer certificate has a NUL byte in a subject alternative name");
    }
  }
  const uris = names.filter((n) => n.type === "url");
  if (uris.length !== 1) {
    throw new CertError(
      "BAD_SAN",
      `the peer certificate has ${uris.length} URI SANs; an X509-SVID has exactly one`,
    );
  }
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(uris[0].value, "peer URI SAN");
  } catch (err) {
    throw new CertError("BAD_SAN", (err as Error).message);
  }
  if (id.trustDomain !== trustDomain) {
    throw new CertError(
      "WRONG_TRUST_DOMAIN",
      `the peer identity ${id} is not in trust domain ${trustDomain}`,
    );
  }
  const bc = leaf.getExtension(x509.BasicConstraintsExtension);
  if (bc?.ca) throw new CertError("CA_LEAF", "the peer certificate is a CA certificate (cA=true)");
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  if (ku && (ku.usages & (x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign))) {
    throw new CertError("CA_LEAF", "the peer certificate may sign certificates (keyCertSign or cRLSign)");
  }
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && purpose) {
    const needed = purpose === "server" ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth;
    if (!eku.usages.includes(needed)) {
      throw new CertError(
        "BAD_EKU",
        `the peer certificate does not allow ${purpose === "server" ? "serverAuth" : "clientAuth"}`,
      );
    }
  }
  return id;
}

function checkValidity(cert: x509.X509Certificate, now: Date, what: string): void {
  if (now < cert.notBefore) {
    throw new CertError("NOT_YET_VALID", `${what} is not valid before ${cert.notBefore.toISOString()}`);
  }
  if (now > cert.notAfter) {
    throw new CertError("EXPIRED", `${what} expired at ${cert.notAfter.toISOString()}`);
  }
}

async function signedBy(cert: x509.X509Certificate, issuer: x509.X509Certificate): Promise<boolean> {
  if (cert.issuer !== issuer.subject) return false;
  try {
    return await cert.verify({ publicKey: issuer.publicKey, signatureOnly: true });
  } catch {
    return false;
  }
}

/**
 * Verifies a peer chain (leaf first, then intermediates as the peer sent them) and returns the peer's
 * identity.
 * @throws {CertError} with the rule that failed in `code`.
 */
export async function verifyPeerChain(
  chain: readonly x509.X509Certificate[],
  opts: VerifyOptions,
): Promise<SpiffeId> {
  const now = opts.now ?? new Date();
  if (chain.length === 0) throw new CertError("NO_CERTIFICATE", "the peer presented no certificate");
  if (chain.length > MAX_CHAIN_DEPTH) {
    throw new CertError("BAD_CHAIN", `the peer chain is longer than ${MAX_CHAIN_DEPTH}`);
  }
  const id = svidIdentity(chain[0], opts.trustDomain, opts.purpose);
  let current = chain[0];
  for (let i = 1; i <= chain.length; i++) {
    const what = i === 1 ? "the peer certificate" : `certificate ${i} of the peer chain`;
    checkValidity(current, now, what);
    for (const root of opts.roots) {
      if (await signedBy(current, root)) {
        checkValidity(root, now, "the trust root");
        return id;
      }
    }
    const next = chain[i];
    if (!next) break;
    const bc = next.getExtension(x509.BasicConstraintsExtension);
    const ku = next.getExtension(x509.KeyUsagesExtension);
    if (!bc?.ca || (ku && !(ku.usages & x509.KeyUsageFlags.keyCertSign))) {
      throw new CertError("BAD_CHAIN", `certificate ${i + 1} of the peer chain is not a CA certificate`);
    }
    if (!await signedBy(current, next)) {
      throw new CertError("BAD_CHAIN", `${what} is not signed by certificate ${i + 1} of the peer chain`);
    }
    current = next;
  }
  throw new CertError("UNTRUSTED", "the peer chain does not lead to a root of the trust bundle");
}
