/**
 * HBONE's TLS, as ztunnel sets it up (reference §2): TLS 1.3 only, AES-GCM suites only, ALPN `h2`, a client
 * certificate required, no hostname check. `node:tls` verifies the chain against the trust bundle (it is the only
 * TLS in Deno that can request and show client certificates; deno-platform.md); then the SPIFFE rules run on the
 * leaf (`certs/verify.ts`): one URI SAN, a valid SPIFFE ID in our trust domain, not a CA. The client side also
 * requires that identity to be one of the identities it expected for the destination. Every connection is a full
 * handshake with a certificate: a resumed TLS session is refused on both sides.
 */

import type tls from "node:tls";
import { MAX_CHAIN_DEPTH, svidIdentity } from "../../certs/verify.ts";
import { bytesEqual, CertError, x509 } from "../../certs/x509.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import { chainValidity, type ConnectionCerts, derChainNotAfter } from "./validity.ts";

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
  // A resumed session (TLS 1.3 PSK) carries no certificate: node:tls reports the one from the original handshake
  // as the peer's and `authorized` as true, however long ago that was, even when the certificate has since expired
  // or the client sends none. Deno's node:tls issues session tickets and accepts them, from any server in the
  // process, and none of sessionTimeout: 0, ticketKeys, SSL_OP_NO_TICKET or a 'resumeSession' handler turns that
  // off (tried), so a resumed session is refused here, before any byte. Upstream never resumes: its client has
  // `Resumption::disabled()` and its server builds a fresh rustls ServerConfig, with an empty session cache, for
  // every connection (`proxy/inbound.rs` InboundCertProvider). Skiff's own client does not resume either.
  if (socket.isSessionReused()) {
    throw new CertError(
      "RESUMED",
      "the peer resumed a TLS session; HBONE takes only full handshakes with a certificate",
    );
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

/** The chain the peer sent, leaf first, as DER (what node:tls links through `issuerCertificate`). */
export function peerChain(socket: tls.TLSSocket): Uint8Array[] {
  const chain: Uint8Array[] = [];
  let cert: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  while (cert?.raw && chain.length < MAX_CHAIN_DEPTH) {
    const der = new Uint8Array(cert.raw);
    if (chain.some((c) => bytesEqual(c, der))) break; // a self-signed root links to itself
    chain.push(der);
    cert = cert.issuerCertificate;
  }
  if (chain.length === 0) throw new CertError("NO_CERTIFICATE", "the peer presented no certificate");
  return chain;
}

/**
 * What a connection was authenticated with, for `validity.ts`: call it right after {@link peerIdentity}
 * succeeded, with the credentials this side presented.
 */
export function connectionCerts(socket: tls.TLSSocket, creds: WorkloadCredentials, peer: SpiffeId): ConnectionCerts {
  const chain = peerChain(socket);
  return {
    local: { identity: creds.identity.toString(), notAfter: chainValidity(creds.chainPem).notAfter },
    peer: { identity: peer.toString(), notAfter: derChainNotAfter(chain), chain },
    rootsPem: creds.rootsPem,
  };
}
