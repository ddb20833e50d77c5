/**
 * The L7 model waypoints receive: HTTP routes (from Gateway API HTTPRoute attached to a Service) and L7
 * authorization policies (AuthorizationPolicy with `targetRefs` to a waypoint Gateway or a Service). The control
 * plane resolves names (parents and backends become service keys `namespace/hostname`, durations become
 * milliseconds) so that the waypoint only evaluates. Field names follow the Kubernetes objects they come from.
 *
 * The decoders here ({@link decodeHttpRoute}, {@link decodeL7Policy}) are the only way a streamed document becomes
 * one of these objects: every field is checked and named by its path, unknown fields are refused, header names
 * are lowercased, and regular expressions must compile. Gateway API's list limits ({@link ROUTE_LIMITS}) hold
 * on the wire as in the manifests.
 *
 * @module
 */

import { decodeCidr } from "./net.ts";
import { type Check, checkInt, checkOneOf, checkString, dnsLabel, Fields, show, ValidationError } from "./validate.ts";
import { serviceKeyCheck } from "./workload.ts";

/**
 * How a string is matched in a route (Gateway API's match types). A `RegularExpression` is checked to compile as
 * a JavaScript `RegExp`.
 */
export type RouteStringMatchType = "Exact" | "RegularExpression";

/** A path match; `PathPrefix` matches whole segments (`/foo` matches `/foo` and `/foo/x`, not `/foobar`). */
export interface PathMatch {
  type: "Exact" | "PathPrefix" | "RegularExpression";
  value: string;
}

/** A header match; `name` is lowercase. */
export interface HeaderMatch {
  name: string;
  type: RouteStringMatchType;
  value: string;
}

/** A query parameter match; `name` is compared exactly (case-sensitive). */
export interface QueryParamMatch {
  name: string;
  type: RouteStringMatchType;
  value: string;
}

/** One match of a route rule: every field given must match. */
export interface RouteMatch {
  path?: PathMatch;
  headers: HeaderMatch[];
  queryParams: QueryParamMatch[];
  /** Upper-case HTTP method. */
  method?: string;
}

/** A header to set or add. `name` is lowercase. */
export interface HeaderValue {
  name: string;
  value: string;
}

/** Gateway API's HTTPHeaderFilter: set (replace), add (append), remove (by lowercase name). */
export interface HeaderModifier {
  set: HeaderValue[];
  add: HeaderValue[];
  remove: string[];
}

/**
 * A backend of a rule. `service` is the key `namespace/hostname` of the Service; `problem` is set when the
 * reference could not be resolved (the share of requests it would get is answered 500, as Gateway API says).
 */
export interface RouteBackend {
  service: string;
  port: number;
  weight: number;
  problem?: string;
}

/** Retries of a rule. */
export interface RetryPolicy {
  /** Retries after the first attempt. */
  attempts: number;
  /** Response codes that are retried (5xx codes). Connect failures are always retried. */
  codes: number[];
  backoffMs: number;
}

/** A rule of a route. */
export interface RouteRule {
  /** The rule applies when any match does; an empty list matches every request (Gateway API's default `/`). */
  matches: RouteMatch[];
  requestHeaders?: HeaderModifier;
  responseHeaders?: HeaderModifier;
  /** Empty: the rule answers 500. */
  backends: RouteBackend[];
  /** The whole request, retries included. */
  timeoutMs?: number;
  /** Each attempt to a backend. */
  backendTimeoutMs?: number;
  retry?: RetryPolicy;
}

/** What a route attaches to: a Service (key `namespace/hostname`), optionally one of its ports. */
export interface RouteParent {
  service: string;
  port?: number;
}

/** An HTTPRoute, resolved. Resource name `namespace/name`. */
export interface HttpRoute {
  name: string;
  namespace: string;
  parents: RouteParent[];
  rules: RouteRule[];
}

