/**
 * AuthorizationPolicy (security.istio.io/v1) read strictly, and converted for ztunnel the way istiod's ambient
 * index does (`pilot/pkg/serviceregistry/ambient/authorization.go`), with the stricter L7 handling the ztunnel
 * issue fixed:
 *
 * - scope: a policy in the root namespace without a selector is GLOBAL, one elsewhere without a selector is
 *   NAMESPACE, one with a selector is WORKLOAD_SELECTOR (its key goes on the selected workloads);
 * - a policy with `targetRefs` is for waypoints only and is not sent to ztunnel;
 * - `from` entries become one clause (any entry), `to` entries another, each `when` condition one more (all
 *   must hold); principal and namespace patterns `*`, `x*`, `*x` become presence, prefix and suffix matches;
 * - L7 attributes (hosts, methods, paths, request principals, remote IP blocks, request headers...) cannot be
 *   seen by ztunnel: an ALLOW rule that uses any is dropped, so it never matches; a DENY rule loses them and
 *   keeps the rest, so it denies all the traffic it could cover. Either way a warning names the field. A `from`
 *   or `to` entry whose every field was L7 matches every connection in a DENY (its clause is left out); istiod
 *   leaves an empty match there, which ztunnel never matches, so upstream silently drops such a DENY and with it
 *   the rule's L4 part (ARCHITECTURE.md, "Where Skiff departs from upstream");
 * - CUSTOM and AUDIT are refused (the reader reports them), as no provider serves them;
 * - as Istio's validation does, the reader refuses empty parts (a `from`/`to` list present but empty, an entry
 *   without its source or operation or with an empty one, a condition with neither values nor notValues) and
 *   `serviceAccounts` beside principals or namespaces: read, an empty part never matches, so a DENY holding one
 *   would deny nothing; a service account holding `*` is a name ztunnel cannot match, read like an L7 field.
 *
 * A policy with `targetRefs` is converted for waypoints instead ({@link convertL7Policy}, mesh/l7.ts), as written
 * but for what Skiff's waypoint cannot check, which goes the safe way with a note each:
 *
 * - targets: Gateways (the waypoint) and Services of the policy's namespace; other kinds are ignored, and a
 *   target that is not declared is kept (the policy applies once it is) and reported;
 * - `requestPrincipals`, `notRequestPrincipals` and `when` keys other than the ones mesh/l7.ts lists (JWT claims
 *   `request.auth.*`, `connection.sni`, `experimental.*`, unknown keys) cannot be checked: an ALLOW rule using any
 *   is dropped (it allows nothing), a DENY rule loses that field or condition, so it denies all the traffic it
 *   could cover;
 * - `serviceAccounts` become principals of the mesh's trust domain;
 * - AUDIT only logs upstream, and is dropped. CUSTOM hands the decision to an ext-authz provider, which Skiff
 *   does not have; istiod, when it cannot use the provider, denies every request
 *   (`pilot/pkg/security/authz/builder`: "will generate a deny all config"), and so does Skiff: a CUSTOM policy
 *   becomes a DENY of everything on its targets, reported as an error. Dropping it would let through what the
 *   provider was there to stop.
 *
 * @module
 */

import {
  type Authorization,
  type Clause,
  emptyMatch,
  isEmptyMatch,
  type Match,
  type Rule,
  type StringMatch,
} from "../../mesh/authorization.ts";
import type { L7Condition, L7Operation, L7Policy, L7Rule, L7Source, L7Target } from "../../mesh/l7.ts";
import { conditionHeader, headerNameCheck, L7_CONDITION_KEYS } from "../../mesh/l7.ts";
import { decodeCidr } from "../../mesh/net.ts";
import { checkString, dnsLabel, dnsSubdomain, Fields, show, ValidationError } from "../../mesh/validate.ts";
import { LABELS, type MeshSettings, stringMap } from "./common.ts";
import { GATEWAY_GROUP } from "./http_route.ts";

const SOURCE_L4 = ["principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks"] as const;
const SOURCE_SA = ["serviceAccounts", "notServiceAccounts"] as const;
const SOURCE_L7 = ["requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"] as const;
const OPERATION_L4 = ["ports", "notPorts"] as const;
const OPERATION_L7 = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const;
/** `when` keys ztunnel can evaluate, and the match field each fills. */
const WHEN_L4: Record<string, [keyof Match, keyof Match, "string" | "cidr" | "port"]> = {
  "source.ip": ["sourceIps", "notSourceIps", "cidr"],
  "source.namespace": ["namespaces", "notNamespaces", "string"],
  "source.principal": ["principals", "notPrincipals", "string"],
  "destination.ip": ["destinationIps", "notDestinationIps", "cidr"],
  "destination.port": ["destinationPorts", "notDestinationPorts", "port"],
};

