/**
 * L7 authorization at the waypoint: AuthorizationPolicy evaluated against one HTTP request, with Istio's
 * precedence (any matching DENY denies; otherwise, when ALLOW policies exist, one must match; otherwise the
 * request is allowed) and its matching rules (`security/v1beta1/authorization.proto`). Dry-run policies are
 * evaluated and reported, never enforced. Pure: the caller normalizes the request first (`normalize.ts`), so
 * that the path and host seen here are the ones forwarded.
 *
 * Matching. A policy matches when any rule does; one with no rules never matches (an ALLOW with no rules is
 * "allow nothing"). A rule matches when any `from` AND any `to` AND every `when` do; an empty list always
 * matches, so `{from: [], to: [], when: []}` matches everything. Within a source or an operation every set
 * field must match and every set `not*` field must not; values in a list are alternatives.
 *
 * Strings (`PolicyString`): `*` is any non-empty value, `*x` a suffix, `x*` a prefix, anything else exact (in
 * that order, as Istio's `StringMatcherWithPrefix`). Hosts compare case-insensitively, and a policy host's
 * `:port` and trailing dot are ignored, since the request host is already normalized without them
 * (CVE-2021-39155). Paths compare on the normalized path, case-sensitively; `/admin/*` is the prefix `/admin/`.
 * Paths holding Istio's `{*}` (one non-empty segment) or `{**}` (any rest, slashes included) are URI templates;
 * `{*}` accepts any character but `/`, a superset of Envoy's literal set that only matters for characters
 * Envoy's codec would have refused. Methods and principals are exact and case-sensitive; principals are
 * written without `spiffe://`, so one written with it never matches.
 *
 * Absent attributes, as Istio and `dataplane/ztunnel/rbac.ts`: an attribute the request does not carry (no
 * principal or namespace for plaintext, a header that was not sent) never matches a positive field and always
 * satisfies a `not*` field. So a DENY with `notPrincipals: ["*"]` denies exactly the plaintext requests, and a
 * DENY on `request.headers[x-token]` `notValues: ["secret"]` denies requests without the header.
 *
 * What cannot be evaluated (an unknown `when` key, an IP block or template that does not parse, a
 * `destination.port` value that is not a number) fails safe rather than silently: the field counts as matching
 * in a DENY policy and as not matching in an ALLOW policy, for the positive and the `not*` form alike. A DENY
 * therefore still denies and an ALLOW never opens more than it says. The control plane should have refused
 * such policies; this is the backstop.
 *
 * Repeated headers are matched value by value: a condition holds when any single value matches, and a
 * `notValues` holds when none does. Values are never concatenated (CVE-2026-26308).
 *
 * @module
 */

import type { L7Condition, L7Operation, L7Policy, L7Source, PolicyString } from "../../mesh/l7.ts";
import { type Cidr, cidrContains, decodeCidr, ipBytes } from "../../mesh/net.ts";
import { isIP } from "node:net";

/** What L7 authorization sees of a request, every field already normalized. */
export interface RequestAttributes {
  method: string;
  /** Normalized path, without the query. */
  path: string;
  /** Normalized host, without the port. */
  host: string;
  /** The destination (service) port. */
  port: number;
  /** Lowercase names; a repeated header appears once per value. */
  headers: readonly [name: string, value: string][];
  /** The peer's SPIFFE id without `spiffe://`; undefined for plaintext. */
  sourcePrincipal?: string;
  sourceNamespace?: string;
  /** The client's address (from ztunnel's `Forwarded: for=`). */
  sourceIp?: string;
  /** The original client's address when known (`X-Forwarded-For`); defaults to `sourceIp`. */
  remoteIp?: string;
  destinationIp?: string;
}

/** The outcome: the enforced decision, the policy that made it (`namespace/name`), and what dry-run policies would do. */
export interface AuthorizationResult {
  allowed: boolean;
  /** The DENY that matched, or the ALLOW that matched; absent when no policy decided. */
  policy?: string;
  /** Every dry-run policy: a DENY would allow when it does not match, an ALLOW when it does. */
  dryRun: { policy: string; wouldAllow: boolean }[];
}

/**
 * Decides a request against the L7 policies that apply to its destination. Policies are tried in the order
 * given; the first matching DENY, or the first matching ALLOW, is reported.
 */
