/**
 * Field helpers a proxy needs around the codec: reading a field's values and list tokens, and removing the
 * hop-by-hop fields (RFC 9110 §7.6.1) before a message is forwarded.
 */

import type { HeaderList } from "./head.ts";

/** The values of every field named `name` (lowercase), in order. */
export function headerValues(headers: HeaderList, name: string): string[] {
  const values: string[] = [];
  for (const [n, v] of headers) if (n === name) values.push(v);
  return values;
}

/** The first value of `name`, or undefined. */
export function headerValue(headers: HeaderList, name: string): string | undefined {
  for (const [n, v] of headers) if (n === name) return v;
  return undefined;
}

/**
 * The elements of a list-valued field (RFC 9110 §5.6.1) across all its lines, trimmed and lowercased, empty
 * elements dropped: `Connection: keep-alive, Upgrade` gives `["keep-alive", "upgrade"]`.
 */
export function headerTokens(headers: HeaderList, name: string): string[] {
  const tokens: string[] = [];
  for (const [n, v] of headers) {
    if (n !== name) continue;
    for (const part of v.split(",")) {
      const token = trimOws(part).toLowerCase();
      if (token.length > 0) tokens.push(token);
    }
  }
  return tokens;
}

/** Trims SP and HTAB only: String#trim would also drop U+00A0 (a latin1 0xa0), which other parsers keep. */
export function trimOws(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && (s.charCodeAt(start) === 0x20 || s.charCodeAt(start) === 0x09)) start++;
  while (end > start && (s.charCodeAt(end - 1) === 0x20 || s.charCodeAt(end - 1) === 0x09)) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

/** Fields that describe one connection, never the message (RFC 9110 §7.6.1, plus the legacy Proxy-Connection). */
export const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "transfer-encoding",
  "upgrade",
  "trailer",
]);

/**
 * Fields a peer may not remove by naming them in Connection: they frame or route the message, and dropping them
 * would let a client change what the next hop sees (`Connection: host` or `Connection: content-length`).
 */
const NOT_NOMINABLE = new Set(["host", "content-length"]);

/**
 * A copy of `headers` without the hop-by-hop fields and without the fields the Connection field nominates.
 * With `keepUpgrade`, an Upgrade field survives and is announced with `connection: upgrade` (RFC 9110 §7.8: a
 * sender of Upgrade must list it in Connection), for a proxy that forwards an upgrade request.
 */
export function stripHopByHop(headers: HeaderList, options: { keepUpgrade?: boolean } = {}): HeaderList {
  const nominated = new Set(headerTokens(headers, "connection"));
  const keepUpgrade = options.keepUpgrade === true;
  let upgrade = false;
  const out: HeaderList = [];
  for (const field of headers) {
    const name = field[0];
    if (name === "upgrade" && keepUpgrade) {
      upgrade = true;
      out.push(field);
      continue;
    }
    if (HOP_BY_HOP_HEADERS.has(name)) continue;
    if (nominated.has(name) && !NOT_NOMINABLE.has(name)) continue;
    out.push(field);
  }
  if (upgrade) out.push(["connection", "upgrade"]);
  return out;
}
