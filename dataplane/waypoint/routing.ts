/**
 * HTTPRoute selection at the waypoint: which rule of which route serves a request, which backend of that rule
 * takes it, and how the rule's header filter rewrites headers. Pure functions of the resolved model
 * (`mesh/l7.ts`) and the normalized request (`normalize.ts`); endpoint load balancing happens after this.
 *
 * Precedence follows Gateway API (`HTTPRouteRule` "matching precedence") as Istio orders it
 * (`sortHTTPRoutes`): across all rules of all routes, the matching (rule, match) pair wins that has an Exact
 * path, else the longest PathPrefix, else a RegularExpression path; a match without a path is PathPrefix `/`,
 * so it outranks every regular expression, and an empty `matches` list is one such match. Ties go to the match
 * with a method, then the most header matches, then the most query matches, then the route whose
 * `namespace/name` sorts first (creation time, Gateway API's first tie-breaker, is not in the model), then the
 * earlier rule.
 *
 * Request-side readings, each Envoy's: repeated headers are joined with `,` before a header match (routing is
 * not authorization, so the joined form is what Envoy's route matcher compares); a repeated query parameter
 * matches by its first value; query names and values are percent-decoded and `+` stays `+` (RFC 3986 query, not
 * HTML forms). On the match side, only the first of several header or query matches for the same name counts,
 * as Gateway API says. Regular expressions must match the whole value and are compiled once; one that does not
 * compile matches nothing.
 *
 * @module
 */

import type {
  HeaderMatch,
  HeaderModifier,
  HttpRoute,
  PathMatch,
  QueryParamMatch,
  RouteBackend,
  RouteMatch,
  RouteRule,
} from "../../mesh/l7.ts";

/** What route selection sees of a request. */
export interface RouteRequest {
  /** Upper-case method. */
  method: string;
  /** Normalized path, without the query. */
  path: string;
  /** The raw query, without `?`. */
  query: string;
  /** Lowercase names; a repeated header appears once per value. */
  headers: readonly [string, string][];
}

/** The rule that serves a request, with its route and its index in `route.rules`. */
export interface SelectedRule {
  route: HttpRoute;
  rule: RouteRule;
  ruleIndex: number;
}

/**
 * Picks the rule that serves a request among the routes attached to a destination. Only routes with a parent
 * for this port (a parent without a port takes every port) and, when `serviceKey` is given, for that Service
 * count. Undefined when no rule matches (the waypoint then uses the Service's default route).
 */
export function selectRule(
  routes: readonly HttpRoute[],
  req: RouteRequest,
  port: number,
  serviceKey?: string,
): SelectedRule | undefined {
  let best: { selected: SelectedRule; rank: Rank } | undefined;
  for (const route of routes) {
    const attached = route.parents.some((p) =>
      (serviceKey === undefined || p.service === serviceKey) && (p.port === undefined || p.port === port)
    );
    if (!attached) continue;
    const key = `${route.namespace}/${route.name}`;
    route.rules.forEach((rule, ruleIndex) => {
      const matches = rule.matches.length === 0 ? [CATCH_ALL] : rule.matches;
      for (const m of matches) {
        if (!routeMatchHolds(m, req)) continue;
        const rank = rankOf(m, key, ruleIndex);
        if (best === undefined || compareRank(rank, best.rank) < 0) {
          best = { selected: { route, rule, ruleIndex }, rank };
        }
      }
    });
  }
  return best?.selected;
}

const CATCH_ALL: RouteMatch = { headers: [], queryParams: [] };

interface Rank {
  /** 3 Exact, 2 PathPrefix, 1 RegularExpression. */
  pathKind: number;
  prefixLength: number;
  hasMethod: boolean;
  headers: number;
  queryParams: number;
  routeKey: string;
  ruleIndex: number;
}

function rankOf(m: RouteMatch, routeKey: string, ruleIndex: number): Rank {
  const path = m.path ?? { type: "PathPrefix", value: "/" };
  return {
    pathKind: path.type === "Exact" ? 3 : path.type === "PathPrefix" ? 2 : 1,
    prefixLength: path.type === "PathPrefix" ? trimPrefix(path.value).length : 0,
    hasMethod: m.method !== undefined,
    headers: firstByName(m.headers, true).length,
    queryParams: firstByName(m.queryParams, false).length,
    routeKey,
    ruleIndex,
  };
}

/** Negative when `a` takes precedence over `b`. */
function compareRank(a: Rank, b: Rank): number {
  return (b.pathKind - a.pathKind) || (b.prefixLength - a.prefixLength) ||
    (Number(b.hasMethod) - Number(a.hasMethod)) || (b.headers - a.headers) || (b.queryParams - a.queryParams) ||
    (a.routeKey < b.routeKey ? -1 : a.routeKey > b.routeKey ? 1 : 0) || (a.ruleIndex - b.ruleIndex);
}

