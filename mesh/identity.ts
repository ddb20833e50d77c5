/**
 * SPIFFE identities in Istio's form, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
 *
 * Parsing is strict, following the SPIFFE ID specification (spiffe/spiffe `standards/SPIFFE-ID.md` §2): the
 * scheme is exactly `spiffe`, the trust domain holds only lowercase letters, digits, `.`, `-` and `_`, path
 * segments are non-empty, never `.` or `..`, hold only letters, digits, `.`, `-` and `_` (so no
 * percent-encoding, NUL or `/` tricks), and there is no port, user info, query or fragment. On top of that,
 * Skiff accepts only Istio's workload form, because every authorization decision reads namespace and
 * service account out of it.
 *
 * @module
 */

import { dnsLabel, dnsSubdomain, show, ValidationError } from "./validate.ts";

/** The trust domain Istio assumes when a workload names none. */
export const DEFAULT_TRUST_DOMAIN = "cluster.local";

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** Checks a trust domain name; returns a problem description, or undefined when it is valid. */
export function trustDomainProblem(td: string): string | undefined {
  if (td === "") return "the trust domain is empty";
  if (td.length > 255) return "the trust domain is longer than 255 characters";
  if (!TRUST_DOMAIN.test(td)) {
    return "the trust domain may hold only lowercase letters, digits, '.', '-' and '_'";
  }
  return undefined;
}

/** A workload identity: trust domain, namespace and service account. Immutable. */
export class SpiffeId {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;

  private constructor(trustDomain: string, namespace: string, serviceAccount: string) {
    this.trustDomain = trustDomain;
    this.namespace = namespace;
    this.serviceAccount = serviceAccount;
  }

  /**
   * Builds an identity from its parts, validating each.
   * @throws {ValidationError} naming `identity.trustDomain`, `identity.namespace` or `identity.serviceAccount`.
   */
  static of(trustDomain: string, namespace: string, serviceAccount: string): SpiffeId {
    const tdProblem = trustDomainProblem(trustDomain);
    if (tdProblem) {
      throw new ValidationError("identity.trustDomain", `${tdProblem}, got ${show(trustDomain)}`);
    }
    const nsProblem = dnsLabel(namespace);
    if (nsProblem) throw new ValidationError("identity.namespace", `${nsProblem}, got ${show(namespace)}`);
    const saProblem = dnsSubdomain(serviceAccount);
    if (saProblem) {
      throw new ValidationError("identity.serviceAccount", `${saProblem}, got ${show(serviceAccount)}`);
    }
    return new SpiffeId(trustDomain, namespace, serviceAccount);
  }

  /**
   * Parses `spiffe://td/ns/NS/sa/SA`.
   * @throws {ValidationError} with field `path` (default `identity`) and what is wrong with the text.
   */
  static parse(text: string, path = "identity"): SpiffeId {
    const fail = (problem: string): never => {
      throw new ValidationError(
        path,
        `${problem}: ${
          show(text)
        } is not a SPIFFE ID of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`,
      );
    };
    if (typeof text !== "string") return fail("expected a string");
    if (text.length > 2048) return fail("longer than 2048 bytes");
    const prefix = "spiffe://";
    if (!text.startsWith(prefix)) return fail("the scheme must be exactly 'spiffe' in lowercase");
    const rest = text.slice(prefix.length);
    const slash = rest.indexOf("/");
    if (slash < 0) return fail("the path is missing");
    const td = rest.slice(0, slash);
    const tdProblem = trustDomainProblem(td);
    if (tdProblem) {
      return fail(/[:@]/.test(td) ? "a port or user info is not allowed in the trust domain" : tdProblem);
    }
    const segments = rest.slice(slash + 1).split("/");
    for (const s of segments) {
      if (s === "") return fail("the path has an empty segment");
      if (s === "." || s === "..") return fail("the path has a '.' or '..' segment");
      if (!SEGMENT.test(s)) return fail("the path may hold only letters, digits, '.', '-', '_' and '/'");
    }
    if (segments.length !== 4 || segments[0] !== "ns" || segments[2] !== "sa") {
      return fail("the path must be /ns/NAMESPACE/sa/SERVICE_ACCOUNT");
    }
    if (dnsLabel(segments[1])) return fail("the namespace is not a DNS label");
    if (dnsSubdomain(segments[3])) return fail("the service account is not a DNS subdomain");
    return new SpiffeId(td, segments[1], segments[3]);
  }

  /** The URI form, `spiffe://td/ns/NS/sa/SA`. */
  toString(): string {
    return `spiffe://${this.principal}`;
  }

  /** The identity without `spiffe://`, as AuthorizationPolicy principals are written (`td/ns/NS/sa/SA`). */
  get principal(): string {
    return `${this.trustDomain}/ns/${this.namespace}/sa/${this.serviceAccount}`;
  }

  /** Whether two identities are the same. */
  equals(other: SpiffeId): boolean {
    return this.trustDomain === other.trustDomain && this.namespace === other.namespace &&
      this.serviceAccount === other.serviceAccount;
  }

  /** JSON form is the URI. */
  toJSON(): string {
    return this.toString();
  }
}
