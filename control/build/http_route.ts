/**
 * HTTPRoute (gateway.networking.k8s.io/v1) read strictly, and resolved for waypoints as Gateway API's mesh
 * profile (GAMMA) and istiod's ambient index attach it: a route whose parent is a Service applies to the traffic
 * for that Service, at its waypoint. Parents and backends become service keys `namespace/hostname`, durations
 * milliseconds, so the waypoint only evaluates.
 *
 * - Gateway API's limits hold: 32 parents, 16 rules, 64 matches a rule and 128 a route, 16 backends, 16 filters;
 *   a match without a path matches the prefix `/`, and a route without rules has the one rule the API server
 *   defaults (prefix `/`, no backend: answered 500).
 * - Filters: RequestHeaderModifier and ResponseHeaderModifier. Any other filter, per-backend filters and session
 *   persistence are refused with the field named, never silently skipped: a route that redirects or rewrites
 *   must not quietly forward unchanged.
 * - `hostnames` are read and not used, as upstream ignores them for Service parents.
 * - A Gateway parent is ignored with a note (Skiff's waypoints take routes attached to Services). A Service parent
 *   in another namespace is a GAMMA consumer route, which applies only to that namespace's clients; Skiff cannot
 *   scope a route so, and ignores the parent with a note rather than apply it to every client.
 * - A backend in another namespace needs a ReferenceGrant, which Skiff does not read: as Gateway API says for a
 *   reference that is not permitted, the backend stays with a problem and its share of requests is answered 500.
 *   So does a backend Service that is not declared or lacks the port.
 *
 * @module
 */

import {
  checkMatchTotal,
  checkTimeouts,
  decodeHeaderModifier,
  decodeRouteMatch,
  type HeaderModifier,
  type HttpRoute,
  MAX_RETRY_ATTEMPTS,
  MAX_WEIGHT,
  type RetryPolicy,
  ROUTE_LIMITS,
  type RouteBackend,
  type RouteMatch,
  type RouteParent,
  type RouteRule,
} from "../../mesh/l7.ts";
import { checkInt, checkOneOf, checkString, dnsLabel, Fields, show, ValidationError } from "../../mesh/validate.ts";
import { type MeshSettings, serviceHostname } from "./common.ts";
import type { ServiceSpec } from "./services.ts";

/** Gateway API's group. */
export const GATEWAY_GROUP = "gateway.networking.k8s.io";

/** A `parentRefs` entry, as written (defaults filled). */
export interface ParentRefSpec {
  group: string;
  kind: string;
  name: string;
  namespace?: string;
  port?: number;
  sectionName?: string;
}

/** A `backendRefs` entry, as written (defaults filled). Only Service backends are read. */
export interface BackendRefSpec {
  name: string;
  namespace?: string;
  port: number;
  weight: number;
}

/** A rule, in the model's form but for its backends, which are still references. */
export type RouteRuleSpec = Omit<RouteRule, "backends"> & { backendRefs: BackendRefSpec[] };

/** An HTTPRoute's spec, as read. */
export interface HttpRouteSpec {
  parentRefs: ParentRefSpec[];
  hostnames: string[];
  rules: RouteRuleSpec[];
}

/**
 * What a rule's `retry` means when a field is left out: Istio's default retry policy (two retries, 503, and
 * Envoy's 25 ms base backoff), which Gateway API leaves to the implementation.
 */
export const DEFAULT_RETRY: Readonly<RetryPolicy> = { attempts: 2, codes: [503], backoffMs: 25 };

const DURATION = /^([0-9]{1,5}(h|m|s|ms)){1,4}$/;
const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };

/**
 * Parses a Gateway API duration (GEP-2257): one to four components of up to five digits and a unit `h`, `m`,
 * `s` or `ms`, summed as Go's `time.ParseDuration` does (`1h30m`, `500ms`, `10s`; `0s` is zero).
 * @returns milliseconds.
 * @throws {ValidationError} naming `path`.
 */