type SourceField = typeof SOURCE_L4[number] | typeof SOURCE_SA[number] | typeof SOURCE_L7[number];
type OperationField = typeof OPERATION_L4[number] | typeof OPERATION_L7[number];

/** A policy's reference to what it attaches to (`targetRefs`). */
export interface PolicyTargetRef {
  group: string;
  kind: string;
  name: string;
  /** As written; Istio allows only the policy's own namespace. */
  namespace?: string;
}

/** One `when` condition. */
export interface ConditionSpec {
  key: string;
  values: string[];
  notValues: string[];
}

/** One rule, as written. */
export interface RuleSpec {
  from: Record<SourceField, string[]>[];
  to: Record<OperationField, string[]>[];
  when: ConditionSpec[];
}

/** An AuthorizationPolicy's spec, as written (L7 fields kept for the waypoint). */
export interface AuthorizationPolicySpec {
  selector?: Record<string, string>;
  targetRefs: PolicyTargetRef[];
  /** CUSTOM and AUDIT only with `targetRefs`: the reader refuses them for ztunnel's policies. */
  action: "ALLOW" | "DENY" | "CUSTOM" | "AUDIT";
  rules: RuleSpec[];
}

const noNul = (v: string) => (v.includes("\0") ? "must not contain a NUL character" : undefined);
const strings = (f: Fields, k: string) =>
  f.array(k, (v, p) => checkString(v, p, { nonEmpty: true, max: 1024, check: noNul }));

function readFields<K extends string>(value: unknown, path: string, keys: readonly K[]): Record<K, string[]> {
  const f = Fields.of(value ?? {}, path);
  const out = {} as Record<K, string[]>;
  for (const k of keys) out[k] = strings(f, k);
  f.done();
  return out;
}

/*
 * Istio's validation (`ValidateAuthorizationPolicy`) refuses a `from` or `to` list that is present but empty, an
 * entry without its source or operation or with an empty one, and a condition with neither values nor notValues.
 * Read, each would be an empty match, which never matches (rbac.ts): a DENY holding one would deny nothing and
 * no one would be told; `from: []` would read as "any source".
 */
function nonEmpty<T>(r: Fields, key: string, item: (value: unknown, path: string) => T): T[] {
  const out = r.array(key, item);
  if (out.length === 0 && r.raw(key) !== undefined) {
    throw new ValidationError(r.at(key), "must not be empty (leave it out to match any; Istio refuses it too)");
  }
  return out;
}

function readEntry<K extends string>(e: Fields, key: string, keys: readonly K[]): Record<K, string[]> {
  const raw = e.raw(key);
  if (raw === undefined) throw new ValidationError(e.at(key), "is required (Istio refuses an entry without it)");
  const out = readFields(raw, e.at(key), keys);
  if (keys.every((k) => out[k].length === 0)) {
    throw new ValidationError(e.at(key), "must not be empty: it would match nothing (Istio refuses it too)");
  }
  return out;
}

function readTargetRef(value: unknown, path: string): PolicyTargetRef {
  const f = Fields.of(value, path);
  const out: PolicyTargetRef = {
    group: f.string("group", { default: "" }),
    kind: f.string("kind", { nonEmpty: true }),
    name: f.string("name", { check: dnsSubdomain }),
  };
  const namespace = f.optionalString("namespace", { check: dnsLabel });
  if (namespace) out.namespace = namespace;
  f.done();
  return out;
}