/**
 * A string condition of an AuthorizationPolicy as written: `*` any non-empty value, `x*` a prefix, `*x` a
 * suffix, anything else exact. Kept as written; the evaluator interprets it.
 */
export type PolicyString = string;

/** `from.source` of a rule. Empty lists are unset. */
export interface L7Source {
  principals: PolicyString[];
  notPrincipals: PolicyString[];
  namespaces: PolicyString[];
  notNamespaces: PolicyString[];
  /** CIDRs or IPs, matched against the client's address (ztunnel's `Forwarded: for=`). */
  ipBlocks: string[];
  notIpBlocks: string[];
  remoteIpBlocks: string[];
  notRemoteIpBlocks: string[];
}

/** `to.operation` of a rule. Empty lists are unset. */
export interface L7Operation {
  hosts: PolicyString[];
  notHosts: PolicyString[];
  ports: number[];
  notPorts: number[];
  methods: PolicyString[];
  notMethods: PolicyString[];
  paths: PolicyString[];
  notPaths: PolicyString[];
}

/**
 * A `when` condition; at least one of `values` and `notValues` is set. Keys supported: `request.headers[NAME]` (NAME lowercase), `source.ip`, `remote.ip`,
 * `source.namespace`, `source.principal`, `destination.ip`, `destination.port`, `request.method` is not a key
 * upstream and is refused by the control plane.
 */
export interface L7Condition {
  key: string;
  values: PolicyString[];
  notValues: PolicyString[];
}

/** A rule: any `from` AND any `to` AND every `when`; an absent part always matches. */
export interface L7Rule {
  from: L7Source[];
  to: L7Operation[];
  when: L7Condition[];
}

/** What an L7 policy is attached to. */
export interface L7Target {
  kind: "Gateway" | "Service";
  namespace: string;
  name: string;
}

/**
 * An AuthorizationPolicy with targetRefs. `rules` empty never matches (so an ALLOW with no rules allows
 * nothing). Resource name `namespace/name`.
 */
export interface L7Policy {
  name: string;
  namespace: string;
  targets: L7Target[];
  action: "ALLOW" | "DENY";
  rules: L7Rule[];
  /** Evaluated and logged, never enforced (`istio.io/dry-run`). */
  dryRun: boolean;
}

/** Gateway API's limits on an HTTPRoute (`apis/v1/httproute_types.go`), held on the wire as in the manifests. */
export const ROUTE_LIMITS = {
  parents: 32,
  hostnames: 16,
  rules: 16,
  matchesPerRule: 64,
  /** Across all the rules of a route. */
  matchesPerRoute: 128,
  headers: 16,
  queryParams: 16,
  filters: 16,
  /** Entries in each of `set`, `add` and `remove` of a header filter. */
  headerModifier: 16,
  backends: 16,
} as const;

/** The methods a route may match (Gateway API's `HTTPMethod`). */
export const HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] as const;
/** Largest backend weight (Gateway API's). */
export const MAX_WEIGHT = 1_000_000;
/** Most retries of a rule Skiff accepts: more would only multiply the load on a failing backend. */
export const MAX_RETRY_ATTEMPTS = 100;
/** Most targets of an L7 policy (Istio's limit on `targetRefs`). */
export const MAX_POLICY_TARGETS = 16;

const LIST_MAX = 4096;
const MAX_MS = Number.MAX_SAFE_INTEGER;
const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/** An HTTP header or query parameter name: an RFC 9110 token of at most 256 characters. */
export const headerNameCheck: Check<string> = (v) =>
  v.length <= 256 && HEADER_NAME.test(v)
    ? undefined
    : "expected an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, at most 256 characters)";

/** A value written into a header: no CR, LF or NUL, which would split it into another header. */
const headerValueCheck: Check<string> = (v) => (/[\r\n\0]/.test(v) ? "must not contain CR, LF or NUL" : undefined);

