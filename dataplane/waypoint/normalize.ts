/**
 * Request-target and authority normalization for the waypoint: the one canonical form that policies match and
 * that is forwarded to the backend, so that authorization and the application can never read the same request
 * differently.
 *
 * Paths follow Envoy's `normalize_path: true` with `path_with_escaped_slashes_action: UNESCAPE_AND_MERGE` and
 * `merge_slashes: true`, which is Istio's recommended `DECODE_AND_MERGE_SLASHES` setting
 * (https://istio.io/latest/docs/reference/config/security/normalization/). Each historical bypass has its step:
 * `//admin` merges to `/admin` and `/admin%2F` decodes to `/admin/` (CVE-2021-31920, ISTIO-SECURITY-2021-005);
 * `/admin#x` loses its fragment (CVE-2021-39156, 2021-008); `/%61dmin` decodes unreserved characters to
 * `/admin`; `/x/../admin` resolves its dot segments (RFC 3986 §5.2.4). Decoding is a single pass, so `%252F`
 * stays `%252F` (a literal `%2F` for the backend, never a slash for the policy). Paths keep their case: they are
 * case-sensitive (RFC 3986 §6.2.2.1).
 *
 * What is refused rather than repaired: raw bytes outside visible ASCII (NUL, controls, space, DEL, anything
 * non-ASCII), a `%` not followed by two hex digits, `%00`, and a target that does not start with `/`. The
 * asterisk-form `*` (RFC 9112 §3.2.4, only meaningful for `OPTIONS`) is refused as well: this function does
 * not see the method, a policy cannot name it, and a mesh has no use for server-wide OPTIONS.
 *
 * Known limit, shared with Envoy: `;` path parameters are kept as written, so a backend that strips them
 * (Tomcat reads `/admin;x` as `/admin`) can still disagree with a policy on `/admin`; pair such backends with
 * prefix rules or deny `;`.
 *
 * @module
 */

/** A normalized request target: the canonical path and the raw query (without `?`; empty when absent). */
export interface NormalizedTarget {
  path: string;
  query: string;
}

/** A normalized authority: lowercase host (IPv6 in brackets) and the port when one was given. */
export interface NormalizedHost {
  host: string;
  port?: number;
}

/** Why a target or authority was refused; the waypoint answers 400. */
export interface NormalizeError {
  error: string;
}

const ABSOLUTE_FORM = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s;
const NOT_VISIBLE = /[^\x21-\x7e]/;
const HEX2 = /^[0-9A-Fa-f]{2}$/;
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

function describeByte(text: string, index: number): string {
  const code = text.codePointAt(index)!;
  return `U+${code.toString(16).toUpperCase().padStart(4, "0")} at offset ${index}`;
}

function refuse(what: string, text: string, why: string): NormalizeError {
  const shown = JSON.stringify(text.length > 80 ? `${text.slice(0, 77)}...` : text);
  return { error: `Cannot normalize ${what} ${shown}: ${why}` };
}

/**
 * Normalizes an HTTP request target (origin-form `/p?q`, or absolute-form `http://host/p?q`, of which only the
 * path and query are kept: the caller takes the authority from it, RFC 9112 §3.2.2). Returns the canonical
 * path and the raw query, or why the target is refused.
 */
export function normalizePath(target: string): NormalizedTarget | NormalizeError {
  const what = "request target";
  if (target === "") return refuse(what, target, "it is empty");
  const bad = NOT_VISIBLE.exec(target);
  if (bad) return refuse(what, target, `${describeByte(target, bad.index)} is not visible ASCII`);
  let rest = target;
  const absolute = ABSOLUTE_FORM.exec(rest);
  if (absolute) {
    const scheme = absolute[1].toLowerCase();
    if (scheme !== "http" && scheme !== "https") {
      return refuse(what, target, `expected the scheme http or https, got ${JSON.stringify(absolute[1])}`);
    }
    // An absolute URI with an empty path asks for "/" (RFC 9112 §3.2.2, RFC 3986 §6.2.3).
    rest = absolute[3].startsWith("/") ? absolute[3] : `/${absolute[3]}`;
  }
  if (rest === "*") return refuse(what, target, "the asterisk-form (OPTIONS *) is not served");
  const hash = rest.indexOf("#");
  if (hash >= 0) rest = rest.slice(0, hash);
  const q = rest.indexOf("?");
  const rawPath = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? "" : rest.slice(q + 1);
  if (!rawPath.startsWith("/")) return refuse(what, target, "expected a path starting with /");
  const decoded = decodePath(rawPath);
  if (typeof decoded !== "string") return refuse(what, target, decoded.error);
  return { path: removeDotSegments(decoded.replace(/\/{2,}/g, "/")), query };
}