/** Decodes an AuthorizationPolicy's spec. */
export function readAuthorizationPolicy(doc: Record<string, unknown>): AuthorizationPolicySpec {
  const f = Fields.of(doc.spec ?? {}, "spec");
  const action = f.string("action", { default: "ALLOW" });
  if (action !== "ALLOW" && action !== "DENY" && action !== "CUSTOM" && action !== "AUDIT") {
    throw new ValidationError("spec.action", `expected ALLOW or DENY, got ${show(action)}`);
  }
  f.optionalObject("provider", (v, p) => { // only meaningful with CUSTOM, which no provider serves in Skiff
    const provider = Fields.of(v, p);
    provider.string("name", { nonEmpty: true, max: 253 });
    provider.done();
  });
  let selector: Record<string, string> | undefined;
  const sel = f.raw("selector");
  if (sel !== undefined) {
    const s = Fields.of(sel, "spec.selector");
    selector = stringMap(s.raw("matchLabels"), "spec.selector.matchLabels");
    s.done();
  }
  const targetRefs = f.array("targetRefs", readTargetRef);
  const single = f.optionalObject("targetRef", readTargetRef);
  if (single) targetRefs.push(single);
  if (selector && targetRefs.length > 0) {
    throw new ValidationError("spec.selector", "selector and targetRefs cannot both be set");
  }
  if ((action === "CUSTOM" || action === "AUDIT") && targetRefs.length === 0) {
    throw new ValidationError("spec.action", `${action} is not supported by Skiff (ALLOW and DENY are)`);
  }
  const rules = f.array("rules", (value, path): RuleSpec => {
    const r = Fields.of(value ?? {}, path);
    const out: RuleSpec = {
      from: nonEmpty(r, "from", (v, p) => {
        const e = Fields.of(v, p);
        const source = readEntry(e, "source", [...SOURCE_L4, ...SOURCE_SA, ...SOURCE_L7]);
        e.done();
        return source;
      }),
      to: nonEmpty(r, "to", (v, p) => {
        const e = Fields.of(v, p);
        const operation = readEntry(e, "operation", [...OPERATION_L4, ...OPERATION_L7]);
        e.done();
        return operation;
      }),
      when: r.array("when", (v, p) => {
        const c = Fields.of(v, p);
        const out = {
          key: c.string("key", { nonEmpty: true }),
          values: strings(c, "values"),
          notValues: strings(c, "notValues"),
        };
        c.done();
        if (out.values.length === 0 && out.notValues.length === 0) {
          throw new ValidationError(p, `condition ${show(out.key)} needs values or notValues (Istio refuses it too)`);
        }
        return out;
      }),
    };
    r.done();
    return out;
  });
  f.done();
  // Value checks once the shape is known, so a bad port or range names its own field.
  rules.forEach((rule, i) => {
    rule.from.forEach((src, j) => {
      for (const k of ["ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"] as const) {
        src[k].forEach((c, n) => decodeCidr(c, `spec.rules[${i}].from[${j}].source.${k}[${n}]`));
      }
      for (const k of SOURCE_SA) {
        src[k].forEach((sa, n) => serviceAccount(sa, `spec.rules[${i}].from[${j}].source.${k}[${n}]`));
      }
      // As Istio's validation: principals name service accounts too, and the two cannot be combined.
      const identities = [src.principals, src.notPrincipals, src.namespaces, src.notNamespaces];
      if (src.serviceAccounts.length + src.notServiceAccounts.length > 0 && identities.some((l) => l.length > 0)) {
        const which = src.serviceAccounts.length > 0 ? "serviceAccounts" : "notServiceAccounts";
        throw new ValidationError(
          `spec.rules[${i}].from[${j}].source.${which}`,
          "cannot be set with principals or namespaces (Istio refuses it too)",
        );
      }
    });
    rule.to.forEach((op, j) => {
      for (const k of OPERATION_L4) {
        op[k].forEach((p, n) => portOf(p, `spec.rules[${i}].to[${j}].operation.${k}[${n}]`));
      }
    });
    rule.when.forEach((c, j) => {
      const kind = c.key === "remote.ip" ? "cidr" : WHEN_L4[c.key]?.[2];
      const check = kind === "cidr" ? decodeCidr : kind === "port" ? portOf : undefined;
      if (check) {
        c.values.forEach((v, n) => check(v, `spec.rules[${i}].when[${j}].values[${n}]`));
        c.notValues.forEach((v, n) => check(v, `spec.rules[${i}].when[${j}].notValues[${n}]`));
      }
    });
  });
  const out: AuthorizationPolicySpec = { targetRefs, action, rules };
  if (selector) out.selector = selector;
  return out;
}

function portOf(value: string, path: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) {
    throw new ValidationError(path, `expected a port from 1 to 65535, got ${show(value)}`);
  }
  return Number(value);
}

