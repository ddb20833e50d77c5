/**
 * L4 authorization as ztunnel receives it (`istio.security.Authorization` in ztunnel's
 * `proto/authorization.proto`): a policy holds rules (OR), a rule holds clauses (AND), a clause holds matches
 * (OR, empty matches skipped), and a match holds fields (AND) with their `not*` negations. The control plane
 * converts AuthorizationPolicy and PeerAuthentication into this form; the data plane evaluates it. This module
 * only defines and validates the form; evaluation lives with the proxies.
 *
 * @module
 */

import { type Cidr, decodeCidr, formatCidr } from "./net.ts";
import { checkInt, checkString, dnsLabel, Fields, show, ValidationError } from "./validate.ts";

/** A string condition; AuthorizationPolicy's `*` is presence, `*x` a suffix, `x*` a prefix, else exact. */
export type StringMatch = { exact: string } | { prefix: string } | { suffix: string } | { presence: true };

/** A service account condition: namespace and name, compared literally (never as a pattern). */
export interface ServiceAccountMatch {
  namespace: string;
  serviceAccount: string;
}

/** One match: every populated field must match; every `not*` field must not. */
export interface Match {
  namespaces: StringMatch[];
  notNamespaces: StringMatch[];
  principals: StringMatch[];
  notPrincipals: StringMatch[];
  sourceIps: Cidr[];
  notSourceIps: Cidr[];
  destinationIps: Cidr[];
  notDestinationIps: Cidr[];
  destinationPorts: number[];
  notDestinationPorts: number[];
  serviceAccounts: ServiceAccountMatch[];
  notServiceAccounts: ServiceAccountMatch[];
}

/** A clause matches when any of its non-empty matches does (a clause with none is true). */
export interface Clause {
  matches: Match[];
}

/** A rule matches when all of its clauses do (a rule with none matches everything). */
export interface Rule {
  clauses: Clause[];
}

/** Which workloads a policy applies to. */
export type AuthorizationScope = "GLOBAL" | "NAMESPACE" | "WORKLOAD_SELECTOR";
/** What a matching policy does. */
export type AuthorizationAction = "ALLOW" | "DENY";

/** A policy; it matches when any rule does, and one with no rules never matches. */
export interface Authorization {
  name: string;
  namespace: string;
  scope: AuthorizationScope;
  action: AuthorizationAction;
  rules: Rule[];
  /** Evaluated and logged, never enforced. */
  dryRun: boolean;
  /**
   * Set only by the proxy, never on the wire: this is the deny-all standing in for a policy that did not decode,
   * and why it did not (mesh/refused_policy.ts).
   */
  refused?: string;
}

/** The fields of a {@link Match} that hold string matches. */
export const STRING_FIELDS = ["namespaces", "notNamespaces", "principals", "notPrincipals"] as const;
/** The fields of a {@link Match} that hold IP ranges. */
export const CIDR_FIELDS = ["sourceIps", "notSourceIps", "destinationIps", "notDestinationIps"] as const;
/** The fields of a {@link Match} that hold ports. */
export const PORT_FIELDS = ["destinationPorts", "notDestinationPorts"] as const;
/** The fields of a {@link Match} that hold service accounts. */
export const SERVICE_ACCOUNT_FIELDS = ["serviceAccounts", "notServiceAccounts"] as const;

/** Decodes a {@link StringMatch}: an object with exactly one of exact, prefix, suffix, presence. */
export function decodeStringMatch(value: unknown, path: string): StringMatch {
  const f = Fields.of(value, path);
  // raw() marks every kind as read, so a null sibling ({exact: "a", prefix: null}) counts as absent, not unknown.
  const kinds = ["exact", "prefix", "suffix", "presence"].filter((k) => f.raw(k) !== undefined);
  if (kinds.length !== 1) {
    throw new ValidationError(
      path,
      `expected exactly one of exact, prefix, suffix or presence, got ${show(value)}`,
    );
  }
  const kind = kinds[0];
  let out: StringMatch;
  if (kind === "presence") {
    if (f.raw("presence") !== true) throw new ValidationError(f.at("presence"), "expected true");
    out = { presence: true };
  } else {
    const s = checkString(f.raw(kind), f.at(kind), { max: 1024 });
    if (s.includes("\0")) throw new ValidationError(f.at(kind), "must not contain a NUL character");
    out = { [kind]: s } as StringMatch;
  }
  f.done();
  return out;
}