export function parseGatewayDuration(value: unknown, path: string): number {
  const text = checkString(value, path, { max: 32 });
  if (!DURATION.test(text)) {
    throw new ValidationError(path, `expected a duration such as 10s, 500ms or 1h30m, got ${show(text)}`);
  }
  let ms = 0;
  for (const [, n, unit] of text.matchAll(/([0-9]+)(ms|h|m|s)/g)) ms += Number(n) * UNIT_MS[unit];
  return ms;
}

const HOSTNAME = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function readParentRef(value: unknown, path: string): ParentRefSpec {
  const f = Fields.of(value, path);
  const ref: ParentRefSpec = {
    group: f.string("group", { default: GATEWAY_GROUP, max: 253 }),
    kind: f.string("kind", { default: "Gateway", max: 63 }),
    name: f.string("name", { nonEmpty: true, max: 253 }),
  };
  const namespace = f.optionalString("namespace", { check: dnsLabel });
  if (namespace) ref.namespace = namespace;
  if (f.has("port")) ref.port = f.int("port", { min: 1, max: 65535 });
  const sectionName = f.optionalString("sectionName", { max: 253 });
  if (sectionName) ref.sectionName = sectionName;
  f.done();
  return ref;
}

const FILTER_FIELDS = {
  RequestHeaderModifier: "requestHeaderModifier",
  ResponseHeaderModifier: "responseHeaderModifier",
  RequestMirror: "requestMirror",
  RequestRedirect: "requestRedirect",
  URLRewrite: "urlRewrite",
  ExtensionRef: "extensionRef",
  CORS: "cors",
} as const;
type FilterType = keyof typeof FILTER_FIELDS;

function readFilter(value: unknown, path: string): { type: FilterType; modifier: HeaderModifier } {
  const f = Fields.of(value, path);
  const type = checkOneOf(f.raw("type"), f.at("type"), Object.keys(FILTER_FIELDS) as FilterType[]);
  if (type !== "RequestHeaderModifier" && type !== "ResponseHeaderModifier") {
    throw new ValidationError(
      f.at("type"),
      `${type} is not supported by Skiff yet (RequestHeaderModifier and ResponseHeaderModifier are)`,
    );
  }
  for (const [t, field] of Object.entries(FILTER_FIELDS)) {
    if (t !== type && f.raw(field) !== undefined) {
      throw new ValidationError(f.at(field), `must not be set in a filter of type ${type}`);
    }
  }
  const modifier = f.optionalObject(FILTER_FIELDS[type], decodeHeaderModifier);
  if (!modifier) throw new ValidationError(f.at(FILTER_FIELDS[type]), `is required in a filter of type ${type}`);
  f.done();
  return { type, modifier };
}

function readBackendRef(value: unknown, path: string): BackendRefSpec {
  const f = Fields.of(value, path);
  const group = f.string("group", { default: "" });
  if (group !== "" && group !== "core") {
    throw new ValidationError(f.at("group"), `backends of group ${show(group)} are not supported by Skiff yet ("" is)`);
  }
  const kind = f.string("kind", { default: "Service" });
  if (kind !== "Service") {
    throw new ValidationError(f.at("kind"), `${show(kind)} backends are not supported by Skiff yet (Service is)`);
  }
  const ref = { name: f.string("name", { check: dnsLabel }) } as BackendRefSpec;
  const namespace = f.optionalString("namespace", { check: dnsLabel });
  if (namespace) ref.namespace = namespace;
  if (!f.has("port")) throw new ValidationError(f.at("port"), "is required for a Service backend");
  ref.port = f.int("port", { min: 1, max: 65535 });
  ref.weight = f.int("weight", { min: 0, max: MAX_WEIGHT, default: 1 });
  const filters = f.raw("filters");
  if (filters !== undefined && !(Array.isArray(filters) && filters.length === 0)) {
    throw new ValidationError(
      f.at("filters"),
      "filters on a backend are not supported by Skiff yet (filters on the rule are)",
    );
  }
  f.done();
  return ref;
}