/** A resource name: 1 to 253 characters, no `/` (it is half of the key `namespace/name`). */
const nameCheck: Check<string> = (v) =>
  v.length > 0 && v.length <= 253 && !v.includes("/") ? undefined : "expected a name of 1 to 253 characters, no '/'";

/** What is wrong with a regular expression, or undefined when it compiles. */
export function regexProblem(value: string): string | undefined {
  try {
    new RegExp(value);
    return undefined;
  } catch (error) {
    return `is not a valid regular expression (${(error as Error).message})`;
  }
}

const PATH_CHARS = /^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$/;

/**
 * What is wrong with the value of a path match, by Gateway API's rules (the CEL validations of `HTTPPathMatch`):
 * an `Exact` or `PathPrefix` value is an absolute, normalized path; a `RegularExpression` compiles.
 */
export function pathValueProblem(type: PathMatch["type"], value: string): string | undefined {
  if (type === "RegularExpression") return regexProblem(value);
  if (!value.startsWith("/")) return "must be an absolute path (start with '/')";
  if (value.includes("//")) return "must not contain '//'";
  if (value.includes("/./") || value.endsWith("/.")) return "must not contain a '.' segment";
  if (value.includes("/../") || value.endsWith("/..")) return "must not contain a '..' segment";
  if (/%2f/i.test(value)) return "must not contain an encoded '/' (%2F)";
  if (value.includes("#")) return "must not contain '#'";
  if (!PATH_CHARS.test(value)) return "must contain only characters valid in a URL path, others percent-encoded";
  return undefined;
}

/** Refuses a second entry of one name in `items` (read from the list at `path`). */
function uniqueNames<T extends { name: string }>(items: T[], path: string): T[] {
  const seen = new Set<string>();
  items.forEach((x, i) => {
    if (seen.has(x.name)) throw new ValidationError(`${path}[${i}].name`, `${show(x.name)} is listed twice`);
    seen.add(x.name);
  });
  return items;
}

/** Decodes a {@link PathMatch}; as Gateway API, the type defaults to `PathPrefix` and the value to `/`. */
export function decodePathMatch(value: unknown, path: string): PathMatch {
  const f = Fields.of(value, path);
  const type = f.oneOf("type", ["Exact", "PathPrefix", "RegularExpression"] as const, "PathPrefix");
  const out = { type, value: f.string("value", { default: "/", max: 1024, check: (v) => pathValueProblem(type, v) }) };
  f.done();
  return out;
}

function decodeStringMatch(value: unknown, path: string, header: boolean): HeaderMatch {
  const f = Fields.of(value, path);
  const type = f.oneOf("type", ["Exact", "RegularExpression"] as const, "Exact");
  const name = f.string("name", { nonEmpty: true, check: headerNameCheck });
  const out = {
    // Header names compare case-insensitively (RFC 9110), query parameter names exactly (Gateway API).
    name: header ? name.toLowerCase() : name,
    type,
    value: f.string("value", {
      max: header ? 4096 : 1024,
      check: type === "RegularExpression" ? regexProblem : undefined,
    }),
  };
  f.done();
  return out;
}

/**
 * Decodes a {@link RouteMatch}: header names are lowercased, and a name may appear once among the headers and
 * once among the query parameters. An absent path stays absent.
 */
export function decodeRouteMatch(value: unknown, path: string): RouteMatch {
  const f = Fields.of(value, path);
  const m = {} as RouteMatch;
  const p = f.optionalObject("path", decodePathMatch);
  if (p) m.path = p;
  m.headers = uniqueNames(
    f.array("headers", (v, p) => decodeStringMatch(v, p, true), { max: ROUTE_LIMITS.headers }),
    f.at("headers"),
  );
  m.queryParams = uniqueNames(
    f.array("queryParams", (v, p): QueryParamMatch => decodeStringMatch(v, p, false), {
      max: ROUTE_LIMITS.queryParams,
    }),
    f.at("queryParams"),
  );
  const method = f.raw("method");
  if (method !== undefined) m.method = checkOneOf(method, f.at("method"), HTTP_METHODS);
  f.done();
  return m;
}

