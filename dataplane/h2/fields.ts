/**
 * Header-list rules of RFC 9113 §8.2 and §8.3: what makes a request, a response or a trailer section malformed.
 * A malformed message is a stream error of type PROTOCOL_ERROR (§8.1.1); the connection stays up.
 *
 * The checks are the ones request smuggling and header injection rely on being absent: uppercase or non-token
 * names, CR/LF/NUL or edge whitespace in values, connection-specific fields, pseudo-header fields that are
 * unknown, repeated, misplaced or missing, and CONNECT requests carrying `:scheme`/`:path` or `:protocol`
 * (extended CONNECT, RFC 8441, which we never enable).
 */

import type { HeaderField } from "./hpack.ts";
export type { HeaderField };

const REQUEST_PSEUDO = new Set([":method", ":scheme", ":authority", ":path"]);
const CONNECTION_SPECIFIC = new Set(["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"]);

/** Token characters (RFC 9110 §5.6.2) except uppercase letters. */
function isLowerToken(name: string, from: number): boolean {
  if (name.length <= from) return false;
  for (let i = from; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || "!#$%&'*+-.^_`|~".includes(name[i]);
    if (!ok) return false;
  }
  return true;
}

function valueProblem(value: string): string | null {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0 || c === 0x0a || c === 0x0d) return "contains NUL, CR or LF";
  }
  if (value.length > 0) {
    const first = value.charCodeAt(0);
    const last = value.charCodeAt(value.length - 1);
    if (first === 0x20 || first === 0x09 || last === 0x20 || last === 0x09) return "has leading or trailing whitespace";
  }
  return null;
}

/** Checks the rules every section shares; returns the pseudo-header fields by name, or a problem. */
function checkSection(fields: HeaderField[], allowed: Set<string>): Map<string, string> | string {
  const pseudo = new Map<string, string>();
  let regularSeen = false;
  for (const [name, value] of fields) {
    const problem = valueProblem(value);
    if (problem) return `field ${JSON.stringify(name)} ${problem}`;
    if (name.startsWith(":")) {
      if (regularSeen) return `pseudo-header field ${name} after a regular field`;
      if (!allowed.has(name)) return `pseudo-header field ${JSON.stringify(name)} is not allowed here`;
      if (pseudo.has(name)) return `pseudo-header field ${name} repeated`;
      pseudo.set(name, value);
      continue;
    }
    regularSeen = true;
    if (!isLowerToken(name, 0)) return `field name ${JSON.stringify(name)} is not a lowercase token`;
    if (CONNECTION_SPECIFIC.has(name)) return `connection-specific field ${name}`;
    if (name === "te" && value !== "trailers") return `te: ${JSON.stringify(value)} (only "trailers" is allowed)`;
  }
  return pseudo;
}

/** Null when `fields` is a well-formed request header section, else what is wrong (RFC 9113 §8.3.1, §8.5). */
export function requestProblem(fields: HeaderField[]): string | null {
  const pseudo = checkSection(fields, REQUEST_PSEUDO);
  if (typeof pseudo === "string") return pseudo;
  const method = pseudo.get(":method");
  if (method === undefined || !isLowerToken(method.toLowerCase(), 0)) return "missing or invalid :method";
  if (method === "CONNECT") {
    if (pseudo.has(":scheme") || pseudo.has(":path")) return "CONNECT with :scheme or :path";
    if (!pseudo.get(":authority")) return "CONNECT without :authority";
    return null;
  }
  const path = pseudo.get(":path");
  if (!pseudo.get(":scheme")) return "missing :scheme";
  if (!path) return "missing :path";
  if (path[0] !== "/" && !(method === "OPTIONS" && path === "*")) return `:path ${JSON.stringify(path)}`;
  return null;
}

/** Null when `fields` is a well-formed response header section (RFC 9113 §8.3.2). */
export function responseProblem(fields: HeaderField[]): string | null {
  const pseudo = checkSection(fields, new Set([":status"]));
  if (typeof pseudo === "string") return pseudo;
  const status = pseudo.get(":status");
  if (status === undefined || !/^[1-9][0-9][0-9]$/.test(status)) return "missing or invalid :status";
  return null;
}

/** Null when `fields` is a well-formed trailer section: no pseudo-header fields (RFC 9113 §8.1). */
export function trailersProblem(fields: HeaderField[]): string | null {
  const pseudo = checkSection(fields, new Set());
  return typeof pseudo === "string" ? pseudo : null;
}

/** The value of the first field named `name`, or undefined. */
export function field(fields: HeaderField[], name: string): string | undefined {
  for (const [n, v] of fields) if (n === name) return v;
  return undefined;
}

/**
 * The declared content-length (RFC 9110 §8.6): undefined when absent, "invalid" when it is not a decimal number
 * or is repeated with different values. The DATA received must add up to it (RFC 9113 §8.1.1).
 */
export function contentLength(fields: HeaderField[]): number | undefined | "invalid" {
  let found: string | undefined;
  for (const [n, v] of fields) {
    if (n !== "content-length") continue;
    if (found !== undefined && found !== v) return "invalid";
    found = v;
  }
  if (found === undefined) return undefined;
  return /^[0-9]{1,15}$/.test(found) ? Number(found) : "invalid";
}
