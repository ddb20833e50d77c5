/**
 * HBONE's TLS, as ztunnel sets it up (reference §2): TLS 1.3 only, AES-GCM suites only, ALPN `h2`, a client
 * certificate required, no hostname check. `node:tls` verifies the chain against the trust bundle (it is the only
 * TLS in Deno that can request and show client certificates; deno-platform.md); then the SPIFFE rules run on the
 * leaf (`certs/verify.ts`): one URI SAN, a valid SPIFFE ID in our trust domain, not a CA. The client side also
 * requires that identity to be one of the identities it expected for the destination.
 */

import type tls from "node:tls";
import { svidIdentity } from "../../certs/verify.ts";
import { CertError, x509 } from "../../certs/x509.ts";
import type { SpiffeId } from "../../mesh/identity.ts";

/** ztunnel's suites: no ChaCha20, no TLS 1.2. */
export const HBONE_CIPHERS = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";
const ALLOWED_SUITES = new Set(HBONE_CIPHERS.split(":"));
/** A peer that has not finished its handshake by then is dropped (slowloris). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** A workload's certificate as TLS wants it. */
export interface WorkloadCredentials {
  identity: SpiffeId;
  /** Leaf then intermediates, PEM. */
  chainPem: string;
  keyPem: string;
  /** The trust bundle, PEM. */
  rootsPem: string;
}

function common(creds: WorkloadCredentials) {
  return {
    key: creds.keyPem,
    cert: creds.chainPem,
    ca: creds.rootsPem,
    minVersion: "TLSv1.3" as const,
    maxVersion: "TLSv1.3" as const,
    ciphers: HBONE_CIPHERS,
    ALPNProtocols: ["h2"],
  };
}

/** Options for an HBONE server (`tls.createServer`, `server.setSecureContext`). */
export function serverTlsOptions(creds: WorkloadCredentials, handshakeTimeoutMs = TLS_HANDSHAKE_TIMEOUT_MS) {
  return { ...common(creds), requestCert: true, rejectUnauthorized: true, handshakeTimeout: handshakeTimeoutMs };
}

/** Options for an HBONE client over an already connected socket. */
export function clientTlsOptions(creds: WorkloadCredentials, socket: import("node:net").Socket): tls.ConnectionOptions {
  // No SNI and no hostname check: the identity check below replaces it (upstream uses a dummy ServerName).
  return { ...common(creds), socket, rejectUnauthorized: true, checkServerIdentity: () => undefined };
}

/**
 * The peer's SPIFFE identity after a completed handshake, checked against the SVID rules and our trust domain.
 * @throws {CertError} when the peer is not an acceptable workload.
 */
export function peerIdentity(socket: tls.TLSSocket, trustDomain: string, purpose: "server" | "client"): SpiffeId {
  // Deno's node:tls ignores the `ciphers` option (a ChaCha20-only openssl client is served), so the suite is
  // checked here, after the handshake and before any application byte: the connection is refused instead.
  const suite = socket.getCipher()?.name;
  if (socket.getProtocol() !== "TLSv1.3" || !suite || !ALLOWED_SUITES.has(suite)) {
    throw new CertError("WEAK_TLS", `${socket.getProtocol()} ${suite} is not TLS 1.3 with an AES-GCM suite`);
  }
  if (socket.alpnProtocol !== "h2") {
    throw new CertError("NO_ALPN", `the peer did not negotiate ALPN h2 (got ${socket.alpnProtocol || "none"})`);
  }
  if (!socket.authorized) {
    throw new CertError("UNTRUSTED", `the peer chain is not trusted: ${socket.authorizationError ?? "no certificate"}`);
  }
  const raw = socket.getPeerCertificate()?.raw;
  if (!raw) throw new CertError("NO_CERTIFICATE", "the peer presented no certificate");
  return svidIdentity(new x509.X509Certificate(new Uint8Array(raw)), trustDomain, purpose);
}