function serviceAccount(value: string, path: string) {
  const [namespace, sa, ...rest] = value.split("/");
  if (rest.length > 0 || !sa || dnsLabel(namespace)) {
    throw new ValidationError(path, `expected NAMESPACE/SERVICE_ACCOUNT, got ${show(value)}`);
  }
  return { namespace, serviceAccount: sa };
}

/** Istio's string patterns: `*` any value present, `x*` prefix, `*x` suffix, else exact. */
export function stringMatch(pattern: string): StringMatch {
  if (pattern === "*") return { presence: true };
  if (pattern.startsWith("*")) return { suffix: pattern.slice(1) };
  if (pattern.endsWith("*")) return { prefix: pattern.slice(0, -1) };
  return { exact: pattern };
}

/** The result of converting one policy for ztunnel. */
export interface Converted {
  /** Undefined for a policy that ztunnel does not receive (targetRefs). */
  authorization?: Authorization;
  scope?: Authorization["scope"];
  /** What the conversion changed, for the operator. */
  warnings: string[];
}

/** Converts an AuthorizationPolicy for ztunnel. */
export function convertAuthorizationPolicy(
  namespace: string,
  name: string,
  annotations: Record<string, string>,
  spec: AuthorizationPolicySpec,
  s: MeshSettings,
): Converted {
  if (spec.targetRefs.length > 0) return { warnings: [] };
  const action = spec.action;
  if (action !== "ALLOW" && action !== "DENY") {
    return { warnings: [`BUG: action ${action} reached ztunnel's conversion`] };
  }
  const warnings: string[] = [];
  const rules: Rule[] = [];
  spec.rules.forEach((rule, i) => {
    const l7: string[] = [];
    const clauses: Clause[] = [];
    // An entry whose every field is L7 loses them all and would become an empty match, which never matches
    // (rbac.ts): in a DENY it must match every connection instead, so its clause, an OR of entries, is left out.
    // (An ALLOW rule with any L7 field is dropped whole below.)
    if (rule.from.length > 0) {
      let onlyL7 = false;
      const matches = rule.from.map((src, j) => {
        const m = emptyMatch();
        m.principals = src.principals.map(stringMatch);
        m.notPrincipals = src.notPrincipals.map(stringMatch);
        m.namespaces = src.namespaces.map(stringMatch);
        m.notNamespaces = src.notNamespaces.map(stringMatch);
        m.sourceIps = src.ipBlocks.map((c) => decodeCidr(c, ""));
        m.notSourceIps = src.notIpBlocks.map((c) => decodeCidr(c, ""));
        // A service account is a name, never a pattern (rbac.ts compares it literally), so one holding `*` can
        // never match: as a positive condition it is one ztunnel cannot check (as the waypoint reads it), as a
        // negative one it always holds and is left out.
        const patterns = src.serviceAccounts.some((v) => v.includes("*"));
        m.serviceAccounts = patterns ? [] : src.serviceAccounts.map((v) => serviceAccount(v, ""));
        m.notServiceAccounts = src.notServiceAccounts.filter((v) => !v.includes("*")).map((v) => serviceAccount(v, ""));
        const found: string[] = SOURCE_L7.filter((k) => src[k].length > 0);
        if (patterns) found.push("serviceAccounts (with '*')");
        for (const k of found) l7.push(`spec.rules[${i}].from[${j}].source.${k}`);
        if (found.length > 0 && isEmptyMatch(m)) onlyL7 = true;
        return m;
      });
      if (!onlyL7) clauses.push({ matches });
    }
    if (rule.to.length > 0) {
      let onlyL7 = false;
      const matches = rule.to.map((op, j) => {
        const m = emptyMatch();
        m.destinationPorts = op.ports.map((p) => Number(p));
        m.notDestinationPorts = op.notPorts.map((p) => Number(p));
        const found = OPERATION_L7.filter((k) => op[k].length > 0);
        for (const k of found) l7.push(`spec.rules[${i}].to[${j}].operation.${k}`);
        if (found.length > 0 && isEmptyMatch(m)) onlyL7 = true;
        return m;
      });
      if (!onlyL7) clauses.push({ matches });
    }
    rule.when.forEach((c, j) => {
      const target = WHEN_L4[c.key];
      if (!target) {
        l7.push(`spec.rules[${i}].when[${j}] (${c.key})`);
        return; // no clause: in a DENY the condition holds for every connection
      }
      const [field, notField, kind] = target;
      const convert = (v: string) => kind === "cidr" ? decodeCidr(v, "") : kind === "port" ? Number(v) : stringMatch(v);
      const m = emptyMatch() as unknown as Record<string, unknown[]>;
      m[field] = c.values.map(convert);
      m[notField] = c.notValues.map(convert);
      clauses.push({ matches: [m as unknown as Match] });
    });
    if (l7.length === 0) {
      rules.push({ clauses });
    } else if (action === "ALLOW") {
      warnings.push(
        `rule ${i} uses ${l7.join(", ")}, which ztunnel cannot check; the rule is dropped and allows nothing ` +
          "(attach the policy to a waypoint with targetRefs to enforce it)",
      );
    } else {
      warnings.push(
        `rule ${i} uses ${l7.join(", ")}, which ztunnel cannot check; the rest of the rule denies all the traffic ` +
          "it could cover (attach the policy to a waypoint with targetRefs to enforce it as written)",
      );
      rules.push({ clauses });
    }
  });
  const scope = spec.selector ? "WORKLOAD_SELECTOR" : namespace === s.rootNamespace ? "GLOBAL" : "NAMESPACE";
  return {
    authorization: {
      name,
      namespace,
      scope,
      action,
      rules,
      dryRun: annotations[LABELS.dryRun] === "true",
    },
    scope,
    warnings,
  };
}

