/**
 * What keeps an HBONE connection honest after its handshake. TLS checks both certificates once, when the
 * connection opens; an HBONE connection is pooled and lives for minutes (5 min idle release, no upper bound while
 * used), and a workload certificate may expire within it (24 h TTL, renewed at half-life, kept past a failed
 * renewal only while valid). So each connection remembers what it was authenticated with, and:
 *
 * - no new stream rides a connection once its local or peer certificate (any certificate of either chain) has
 *   expired: the client pool retires it (GOAWAY, open tunnels finish) and the server refuses the stream;
 * - when the trust bundle changes, the peer chain is verified again against the new bundle, and a connection
 *   whose peer no longer chains to it is closed.
 *
 * Upstream checks certificates at the handshake only (webpki in `tls/workload.rs`) and keeps pooled connections
 * until they break or idle out (`proxy/pool.rs`, `ready_to_use`); Skiff is stricter (ARCHITECTURE.md).
 *
 * The deciding functions here are pure (time passed in); the pool and the server act on their answers.
 *
 * @module
 */

import { verifyPeerChain } from "../../certs/verify.ts";
import { parseCertificates, x509 } from "../../certs/x509.ts";

/** What a connection was authenticated with, as its handshake saw it. */
export interface ConnectionCerts {
  /** Our own identity and the earliest notAfter of the chain we presented (epoch ms). */
  local: { identity: string; notAfter: number };
  /** The peer's identity, the earliest notAfter of the chain it sent, and that chain (DER, leaf first). */
  peer: { identity: string; notAfter: number; chain: readonly Uint8Array[] };
  /** The trust bundle (PEM) the peer chain was last verified against. */
  rootsPem: string;
}

/** The validity window of a PEM chain: the latest notBefore and the earliest notAfter of its certificates. */
export interface ChainValidity {
  notBefore: number;
  notAfter: number;
}

const parsedChains = new Map<string, ChainValidity>();

/**
 * The validity window of our own chain (leaf and intermediates), parsed once per chain: a rotated certificate
 * is a new chain, and the cache holds at most the few chains in use.
 */
export function chainValidity(chainPem: string): ChainValidity {
  const cached = parsedChains.get(chainPem);
  if (cached) return cached;
  const certs = parseCertificates(chainPem, "the local certificate chain");
  const window = {
    notBefore: Math.max(...certs.map((c) => c.notBefore.getTime())),
    notAfter: Math.min(...certs.map((c) => c.notAfter.getTime())),
  };
  if (parsedChains.size >= 64) parsedChains.clear();
  parsedChains.set(chainPem, window);
  return window;
}

/** The earliest notAfter of a DER chain (the peer's, as sent). */
export function derChainNotAfter(chain: readonly Uint8Array[]): number {
  return Math.min(...chain.map((der) => new x509.X509Certificate(new Uint8Array(der)).notAfter.getTime()));
}

/** Why our own certificate cannot be used at `now`, or undefined when it can. */
export function localCertProblem(identity: string, validity: ChainValidity, now: number): string | undefined {
  if (now < validity.notBefore) {
    return `the local certificate ${identity} is not valid before ${new Date(validity.notBefore).toISOString()}`;
  }
  if (now >= validity.notAfter) {
    return `the local certificate ${identity} expired at ${new Date(validity.notAfter).toISOString()}`;
  }
  return undefined;
}

/**
 * Why no new stream may use the connection at `now`, or undefined when it may. The local certificate is named
 * first: it is the one an operator can act on (is the CA reachable?).
 */
export function retireReason(c: ConnectionCerts, now: number): string | undefined {
  if (now >= c.local.notAfter) {
    return `the local certificate ${c.local.identity} expired at ${new Date(c.local.notAfter).toISOString()}`;
  }
  if (now >= c.peer.notAfter) {
    return `the peer certificate ${c.peer.identity} expired at ${new Date(c.peer.notAfter).toISOString()}`;
  }
  return undefined;
}

/**
 * Verifies the connection's peer chain again against `rootsPem` (the same SVID rules as at the handshake:
 * `certs/verify.ts`). Resolves with why the peer is no longer trusted, or undefined when it still is.
 */
export async function untrustedReason(
  c: ConnectionCerts,
  rootsPem: string,
  trustDomain: string,
  purpose: "server" | "client",
  now: number,
): Promise<string | undefined> {
  try {
    const roots = parseCertificates(rootsPem, "the trust bundle");
    const chain = c.peer.chain.map((der) => new x509.X509Certificate(new Uint8Array(der)));
    const id = await verifyPeerChain(chain, { roots, trustDomain, purpose, now: new Date(now) });
    if (id.toString() !== c.peer.identity) {
      return `BUG: the peer chain now names ${id}, not ${c.peer.identity}`;
    }
    return undefined;
  } catch (error) {
    return `the peer certificate ${c.peer.identity} does not chain to the new trust bundle: ${
      (error as Error).message
    }`;
  }
}