export function authorizeRequest(policies: readonly L7Policy[], a: RequestAttributes): AuthorizationResult {
  const dryRun = policies.filter((p) => p.dryRun).map((p) => {
    const matched = policyMatches(p, a);
    return { policy: policyName(p), wouldAllow: p.action === "DENY" ? !matched : matched };
  });
  const enforced = policies.filter((p) => !p.dryRun);
  const deny = enforced.find((p) => p.action === "DENY" && policyMatches(p, a));
  if (deny) return { allowed: false, policy: policyName(deny), dryRun };
  const allows = enforced.filter((p) => p.action === "ALLOW");
  if (allows.length === 0) return { allowed: true, dryRun };
  const allow = allows.find((p) => policyMatches(p, a));
  return allow ? { allowed: true, policy: policyName(allow), dryRun } : { allowed: false, dryRun };
}

/** The resource name `namespace/name` of a policy. */
export function policyName(p: L7Policy): string {
  return `${p.namespace}/${p.name}`;
}

/** Whether a policy matches the request, its action aside (what cannot be evaluated resolves by the action). */
export function policyMatches(p: L7Policy, a: RequestAttributes): boolean {
  const ctx: Ctx = { a, unknown: p.action === "DENY" };
  return p.rules.some((r) =>
    (r.from.length === 0 || r.from.some((s) => sourceMatches(s, ctx))) &&
    (r.to.length === 0 || r.to.some((o) => operationMatches(o, ctx))) &&
    r.when.every((c) => conditionMatches(c, ctx))
  );
}

/**
 * Whether a PolicyString matches a value: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact. An
 * absent or empty value matches nothing.
 */
export function matchPolicyString(pattern: PolicyString, value: string | undefined): boolean {
  if (value === undefined || value === "") return false;
  if (pattern === "*") return true;
  if (pattern.startsWith("*")) return value.endsWith(pattern.slice(1));
  if (pattern.endsWith("*")) return value.startsWith(pattern.slice(0, -1));
  return value === pattern;
}

/** A test of one list entry: true, false, or undefined when the entry cannot be evaluated. */
type Test<T> = (entry: T) => boolean | undefined;

interface Ctx {
  a: RequestAttributes;
  /** What an entry that cannot be evaluated counts as: true in a DENY policy, false in an ALLOW policy. */
  unknown: boolean;
}

/**
 * A list field: empty is unset and holds. Positive: holds when an entry matches. Negated: holds when none does.
 * Otherwise an entry that could not be evaluated decides in the policy's safe direction.
 */
function field<T>(ctx: Ctx, entries: readonly T[], test: Test<T>, negated: boolean): boolean {
  if (entries.length === 0) return true;
  let unsure = false;
  for (const e of entries) {
    const r = test(e);
    if (r === true) return !negated;
    if (r === undefined) unsure = true;
  }
  return unsure ? ctx.unknown : negated;
}

function sourceMatches(s: L7Source, ctx: Ctx): boolean {
  const { a } = ctx;
  const str = (list: PolicyString[], v: string | undefined, neg: boolean) =>
    field(ctx, list, (p) => matchPolicyString(p, v), neg);
  const ip = (list: string[], v: string | undefined, neg: boolean) => field(ctx, list, (b) => ipInBlock(b, v), neg);
  const remote = a.remoteIp ?? a.sourceIp;
  return str(s.principals, a.sourcePrincipal, false) && str(s.notPrincipals, a.sourcePrincipal, true) &&
    str(s.namespaces, a.sourceNamespace, false) && str(s.notNamespaces, a.sourceNamespace, true) &&
    ip(s.ipBlocks, a.sourceIp, false) && ip(s.notIpBlocks, a.sourceIp, true) &&
    ip(s.remoteIpBlocks, remote, false) && ip(s.notRemoteIpBlocks, remote, true);
}

function operationMatches(o: L7Operation, ctx: Ctx): boolean {
  const { a } = ctx;
  const host = (p: PolicyString) => matchHost(p, a.host);
  const path = (p: PolicyString) => matchPath(p, a.path);
  const method = (p: PolicyString) => matchPolicyString(p, a.method);
  const port = (p: number) => p === a.port;
  return field(ctx, o.hosts, host, false) && field(ctx, o.notHosts, host, true) &&
    field(ctx, o.ports, port, false) && field(ctx, o.notPorts, port, true) &&
    field(ctx, o.methods, method, false) && field(ctx, o.notMethods, method, true) &&
    field(ctx, o.paths, path, false) && field(ctx, o.notPaths, path, true);
}

/** Policy-side host without its port or trailing dot, lowercased: `Admin.Example.com:80` → `admin.example.com`. */
function policyHost(p: string): string {
  const m = /^(\[[^\]]*\]|[^:]*):\d*$/.exec(p);
  const h = (m ? m[1] : p).toLowerCase();
  return h.endsWith(".") && h !== "." ? h.slice(0, -1) : h;
}