function readRetry(value: unknown, path: string): RetryPolicy {
  const f = Fields.of(value, path);
  const attempts = f.int("attempts", { min: 0, max: MAX_RETRY_ATTEMPTS, default: DEFAULT_RETRY.attempts });
  const codes = f.array("codes", (v, p) => {
    const code = checkInt(v, p, 400, 599);
    if (code < 500) throw new ValidationError(p, `retrying on ${code} is not supported by Skiff (5xx codes are)`);
    return code;
  }, { max: 100 });
  const backoffMs = f.has("backoff")
    ? parseGatewayDuration(f.raw("backoff"), f.at("backoff"))
    : DEFAULT_RETRY.backoffMs;
  f.done();
  return { attempts, codes: codes.length > 0 ? [...new Set(codes)] : [...DEFAULT_RETRY.codes], backoffMs };
}

/** The rule the API server fills in for a route without rules: every request, no backend (answered 500). */
const DEFAULT_RULE: RouteRuleSpec = {
  matches: [{ path: { type: "PathPrefix", value: "/" }, headers: [], queryParams: [] }],
  backendRefs: [],
};

function readRule(value: unknown, path: string): RouteRuleSpec {
  const f = Fields.of(value, path);
  f.optionalString("name", { max: 253 }); // a rule's name (Gateway API 1.2) only names it in status
  const matches = f.array("matches", (v, p): RouteMatch => {
    const { path: given, ...rest } = decodeRouteMatch(v, p);
    return { path: given ?? { type: "PathPrefix", value: "/" }, ...rest };
  }, { max: ROUTE_LIMITS.matchesPerRule });
  const rule = { matches } as RouteRuleSpec;
  f.array("filters", readFilter, { max: ROUTE_LIMITS.filters }).forEach(({ type, modifier }, i) => {
    const field = type === "RequestHeaderModifier" ? "requestHeaders" : "responseHeaders";
    if (rule[field]) {
      throw new ValidationError(`${f.at("filters")}[${i}].type`, `${type} is given twice; a rule takes one`);
    }
    rule[field] = modifier;
  });
  rule.backendRefs = f.array("backendRefs", readBackendRef, { max: ROUTE_LIMITS.backends });
  f.optionalObject("timeouts", (v, p) => {
    const t = Fields.of(v, p);
    // "0s" turns a timeout off (Gateway API): no timeout, as when it is left out.
    const request = t.has("request") ? parseGatewayDuration(t.raw("request"), t.at("request")) || undefined : undefined;
    const backend = t.has("backendRequest")
      ? parseGatewayDuration(t.raw("backendRequest"), t.at("backendRequest")) || undefined
      : undefined;
    t.done();
    checkTimeouts(request, backend, t.at("backendRequest"));
    if (request) rule.timeoutMs = request;
    if (backend) rule.backendTimeoutMs = backend;
  });
  const retry = f.optionalObject("retry", readRetry);
  if (retry) rule.retry = retry;
  if (f.raw("sessionPersistence") !== undefined) {
    throw new ValidationError(f.at("sessionPersistence"), "is not supported by Skiff yet");
  }
  f.done();
  return rule;
}

/**
 * Decodes an HTTPRoute's spec.
 * @throws {ValidationError} naming the field (a path from the document's root).
 */
export function readHttpRoute(doc: Record<string, unknown>): HttpRouteSpec {
  const f = Fields.of(doc.spec ?? {}, "spec");
  const parentRefs = f.array("parentRefs", readParentRef, { max: ROUTE_LIMITS.parents });
  const hostnames = f.array("hostnames", (v, p) =>
    checkString(v, p, {
      max: 253,
      check: (h) => (HOSTNAME.test(h) ? undefined : "expected a hostname, optionally with a leading '*.'"),
    }), { max: ROUTE_LIMITS.hostnames });
  // Absent rules are the API server's default rule; an empty list stays empty (no request matches).
  const rules = f.raw("rules") === undefined
    ? [structuredClone(DEFAULT_RULE)]
    : f.array("rules", readRule, { max: ROUTE_LIMITS.rules });
  f.done();
  if (parentRefs.length === 0) throw new ValidationError("spec.parentRefs", "an HTTPRoute needs a parent");
  checkMatchTotal(rules, "spec.rules");
  return { parentRefs, hostnames, rules };
}