/** What an L7 policy's targets are checked against. */
export interface DeclaredTargets {
  /** The declared waypoints, by `namespace/name`. */
  waypoints: { has(key: string): boolean };
  /** The Services declared in the policy's namespace, by name. */
  services: { has(name: string): boolean };
}

/** The result of converting one policy with `targetRefs` for waypoints. */
export interface ConvertedL7 {
  /** Undefined when nothing is left to enforce (AUDIT, or no target Skiff supports). */
  policy?: L7Policy;
  notes: { severity: "error" | "warning"; message: string }[];
}

/** Converts an AuthorizationPolicy with `targetRefs` for waypoints (see the module's notes). */
export function convertL7Policy(
  namespace: string,
  name: string,
  annotations: Record<string, string>,
  spec: AuthorizationPolicySpec,
  declared: DeclaredTargets,
  s: MeshSettings,
): ConvertedL7 {
  const notes: ConvertedL7["notes"] = [];
  const warn = (message: string) => notes.push({ severity: "warning", message });
  const error = (message: string) => notes.push({ severity: "error", message });
  if (spec.action === "AUDIT") {
    warn("action AUDIT is not supported by Skiff (upstream it only marks requests for logging); the policy is ignored");
    return { notes };
  }
  const targets: L7Target[] = [];
  spec.targetRefs.forEach((ref, i) => {
    const at = `spec.targetRefs[${i}]`;
    let target: L7Target;
    if (ref.namespace !== undefined && ref.namespace !== namespace) {
      return error(
        `${at}: a policy can only target objects of its own namespace, ${namespace}; this target is ignored`,
      );
    } else if (ref.group === GATEWAY_GROUP && ref.kind === "Gateway") {
      target = { kind: "Gateway", namespace, name: ref.name };
      if (!declared.waypoints.has(`${namespace}/${ref.name}`)) {
        warn(`${at}: Gateway ${namespace}/${ref.name} is not a declared waypoint; the policy applies once it is`);
      }
    } else if ((ref.group === "" || ref.group === "core") && ref.kind === "Service") {
      target = { kind: "Service", namespace, name: ref.name };
      if (!declared.services.has(ref.name)) {
        warn(`${at}: Service ${namespace}/${ref.name} is not declared; the policy applies once it is`);
      }
    } else {
      return error(
        `${at}: ${ref.kind} of group ${show(ref.group)} is not a target Skiff supports (a waypoint Gateway or a ` +
          "Service is); this target is ignored",
      );
    }
    if (!targets.some((t) => t.kind === target.kind && t.name === target.name)) targets.push(target);
  });
  if (targets.length === 0) {
    error("no target Skiff supports is left; the policy is not enforced");
    return { notes };
  }
  const dryRun = annotations[LABELS.dryRun] === "true";
  if (spec.action === "CUSTOM") {
    error(
      "action CUSTOM needs an ext-authz provider, which Skiff does not support; as istiod does when it cannot use " +
        "the provider, the policy denies every request to its targets",
    );
    return {
      policy: { name, namespace, targets, action: "DENY", rules: [{ from: [], to: [], when: [] }], dryRun },
      notes,
    };
  }
  const action = spec.action;
  const rules: L7Rule[] = [];
  spec.rules.forEach((rule, i) => {
    const unsupported: string[] = [];
    const from = rule.from.map((src, j) => l7Source(src, `spec.rules[${i}].from[${j}].source`, unsupported, s));
    const to = rule.to.map(l7Operation);
    const when: L7Condition[] = [];
    rule.when.forEach((c, j) => {
      const converted = l7Condition(c);
      if (typeof converted === "string") unsupported.push(`spec.rules[${i}].when[${j}] (${converted})`);
      else when.push(converted);
    });
    if (unsupported.length === 0) {
      rules.push({ from, to, when });
    } else if (action === "ALLOW") {
      warn(
        `rule ${i} uses ${unsupported.join(", ")}, which Skiff's waypoint cannot check; the rule is dropped and ` +
          "allows nothing",
      );
    } else {
      warn(
        `rule ${i} uses ${unsupported.join(", ")}, which Skiff's waypoint cannot check; the rule is kept without ` +
          "them, so it denies all the traffic it could cover",
      );
      rules.push({ from, to, when });
    }
  });
  return { policy: { name, namespace, targets, action, rules, dryRun }, notes };
}