/** Whether a policy host matches the (normalized, lowercase, port-less) request host. */
export function matchHost(pattern: PolicyString, host: string): boolean {
  return matchPolicyString(policyHost(pattern), host.toLowerCase());
}

const TEMPLATE_OPERATOR = /\{\*\*?\}/;
const templateCache = new Map<string, RegExp | null>();

/**
 * Whether a policy path matches the normalized path: a URI template when it holds `{*}` or `{**}`, else a
 * PolicyString. Undefined when the template is invalid (`*`, `{` or `}` outside an operator, text beside an
 * operator in its segment, or an operator after `{**}`).
 */
export function matchPath(pattern: PolicyString, path: string): boolean | undefined {
  if (!TEMPLATE_OPERATOR.test(pattern)) return matchPolicyString(pattern, path);
  let re = templateCache.get(pattern);
  if (re === undefined) {
    re = compileTemplate(pattern);
    if (templateCache.size >= 1024) templateCache.clear();
    templateCache.set(pattern, re);
  }
  return re === null ? undefined : re.test(path);
}

function compileTemplate(pattern: string): RegExp | null {
  if (!pattern.startsWith("/")) return null;
  let seenTextGlob = false;
  const parts = pattern.slice(1).split("/").map((seg) => {
    if (seg === "{*}" || seg === "{**}") {
      if (seenTextGlob) return null;
      seenTextGlob = seg === "{**}";
      return seg === "{*}" ? "[^/]+" : ".*";
    }
    if (/[*{}]/.test(seg)) return null;
    return seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  });
  if (parts.some((p) => p === null)) return null;
  return new RegExp(`^/${parts.join("/")}$`);
}

const blockCache = new Map<string, Cidr | null>();

/** Whether `ip` lies in the block (an IP or CIDR); undefined when the block does not parse or `ip` is not an IP. */
export function ipInBlock(block: string, ip: string | undefined): boolean | undefined {
  if (ip === undefined || ip === "") return false;
  let cidr = blockCache.get(block);
  if (cidr === undefined) {
    try {
      cidr = decodeCidr(block, "ipBlocks");
    } catch {
      cidr = null;
    }
    if (blockCache.size >= 4096) blockCache.clear();
    blockCache.set(block, cidr);
  }
  const addr = comparableIp(ip);
  if (cidr === null || addr === undefined) return undefined;
  return cidrContains(cidr, addr);
}

/**
 * Canonical text of a request address, with an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack
 * socket reports for an IPv4 client) read as the IPv4 address it carries, so IPv4 blocks match it.
 */
function comparableIp(ip: string): string | undefined {
  const family = isIP(ip);
  if (family === 4) return ip.split(".").map((o) => String(Number(o))).join(".");
  if (family !== 6) return undefined;
  let canonical: string;
  try {
    canonical = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
  const b = ipBytes(canonical);
  if (b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return b.slice(12).join(".");
  return canonical;
}

const HEADER_KEY = /^request\.headers\[(.+)\]$/;

/** A `when` condition: `values` (if any) must match and `notValues` (if any) must not. */
function conditionMatches(c: L7Condition, ctx: Ctx): boolean {
  const { a } = ctx;
  const header = HEADER_KEY.exec(c.key);
  let test: Test<string>;
  if (header) {
    const name = header[1].toLowerCase();
    const values = a.headers.filter(([n]) => n === name).map(([, v]) => v);
    // Istio turns `*` on a header into a presence match: an empty value counts.
    test = (p) => values.some((v) => p === "*" || matchPolicyString(p, v));
  } else {
    switch (c.key) {
      case "source.ip":
        test = (b) => ipInBlock(b, a.sourceIp);
        break;
      case "remote.ip":
        test = (b) => ipInBlock(b, a.remoteIp ?? a.sourceIp);
        break;
      case "destination.ip":
        test = (b) => ipInBlock(b, a.destinationIp);
        break;
      case "source.namespace":
        test = (p) => matchPolicyString(p, a.sourceNamespace);
        break;
      case "source.principal":
        test = (p) => matchPolicyString(p, a.sourcePrincipal);
        break;
      case "destination.port":
        test = (p) => /^\d{1,5}$/.test(p) ? Number(p) === a.port : undefined;
        break;
      default:
        // An unknown key: the whole condition resolves in the policy's safe direction, whatever its lists.
        return ctx.unknown;
    }
  }
  return field(ctx, c.values, test, false) && field(ctx, c.notValues, test, true);
}
