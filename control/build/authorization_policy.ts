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
 *   keeps the rest, so it denies all the traffic it could cover. Either way a warning names the field;
 * - CUSTOM and AUDIT are refused.
 *
 * The decoded spec keeps the L7 fields: the waypoint enforces them.
 *
 * @module
 */

import {
  type Authorization,
  type Clause,
  emptyMatch,
  type Match,
  type Rule,
  type StringMatch,
} from "../../mesh/authorization.ts";
import { decodeCidr } from "../../mesh/net.ts";
import { checkString, dnsLabel, Fields, show, ValidationError } from "../../mesh/validate.ts";
import { LABELS, type MeshSettings, stringMap } from "./common.ts";

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
  action: "ALLOW" | "DENY";
  rules: RuleSpec[];
}

const strings = (f: Fields, k: string) => f.array(k, (v, p) => checkString(v, p, { nonEmpty: true, max: 1024 }));

function readFields<K extends string>(value: unknown, path: string, keys: readonly K[]): Record<K, string[]> {
  const f = Fields.of(value ?? {}, path);
  const out = {} as Record<K, string[]>;
  for (const k of keys) out[k] = strings(f, k);
  f.done();
  return out;
}

function readTargetRef(value: unknown, path: string): PolicyTargetRef {
  const f = Fields.of(value, path);
  const out = {
    group: f.string("group", { default: "" }),
    kind: f.string("kind", { nonEmpty: true }),
    name: f.string("name", { nonEmpty: true, max: 253 }),
  };
  f.optionalString("namespace", { check: dnsLabel });
  f.done();
  return out;
}

/** Decodes an AuthorizationPolicy's spec. */
export function readAuthorizationPolicy(doc: Record<string, unknown>): AuthorizationPolicySpec {
  const f = Fields.of(doc.spec ?? {}, "spec");
  const action = f.string("action", { default: "ALLOW" });
  if (action === "CUSTOM" || action === "AUDIT") {
    throw new ValidationError("spec.action", `${action} is not supported by Skiff (ALLOW and DENY are)`);
  }
  if (action !== "ALLOW" && action !== "DENY") {
    throw new ValidationError("spec.action", `expected ALLOW or DENY, got ${show(action)}`);
  }
  f.optionalString("provider"); // only meaningful with CUSTOM, refused above
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
  const rules = f.array("rules", (value, path): RuleSpec => {
    const r = Fields.of(value ?? {}, path);
    const out: RuleSpec = {
      from: r.array("from", (v, p) => {
        const e = Fields.of(v, p);
        const source = readFields(e.raw("source"), e.at("source"), [...SOURCE_L4, ...SOURCE_SA, ...SOURCE_L7]);
        e.done();
        return source;
      }),
      to: r.array("to", (v, p) => {
        const e = Fields.of(v, p);
        const operation = readFields(e.raw("operation"), e.at("operation"), [...OPERATION_L4, ...OPERATION_L7]);
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
    });
    rule.to.forEach((op, j) => {
      for (const k of OPERATION_L4) {
        op[k].forEach((p, n) => portOf(p, `spec.rules[${i}].to[${j}].operation.${k}[${n}]`));
      }
    });
    rule.when.forEach((c, j) => {
      const kind = WHEN_L4[c.key]?.[2];
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
  const warnings: string[] = [];
  const rules: Rule[] = [];
  spec.rules.forEach((rule, i) => {
    const l7: string[] = [];
    const clauses: Clause[] = [];
    if (rule.from.length > 0) {
      clauses.push({
        matches: rule.from.map((src, j) => {
          const m = emptyMatch();
          m.principals = src.principals.map(stringMatch);
          m.notPrincipals = src.notPrincipals.map(stringMatch);
          m.namespaces = src.namespaces.map(stringMatch);
          m.notNamespaces = src.notNamespaces.map(stringMatch);
          m.sourceIps = src.ipBlocks.map((c) => decodeCidr(c, ""));
          m.notSourceIps = src.notIpBlocks.map((c) => decodeCidr(c, ""));
          m.serviceAccounts = src.serviceAccounts.map((v) => serviceAccount(v, ""));
          m.notServiceAccounts = src.notServiceAccounts.map((v) => serviceAccount(v, ""));
          for (const k of SOURCE_L7) if (src[k].length > 0) l7.push(`spec.rules[${i}].from[${j}].source.${k}`);
          return m;
        }),
      });
    }
    if (rule.to.length > 0) {
      clauses.push({
        matches: rule.to.map((op, j) => {
          const m = emptyMatch();
          m.destinationPorts = op.ports.map((p) => Number(p));
          m.notDestinationPorts = op.notPorts.map((p) => Number(p));
          for (const k of OPERATION_L7) if (op[k].length > 0) l7.push(`spec.rules[${i}].to[${j}].operation.${k}`);
          return m;
        }),
      });
    }
    rule.when.forEach((c, j) => {
      const target = WHEN_L4[c.key];
      if (!target) {
        l7.push(`spec.rules[${i}].when[${j}] (${c.key})`);
        return;
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
    } else if (spec.action === "ALLOW") {
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
      action: spec.action,
      rules,
      dryRun: annotations[LABELS.dryRun] === "true",
    },
    scope,
    warnings,
  };
}
