/**
 * L4 authorization on the destination side, with Istio's semantics (ztunnel `src/rbac.rs` and
 * `state.rs::assert_rbac`): a matching DENY policy denies; with no ALLOW policy the connection is allowed; a
 * matching ALLOW policy allows; otherwise it is denied. Dry-run policies are evaluated and reported, never
 * enforced. A pure function of the candidate policies and the connection, so the proxy can run it at accept
 * time and again for every open connection when policy changes.
 *
 * Matching, as upstream: a policy matches when any rule does (none → never); a rule when all its clauses do
 * (none → always, which is how `rules: [{}]` allows everything); a clause when any of its non-empty matches
 * does (a clause with no matches at all is true, but one holding only empty matches is false: an empty match
 * group never matches); a match when every populated field does and every `not*` field does not. Principals
 * are compared without `spiffe://`. Plaintext has no identity: `principals`, `namespaces` and
 * `serviceAccounts` never match it, and their `not*` forms always do, so STRICT mTLS (a DENY with
 * `notPrincipals: [presence]`) denies exactly the plaintext connections.
 *
 * @module
 */

import {
  type Authorization,
  isEmptyMatch,
  type Match,
  policyKey,
  type ServiceAccountMatch,
  type StringMatch,
} from "../../mesh/authorization.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import { type Cidr, cidrContains } from "../../mesh/net.ts";

/** What authorization sees of a connection. */
export interface ConnectionAttributes {
  /** The client's address as the TCP peer. */
  srcIp: string;
  /** The destination workload's address. */
  dstIp: string;
  /** The resolved upstream port (the app's port, not 15008). */
  dstPort: number;
  /** The mTLS peer identity; undefined for plaintext. */
  identity?: SpiffeId;
}

/** The outcome, with the policy that decided it for logs and the `DENY` response flag. */
export type AuthorizationDecision =
  & ({ allowed: true; policy?: string } | { allowed: false; policy?: string; reason: string })
  & { dryRunMatches: string[] };

/** Whether a string condition holds for `value` (undefined: the attribute is absent). */
export function stringMatches(m: StringMatch, value: string | undefined): boolean {
  if (value === undefined || value === "") return false;
  if ("exact" in m) return value === m.exact;
  if ("prefix" in m) return value.startsWith(m.prefix);
  if ("suffix" in m) return value.endsWith(m.suffix);
  return true; // presence
}

function serviceAccountMatches(m: ServiceAccountMatch, id: SpiffeId | undefined): boolean {
  return id !== undefined && id.namespace === m.namespace && id.serviceAccount === m.serviceAccount;
}

/** A positive field holds when empty or when any value matches; a `not*` field when no value matches. */
function field<T>(values: T[], test: (v: T) => boolean, negated: boolean): boolean {
  if (values.length === 0) return true;
  return negated ? !values.some(test) : values.some(test);
}

/** Whether one match holds for the connection. */
export function matchHolds(m: Match, c: ConnectionAttributes): boolean {
  const principal = c.identity?.principal;
  const namespace = c.identity?.namespace;
  const str = (s: StringMatch[], value: string | undefined, negated: boolean) =>
    field(s, (x) => stringMatches(x, value), negated);
  const ip = (cidrs: Cidr[], addr: string, negated: boolean) => field(cidrs, (x) => cidrContains(x, addr), negated);
  return str(m.namespaces, namespace, false) && str(m.notNamespaces, namespace, true) &&
    str(m.principals, principal, false) && str(m.notPrincipals, principal, true) &&
    ip(m.sourceIps, c.srcIp, false) && ip(m.notSourceIps, c.srcIp, true) &&
    ip(m.destinationIps, c.dstIp, false) && ip(m.notDestinationIps, c.dstIp, true) &&
    field(m.destinationPorts, (p) => p === c.dstPort, false) &&
    field(m.notDestinationPorts, (p) => p === c.dstPort, true) &&
    field(m.serviceAccounts, (s) => serviceAccountMatches(s, c.identity), false) &&
    field(m.notServiceAccounts, (s) => serviceAccountMatches(s, c.identity), true);
}

/** Whether a policy matches the connection (its action aside). */
export function policyMatches(p: Authorization, c: ConnectionAttributes): boolean {
  return p.rules.some((rule) =>
    rule.clauses.every((clause) =>
      clause.matches.length === 0 || clause.matches.some((m) => !isEmptyMatch(m) && matchHolds(m, c))
    )
  );
}

/** Decides a connection against its candidate policies (from `PolicyStore.forWorkload`). */
export function authorize(policies: readonly Authorization[], c: ConnectionAttributes): AuthorizationDecision {
  const dryRunMatches = policies.filter((p) => p.dryRun && policyMatches(p, c)).map(policyKey);
  const enforced = policies.filter((p) => !p.dryRun);
  const deny = enforced.find((p) => p.action === "DENY" && policyMatches(p, c));
  if (deny) {
    const reason = deny.refused === undefined
      ? `denied by policy ${policyKey(deny)}`
      : `policy ${policyKey(deny)} could not be decoded (${deny.refused}); its scope denies all until a version ` +
        "that decodes arrives";
    return { allowed: false, policy: policyKey(deny), reason, dryRunMatches };
  }
  const allows = enforced.filter((p) => p.action === "ALLOW");
  if (allows.length === 0) return { allowed: true, dryRunMatches };
  const allow = allows.find((p) => policyMatches(p, c));
  if (allow) return { allowed: true, policy: policyKey(allow), dryRunMatches };
  return { allowed: false, reason: "no ALLOW policy matched (NotAllowed)", dryRunMatches };
}