/** Whether one match of a rule holds: path, method, every header and every query match. */
export function routeMatchHolds(m: RouteMatch, req: RouteRequest): boolean {
  if (m.path && !pathMatches(m.path, req.path)) return false;
  if (m.method !== undefined && m.method !== req.method) return false;
  for (const h of firstByName(m.headers, true)) {
    if (!stringMatches(h, joinedHeader(req.headers, h.name.toLowerCase()))) return false;
  }
  if (m.queryParams.length > 0) {
    const params = parseQuery(req.query);
    for (const q of firstByName(m.queryParams, false)) {
      if (!stringMatches(q, params.get(q.name))) return false;
    }
  }
  return true;
}

/** A PathPrefix value without its trailing slashes: the prefix `/foo/` behaves as `/foo`, and `/` as all. */
function trimPrefix(value: string): string {
  return value.replace(/\/+$/, "");
}

/** Whether a path match holds; PathPrefix matches whole segments (`/foo` takes `/foo/x`, never `/foobar`). */
export function pathMatches(m: PathMatch, path: string): boolean {
  switch (m.type) {
    case "Exact":
      return path === m.value;
    case "PathPrefix": {
      const prefix = trimPrefix(m.value);
      return prefix === "" || path === prefix || path.startsWith(`${prefix}/`);
    }
    case "RegularExpression":
      return fullMatch(m.value, path);
  }
}

function stringMatches(m: HeaderMatch | QueryParamMatch, value: string | undefined): boolean {
  if (value === undefined) return false;
  return m.type === "Exact" ? value === m.value : fullMatch(m.value, value);
}

/** Gateway API: of several matches for an equivalent name, only the first counts. Header names are case-insensitive. */
function firstByName<T extends { name: string }>(list: readonly T[], caseInsensitive: boolean): T[] {
  const seen = new Set<string>();
  return list.filter((m) => {
    const key = caseInsensitive ? m.name.toLowerCase() : m.name;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** All values of a header joined with `,` as Envoy's route matcher reads them; undefined when absent. */
function joinedHeader(headers: readonly [string, string][], name: string): string | undefined {
  const values = headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
  return values.length === 0 ? undefined : values.join(",");
}

/** The first value of every query parameter, names and values percent-decoded (a bad escape stays raw). */
export function parseQuery(raw: string): Map<string, string> {
  const out = new Map<string, string>();
  if (raw === "") return out;
  for (const pair of raw.split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const name = decode(eq < 0 ? pair : pair.slice(0, eq));
    const value = eq < 0 ? "" : decode(pair.slice(eq + 1));
    if (!out.has(name)) out.set(name, value);
  }
  return out;
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

const regexCache = new Map<string, RegExp | null>();

/** Whether `value` matches the whole regular expression; one that does not compile matches nothing. */
function fullMatch(pattern: string, value: string): boolean {
  let re = regexCache.get(pattern);
  if (re === undefined) {
    try {
      re = new RegExp(`^(?:${pattern})$`);
    } catch {
      re = null;
    }
    if (regexCache.size >= 1024) regexCache.clear();
    regexCache.set(pattern, re);
  }
  return re !== null && re.test(value);
}

/**
 * Picks a backend of a rule by weight: `random()` in [0, 1) against the cumulative weights; a backend with
 * weight 0 is never picked. Undefined when the rule has no backend with a positive weight (the waypoint answers
 * 500). A backend with a `problem` is picked like any other, so its share of requests gets the 500.
 */
export function pickBackend(rule: RouteRule, random: () => number): RouteBackend | undefined {
  const weighted = rule.backends.filter((b) => b.weight > 0);
  const total = weighted.reduce((sum, b) => sum + b.weight, 0);
  if (total === 0) return undefined;
  let point = random() * total;
  for (const b of weighted) {
    point -= b.weight;
    if (point < 0) return b;
  }
  // random() returned 1 or rounding left a sliver: the last backend owns the top of the range.
  return weighted[weighted.length - 1];
}

/**
 * Applies a Gateway API header filter, in Envoy's order: remove every value of each `remove` name, then `set`
 * (replaces all values of the name at its first position, or appends when absent), then `add` (appends another
 * value). Names are lowercased. Returns a new list; `headers` is not changed.
 */
export function applyHeaderModifier(
  headers: [string, string][],
  m: HeaderModifier | undefined,
): [string, string][] {
  let out: [string, string][] = headers.map(([n, v]) => [n.toLowerCase(), v]);
  if (m === undefined) return out;
  const removed = new Set(m.remove.map((n) => n.toLowerCase()));
  out = out.filter(([n]) => !removed.has(n));
  for (const { name, value } of m.set) {
    const n = name.toLowerCase();
    const first = out.findIndex(([x]) => x === n);
    if (first < 0) {
      out.push([n, value]);
      continue;
    }
    out = out.filter(([x], i) => x !== n || i === first);
    out[first] = [n, value];
  }
  for (const { name, value } of m.add) out.push([name.toLowerCase(), value]);
  return out;
}