function decodeServiceAccountMatch(value: unknown, path: string): ServiceAccountMatch {
  const f = Fields.of(value, path);
  const out = {
    namespace: f.string("namespace", { check: dnsLabel }),
    serviceAccount: f.string("serviceAccount", { nonEmpty: true, max: 253 }),
  };
  f.done();
  return out;
}

const LIST_MAX = 4096;

/** Decodes a {@link Match}; absent fields are empty lists. */
export function decodeMatch(value: unknown, path: string): Match {
  const f = Fields.of(value, path);
  const m = {} as Match;
  for (const k of STRING_FIELDS) m[k] = f.array(k, decodeStringMatch, { max: LIST_MAX });
  for (const k of CIDR_FIELDS) m[k] = f.array(k, decodeCidr, { max: LIST_MAX });
  for (const k of PORT_FIELDS) m[k] = f.array(k, (v, p) => checkInt(v, p, 1, 65535), { max: LIST_MAX });
  for (const k of SERVICE_ACCOUNT_FIELDS) m[k] = f.array(k, decodeServiceAccountMatch, { max: LIST_MAX });
  f.done();
  return m;
}

/** A match with every field empty, to fill in. */
export function emptyMatch(): Match {
  return {
    namespaces: [],
    notNamespaces: [],
    principals: [],
    notPrincipals: [],
    sourceIps: [],
    notSourceIps: [],
    destinationIps: [],
    notDestinationIps: [],
    destinationPorts: [],
    notDestinationPorts: [],
    serviceAccounts: [],
    notServiceAccounts: [],
  };
}

/** Whether a match has no fields at all (such a match is skipped when evaluating a clause). */
export function isEmptyMatch(m: Match): boolean {
  return [...STRING_FIELDS, ...CIDR_FIELDS, ...PORT_FIELDS, ...SERVICE_ACCOUNT_FIELDS].every((k) => m[k].length === 0);
}

/**
 * Decodes an {@link Authorization}.
 * @throws {ValidationError} naming the first bad field under `path`.
 */
export function decodeAuthorization(value: unknown, path = "authorization"): Authorization {
  const f = Fields.of(value, path);
  const a: Authorization = {
    name: f.string("name", { nonEmpty: true, max: 253 }),
    namespace: f.string("namespace", { default: "", check: (v) => (v === "" ? undefined : dnsLabel(v)) }),
    scope: f.oneOf("scope", ["GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"] as const, "GLOBAL"),
    action: f.oneOf("action", ["ALLOW", "DENY"] as const, "ALLOW"),
    rules: f.array("rules", (rule, rp) => {
      const r = Fields.of(rule, rp);
      const out: Rule = {
        clauses: r.array("clauses", (clause, cp) => {
          const c = Fields.of(clause, cp);
          const cl: Clause = { matches: c.array("matches", decodeMatch, { max: LIST_MAX }) };
          c.done();
          return cl;
        }, { max: LIST_MAX }),
      };
      r.done();
      return out;
    }, { max: LIST_MAX }),
    dryRun: f.bool("dryRun", false),
  };
  f.done();
  if (a.scope !== "GLOBAL" && a.namespace === "") {
    throw new ValidationError(f.at("namespace"), `is required for scope ${a.scope}`);
  }
  return a;
}

/**
 * The wire form of an {@link Authorization}, the one {@link decodeAuthorization} reads: the model holds IP ranges
 * as {@link Cidr} objects, the stream as `address/length` strings (a proxy refuses the objects).
 */
export function encodeAuthorization(a: Authorization): unknown {
  const match = (m: Match) => {
    const out: Record<string, unknown> = { ...m };
    for (const k of CIDR_FIELDS) out[k] = m[k].map(formatCidr);
    return out;
  };
  return { ...a, rules: a.rules.map((r) => ({ clauses: r.clauses.map((c) => ({ matches: c.matches.map(match) })) })) };
}

/** The store key of a policy: `namespace/name`. */
export function policyKey(a: Pick<Authorization, "namespace" | "name">): string {
  return `${a.namespace}/${a.name}`;
}