function decodeHeaderValue(value: unknown, path: string): HeaderValue {
  const f = Fields.of(value, path);
  const out = {
    name: f.string("name", { nonEmpty: true, check: headerNameCheck }).toLowerCase(),
    value: f.string("value", { nonEmpty: true, max: 4096, check: headerValueCheck }),
  };
  f.done();
  return out;
}

/** Decodes a {@link HeaderModifier} (Gateway API's `HTTPHeaderFilter`); names are lowercased and unique. */
export function decodeHeaderModifier(value: unknown, path: string): HeaderModifier {
  const f = Fields.of(value, path);
  const max = ROUTE_LIMITS.headerModifier;
  const out: HeaderModifier = {
    set: uniqueNames(f.array("set", decodeHeaderValue, { max }), f.at("set")),
    add: uniqueNames(f.array("add", decodeHeaderValue, { max }), f.at("add")),
    remove: f.array("remove", (v, p) => checkString(v, p, { nonEmpty: true, check: headerNameCheck }).toLowerCase(), {
      max,
    }),
  };
  f.done();
  out.remove.forEach((name, i) => {
    if (out.remove.indexOf(name) !== i) {
      throw new ValidationError(`${f.at("remove")}[${i}]`, `${show(name)} is listed twice`);
    }
  });
  return out;
}

function decodeRouteBackend(value: unknown, path: string): RouteBackend {
  const f = Fields.of(value, path);
  const out: RouteBackend = {
    service: f.string("service", { check: serviceKeyCheck }),
    port: f.int("port", { min: 1, max: 65535 }),
    weight: f.int("weight", { min: 0, max: MAX_WEIGHT, default: 1 }),
  };
  const problem = f.optionalString("problem", { max: 1024 });
  if (problem) out.problem = problem;
  f.done();
  return out;
}

/** Decodes a {@link RetryPolicy}: codes are distinct 5xx codes. */
export function decodeRetryPolicy(value: unknown, path: string): RetryPolicy {
  const f = Fields.of(value, path);
  const out: RetryPolicy = {
    attempts: f.int("attempts", { min: 0, max: MAX_RETRY_ATTEMPTS }),
    codes: f.array("codes", (v, p) => checkInt(v, p, 500, 599), { max: 100 }),
    backoffMs: f.int("backoffMs", { min: 0, max: MAX_MS }),
  };
  f.done();
  out.codes.forEach((c, i) => {
    if (out.codes.indexOf(c) !== i) throw new ValidationError(`${f.at("codes")}[${i}]`, `${c} is listed twice`);
  });
  return out;
}

/**
 * Checks Gateway API's rule on the two timeouts: an attempt cannot be allowed longer than the whole request.
 * @throws {ValidationError} naming `path` (the backend timeout).
 */
export function checkTimeouts(requestMs: number | undefined, backendMs: number | undefined, path: string): void {
  if (requestMs !== undefined && backendMs !== undefined && backendMs > requestMs) {
    throw new ValidationError(path, `the backend request timeout cannot be longer than the request timeout`);
  }
}

/**
 * Checks Gateway API's limit on the matches of a whole route.
 * @throws {ValidationError} naming `path` (the rules).
 */
export function checkMatchTotal(rules: { matches: unknown[] }[], path: string): void {
  const total = rules.reduce((n, r) => n + r.matches.length, 0);
  if (total > ROUTE_LIMITS.matchesPerRoute) {
    throw new ValidationError(
      path,
      `have ${total} matches in all, at most ${ROUTE_LIMITS.matchesPerRoute} are allowed in one route`,
    );
  }
}