/**
 * A source for the waypoint. What it cannot check is named in `unsupported` and left out of the source, which
 * then matches more (the caller drops an ALLOW rule that has any).
 */
function l7Source(src: RuleSpec["from"][number], at: string, unsupported: string[], s: MeshSettings): L7Source {
  const out: L7Source = {
    principals: [...src.principals],
    notPrincipals: [...src.notPrincipals],
    namespaces: [...src.namespaces],
    notNamespaces: [...src.notNamespaces],
    ipBlocks: [...src.ipBlocks],
    notIpBlocks: [...src.notIpBlocks],
    remoteIpBlocks: [...src.remoteIpBlocks],
    notRemoteIpBlocks: [...src.notRemoteIpBlocks],
  };
  for (const k of ["requestPrincipals", "notRequestPrincipals"] as const) {
    if (src[k].length > 0) unsupported.push(`${at}.${k} (needs RequestAuthentication, which Skiff does not support)`);
  }
  // A service account is a name, never a pattern, so one holding `*` becomes no principal pattern: as a positive
  // condition it is unsupported; as a negative one it can never match and is left out.
  const principal = (v: string) => {
    const sa = serviceAccount(v, "");
    return `${s.trustDomain}/ns/${sa.namespace}/sa/${sa.serviceAccount}`;
  };
  if (src.serviceAccounts.length > 0) {
    if (src.principals.length > 0) unsupported.push(`${at}.serviceAccounts (together with principals)`);
    else if (src.serviceAccounts.some((v) => v.includes("*"))) unsupported.push(`${at}.serviceAccounts (with '*')`);
    else out.principals = src.serviceAccounts.map(principal);
  }
  // None of notPrincipals and none of notServiceAccounts may match: one list says both.
  out.notPrincipals.push(...src.notServiceAccounts.filter((v) => !v.includes("*")).map(principal));
  return out;
}

function l7Operation(op: RuleSpec["to"][number]): L7Operation {
  return {
    hosts: [...op.hosts],
    notHosts: [...op.notHosts],
    ports: op.ports.map(Number),
    notPorts: op.notPorts.map(Number),
    methods: [...op.methods],
    notMethods: [...op.notMethods],
    paths: [...op.paths],
    notPaths: [...op.notPaths],
  };
}

/** A condition for the waypoint, or why it cannot be checked. */
function l7Condition(c: ConditionSpec): L7Condition | string {
  const header = conditionHeader(c.key);
  let key = c.key;
  if (header !== undefined) {
    if (headerNameCheck(header)) return `${c.key}: not a valid header name`;
    key = `request.headers[${header.toLowerCase()}]`;
  } else if (c.key.startsWith("request.auth.")) {
    return `${c.key}: JWT claims need RequestAuthentication, which Skiff does not support`;
  } else if (!(L7_CONDITION_KEYS as readonly string[]).includes(c.key)) {
    return `${c.key}: not a key Skiff's waypoint supports`;
  }
  if (c.values.length === 0 && c.notValues.length === 0) return `${c.key}: neither values nor notValues`;
  return { key, values: [...c.values], notValues: [...c.notValues] };
}