/** The result of resolving a route: the route (undefined when no parent is left) and what the operator should know. */
export interface ResolvedRoute {
  route?: HttpRoute;
  warnings: string[];
}

/** The TCP port of `spec` with this number or name. */
function servicePort(spec: ServiceSpec, by: { port?: number; name?: string }) {
  return spec.ports.find((p) =>
    p.protocol.toUpperCase() === "TCP" && (by.port === undefined || p.port === by.port) &&
    (by.name === undefined || p.name === by.name)
  );
}

/**
 * Resolves a route of namespace `namespace` for the waypoints. `services` are the Services declared in that
 * namespace, by name: parents and backends can only be found there (see the module's notes).
 */
export function resolveHttpRoute(
  namespace: string,
  name: string,
  spec: HttpRouteSpec,
  services: ReadonlyMap<string, ServiceSpec>,
  s: MeshSettings,
): ResolvedRoute {
  const warnings: string[] = [];
  const parents: RouteParent[] = [];
  spec.parentRefs.forEach((ref, i) => {
    const at = `spec.parentRefs[${i}]`;
    const ns = ref.namespace ?? namespace;
    const ignored = (why: string) => warnings.push(`${at}: ${why}; this parent is ignored`);
    if (ref.group === GATEWAY_GROUP && ref.kind === "Gateway") {
      return ignored(`Gateway ${ns}/${ref.name}: Skiff's waypoints take routes attached to Services`);
    }
    if ((ref.group !== "" && ref.group !== "core") || ref.kind !== "Service") {
      return ignored(`${ref.kind} of group ${show(ref.group)} is not a parent Skiff supports (Service is)`);
    }
    if (ns !== namespace) {
      return ignored(
        `Service ${ns}/${ref.name} is in another namespace: such a consumer route applies only to this ` +
          "namespace's clients, which Skiff does not support",
      );
    }
    const svc = services.get(ref.name);
    if (!svc) return ignored(`Service ${ns}/${ref.name} is not declared`);
    let port = ref.port;
    if (ref.sectionName !== undefined) {
      const named = servicePort(svc, { name: ref.sectionName, port: ref.port });
      if (!named) {
        return ignored(
          `Service ${ns}/${ref.name} has no TCP port named ${show(ref.sectionName)}${
            ref.port ? ` with port ${ref.port}` : ""
          }`,
        );
      }
      port = named.port;
    } else if (port !== undefined && !servicePort(svc, { port })) {
      return ignored(`Service ${ns}/${ref.name} has no TCP port ${port}`);
    }
    const parent: RouteParent = { service: `${ns}/${serviceHostname(ref.name, ns, s)}` };
    if (port !== undefined) parent.port = port;
    if (!parents.some((p) => p.service === parent.service && p.port === parent.port)) parents.push(parent);
  });
  if (parents.length === 0) {
    warnings.push("no parent Service is left, so the route applies to no traffic");
    return { warnings };
  }
  const rules = spec.rules.map(({ backendRefs, ...rule }, i): RouteRule => ({
    ...rule,
    backends: backendRefs.map((ref, j): RouteBackend => {
      const ns = ref.namespace ?? namespace;
      const backend: RouteBackend = {
        service: `${ns}/${serviceHostname(ref.name, ns, s)}`,
        port: ref.port,
        weight: ref.weight,
      };
      const svc = ns === namespace ? services.get(ref.name) : undefined;
      const problem = ns !== namespace
        ? `Service ${ns}/${ref.name} is in another namespace, which needs a ReferenceGrant that Skiff does not read`
        : !svc
        ? `Service ${ns}/${ref.name} is not declared`
        : !servicePort(svc, { port: ref.port })
        ? `Service ${ns}/${ref.name} has no TCP port ${ref.port}`
        : undefined;
      if (problem) {
        backend.problem = problem;
        warnings.push(`spec.rules[${i}].backendRefs[${j}]: ${problem}; its share of requests is answered 500`);
      }
      return backend;
    }),
  }));
  return { route: { name, namespace, parents, rules }, warnings };
}