function decodeRouteRule(value: unknown, path: string): RouteRule {
  const f = Fields.of(value, path);
  const r = { matches: f.array("matches", decodeRouteMatch, { max: ROUTE_LIMITS.matchesPerRule }) } as RouteRule;
  const request = f.optionalObject("requestHeaders", decodeHeaderModifier);
  if (request) r.requestHeaders = request;
  const response = f.optionalObject("responseHeaders", decodeHeaderModifier);
  if (response) r.responseHeaders = response;
  r.backends = f.array("backends", decodeRouteBackend, { max: ROUTE_LIMITS.backends });
  if (f.has("timeoutMs")) r.timeoutMs = f.int("timeoutMs", { min: 1, max: MAX_MS });
  if (f.has("backendTimeoutMs")) r.backendTimeoutMs = f.int("backendTimeoutMs", { min: 1, max: MAX_MS });
  const retry = f.optionalObject("retry", decodeRetryPolicy);
  if (retry) r.retry = retry;
  f.done();
  checkTimeouts(r.timeoutMs, r.backendTimeoutMs, f.at("backendTimeoutMs"));
  return r;
}

function decodeRouteParent(value: unknown, path: string): RouteParent {
  const f = Fields.of(value, path);
  const out: RouteParent = { service: f.string("service", { check: serviceKeyCheck }) };
  if (f.has("port")) out.port = f.int("port", { min: 1, max: 65535 });
  f.done();
  return out;
}

/**
 * Decodes an {@link HttpRoute}.
 * @throws {ValidationError} naming the first bad field under `path`.
 */
export function decodeHttpRoute(value: unknown, path = "httpRoute"): HttpRoute {
  const f = Fields.of(value, path);
  const r: HttpRoute = {
    name: f.string("name", { check: nameCheck }),
    namespace: f.string("namespace", { check: dnsLabel }),
    parents: f.array("parents", decodeRouteParent, { max: ROUTE_LIMITS.parents }),
    rules: f.array("rules", decodeRouteRule, { max: ROUTE_LIMITS.rules }),
  };
  f.done();
  if (r.parents.length === 0) throw new ValidationError(f.at("parents"), "a route needs a parent");
  checkMatchTotal(r.rules, f.at("rules"));
  return r;
}

/** The store key of a route: `namespace/name`. */
export function httpRouteKey(r: Pick<HttpRoute, "namespace" | "name">): string {
  return `${r.namespace}/${r.name}`;
}

/** The `when` keys the waypoint evaluates, besides `request.headers[NAME]`. */
export const L7_CONDITION_KEYS = [
  "source.ip",
  "remote.ip",
  "source.namespace",
  "source.principal",
  "destination.ip",
  "destination.port",
] as const;

const HEADER_KEY = /^request\.headers\[(.+)\]$/;

/** The header name of a `request.headers[NAME]` key as written, or undefined for another key. */
export function conditionHeader(key: string): string | undefined {
  return HEADER_KEY.exec(key)?.[1];
}

const policyString = (v: unknown, p: string): PolicyString =>
  checkString(v, p, {
    nonEmpty: true,
    max: 1024,
    check: (s) => (s.includes("\0") ? "must not contain a NUL character" : undefined),
  });
const cidrString = (v: unknown, p: string): string => {
  decodeCidr(v, p);
  return v as string;
};
const portString = (v: unknown, p: string): string => {
  const s = checkString(v, p);
  if (!/^\d{1,5}$/.test(s) || Number(s) < 1 || Number(s) > 65535) {
    throw new ValidationError(p, `expected a port from 1 to 65535, got ${show(s)}`);
  }
  return s;
};

function decodeL7Source(value: unknown, path: string): L7Source {
  const f = Fields.of(value, path);
  const list = <T>(k: string, item: (v: unknown, p: string) => T) => f.array(k, item, { max: LIST_MAX });
  const out: L7Source = {
    principals: list("principals", policyString),
    notPrincipals: list("notPrincipals", policyString),
    namespaces: list("namespaces", policyString),
    notNamespaces: list("notNamespaces", policyString),
    ipBlocks: list("ipBlocks", cidrString),
    notIpBlocks: list("notIpBlocks", cidrString),
    remoteIpBlocks: list("remoteIpBlocks", cidrString),
    notRemoteIpBlocks: list("notRemoteIpBlocks", cidrString),
  };
  f.done();
  return out;
}