/**
 * One left-to-right pass over the path: `%2F` and `%5C` become `/`, a raw `\` becomes `/` (as browsers and
 * several servers read it), escapes of unreserved characters are decoded, and every other escape is kept with
 * upper-case hex (RFC 3986 §6.2.2.1–6.2.2.2).
 */
function decodePath(raw: string): string | NormalizeError {
  let out = "";
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (c === "\\") {
      out += "/";
      continue;
    }
    if (c !== "%") {
      out += c;
      continue;
    }
    const hex = raw.slice(i + 1, i + 3);
    if (!HEX2.test(hex)) return { error: `malformed percent-escape at offset ${i}` };
    i += 2;
    const byte = parseInt(hex, 16);
    if (byte === 0) return { error: `an encoded NUL (%00) at offset ${i - 2}` };
    const ch = String.fromCharCode(byte);
    if (ch === "/" || ch === "\\") out += "/";
    else if (UNRESERVED.test(ch)) out += ch;
    else out += `%${hex.toUpperCase()}`;
  }
  return out;
}

/**
 * RFC 3986 §5.2.4 on a path that starts with `/` and has no empty segments: `.` is dropped, `..` drops the
 * segment before it (never above the root), and a final `.` or `..` leaves a trailing slash (`/a/b/..` → `/a/`).
 */
function removeDotSegments(path: string): string {
  const segments = path.slice(1).split("/");
  const out: string[] = [];
  segments.forEach((s, i) => {
    const last = i === segments.length - 1;
    if (s === "." || s === "..") {
      if (s === "..") out.pop();
      if (last) out.push("");
    } else {
      out.push(s);
    }
  });
  return `/${out.join("/")}`;
}

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * Normalizes an authority (`Host` or `:authority`) to what policies and routes compare: lowercase, one trailing
 * dot removed (`admin.example.com.` is `admin.example.com`), the port split off (`[::1]:80` too; an empty port
 * after `:` counts as none, RFC 3986 §3.2.3). Host names are DNS-like labels of letters, digits, `-` and `_`;
 * IPv6 literals are canonicalized inside their brackets (RFC 5952). Userinfo, percent-escapes and any other
 * character are refused (CVE-2021-39155 was about two spellings of one host).
 */
export function normalizeHost(authority: string): NormalizedHost | NormalizeError {
  const what = "authority";
  if (authority === "") return refuse(what, authority, "it is empty");
  const bad = NOT_VISIBLE.exec(authority);
  if (bad) return refuse(what, authority, `${describeByte(authority, bad.index)} is not visible ASCII`);
  const text = authority.toLowerCase();
  let host: string;
  let portText: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return refuse(what, authority, "expected ] after an IPv6 address");
    const ip = canonicalIpv6(text.slice(1, close));
    if (ip === undefined) return refuse(what, authority, "expected an IPv6 address inside [ ]");
    host = `[${ip}]`;
    const after = text.slice(close + 1);
    if (after !== "" && !after.startsWith(":")) return refuse(what, authority, "expected :port after ]");
    portText = after === "" ? undefined : after.slice(1);
  } else {
    const parts = text.split(":");
    if (parts.length > 2) return refuse(what, authority, "expected host[:port]; IPv6 addresses need [ ]");
    [host, portText] = parts;
    if (host.endsWith(".")) host = host.slice(0, -1);
    if (host === "" || host.length > 253 || !host.split(".").every((l) => LABEL.test(l))) {
      return refuse(what, authority, "expected a host name of letters, digits, - and _ in dot-separated labels");
    }
  }
  if (portText === undefined || portText === "") return { host };
  if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
    return refuse(what, authority, "expected a port from 1 to 65535");
  }
  return { host, port: Number(portText) };
}

function canonicalIpv6(text: string): string | undefined {
  if (!/^[0-9a-f:.]+$/.test(text) || !text.includes(":")) return undefined;
  try {
    // The URL parser validates and compresses per RFC 5952.
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}