function decodeL7Operation(value: unknown, path: string): L7Operation {
  const f = Fields.of(value, path);
  const list = <T>(k: string, item: (v: unknown, p: string) => T) => f.array(k, item, { max: LIST_MAX });
  const port = (v: unknown, p: string) => checkInt(v, p, 1, 65535);
  const out: L7Operation = {
    hosts: list("hosts", policyString),
    notHosts: list("notHosts", policyString),
    ports: list("ports", port),
    notPorts: list("notPorts", port),
    methods: list("methods", policyString),
    notMethods: list("notMethods", policyString),
    paths: list("paths", policyString),
    notPaths: list("notPaths", policyString),
  };
  f.done();
  return out;
}

/** Decodes an {@link L7Condition}; each value is checked as its key needs (an IP block, a port, a pattern). */
function decodeL7Condition(value: unknown, path: string): L7Condition {
  const f = Fields.of(value, path);
  const key = f.string("key", {
    nonEmpty: true,
    max: 300,
    check: (k) => {
      const header = conditionHeader(k);
      if (header !== undefined) {
        return headerNameCheck(header) ??
          (header === header.toLowerCase() ? undefined : "expected a lowercase header name");
      }
      return (L7_CONDITION_KEYS as readonly string[]).includes(k)
        ? undefined
        : `expected request.headers[NAME] or one of ${L7_CONDITION_KEYS.join(", ")}`;
    },
  });
  const item = key.endsWith(".ip") ? cidrString : key === "destination.port" ? portString : policyString;
  const out = {
    key,
    values: f.array("values", item, { max: LIST_MAX }),
    notValues: f.array("notValues", item, { max: LIST_MAX }),
  };
  f.done();
  if (out.values.length === 0 && out.notValues.length === 0) {
    throw new ValidationError(path, "a condition needs values or notValues");
  }
  return out;
}

function decodeL7Rule(value: unknown, path: string): L7Rule {
  const f = Fields.of(value, path);
  const out: L7Rule = {
    from: f.array("from", decodeL7Source, { max: LIST_MAX }),
    to: f.array("to", decodeL7Operation, { max: LIST_MAX }),
    when: f.array("when", decodeL7Condition, { max: LIST_MAX }),
  };
  f.done();
  return out;
}

/** Decodes one {@link L7Target}. */
export function decodeL7Target(value: unknown, path: string): L7Target {
  const f = Fields.of(value, path);
  const out: L7Target = {
    kind: checkOneOf(f.raw("kind"), f.at("kind"), ["Gateway", "Service"] as const),
    namespace: f.string("namespace", { check: dnsLabel }),
    name: f.string("name", { check: nameCheck }),
  };
  f.done();
  return out;
}

/**
 * Decodes an {@link L7Policy}.
 * @throws {ValidationError} naming the first bad field under `path`.
 */
export function decodeL7Policy(value: unknown, path = "l7Policy"): L7Policy {
  const f = Fields.of(value, path);
  const p: L7Policy = {
    name: f.string("name", { check: nameCheck }),
    namespace: f.string("namespace", { check: dnsLabel }),
    targets: f.array("targets", decodeL7Target, { max: MAX_POLICY_TARGETS }),
    action: f.oneOf("action", ["ALLOW", "DENY"] as const, "ALLOW"),
    rules: f.array("rules", decodeL7Rule, { max: LIST_MAX }),
    dryRun: f.bool("dryRun", false),
  };
  f.done();
  if (p.targets.length === 0) throw new ValidationError(f.at("targets"), "a policy needs a target");
  return p;
}

/** The store key of an L7 policy: `namespace/name`. */
export function l7PolicyKey(p: Pick<L7Policy, "namespace" | "name">): string {
  return `${p.namespace}/${p.name}`;
}
