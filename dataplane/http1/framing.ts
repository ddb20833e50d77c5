/**
 * Where a message body ends (RFC 9112 §6.3) and whether the connection may carry another message (§9.3). These are
 * the decisions request smuggling attacks: a proxy and the server behind it must agree on where each request ends,
 * so every header combination two implementations could read differently is refused instead of resolved.
 *
 * Refused as malformed (400): Content-Length together with Transfer-Encoding (the RFC lets Transfer-Encoding win;
 * we refuse, as Envoy and HAProxy do), a Content-Length that is not all digits or whose repeated values differ,
 * Transfer-Encoding in an HTTP/1.0 message (§6.1), chunked applied twice or not last. Refused as unsupported (501):
 * any transfer coding other than a single chunked. The RFC would read a response with a non-chunked coding until the
 * connection closes, but forwarding it would mean forwarding its Transfer-Encoding, a hop-by-hop field; Envoy
 * refuses those responses too.
 */

import { Http1Error, malformed } from "./errors.ts";
import { headerTokens, trimOws } from "./fields.ts";
import type { HeaderList, RequestHead, ResponseHead } from "./head.ts";

/** How a message body is delimited. */
export type Framing =
  /** No body at all (not even an empty one that a Content-Length: 0 would announce). */
  | { readonly kind: "none" }
  /** Exactly `length` bytes (Content-Length). */
  | { readonly kind: "length"; readonly length: number }
  /** Chunked transfer coding, possibly with trailers. */
  | { readonly kind: "chunked" }
  /** Responses only: the body runs until the connection closes. */
  | { readonly kind: "close" };

/** Framing constants, frozen so that they can be shared. */
export const NO_BODY: Framing = Object.freeze({ kind: "none" });
export const CHUNKED: Framing = Object.freeze({ kind: "chunked" });
export const UNTIL_CLOSE: Framing = Object.freeze({ kind: "close" });
/** The framing of a body of exactly `length` bytes. */
export const contentLength = (length: number): Framing => Object.freeze({ kind: "length", length });

/** Whether a message with this framing has body bytes to read or write. */
export function hasBody(framing: Framing): boolean {
  return framing.kind === "chunked" || framing.kind === "close" || (framing.kind === "length" && framing.length > 0);
}

/** Codings RFC 9112 §7 and the IANA registry define; anything else in Transfer-Encoding is unknown. */
const KNOWN_CODINGS = new Set(["chunked", "compress", "deflate", "gzip", "x-compress", "x-gzip"]);

/** The framing of a request (RFC 9112 §6.3 items 3–7); throws Http1Error for the refusals above. */
export function requestFraming(head: RequestHead): Framing {
  return messageFraming(head.headers, head.version, true) ?? NO_BODY;
}

/** The framing of a response to a `requestMethod` request (RFC 9112 §6.3 items 1–8). */
export function responseFraming(head: ResponseHead, requestMethod: string): Framing {
  const status = head.status;
  if (requestMethod === "HEAD" || status < 200 || status === 204 || status === 304) return NO_BODY;
  // A 2xx to CONNECT turns the connection into a tunnel: what follows is not a body.
  if (requestMethod === "CONNECT" && status < 300) return NO_BODY;
  return messageFraming(head.headers, head.version, false) ?? UNTIL_CLOSE;
}

function messageFraming(headers: HeaderList, version: string, request: boolean): Framing | null {
  let te = false;
  let lengths: string[] | null = null;
  for (const [name, value] of headers) {
    if (name === "transfer-encoding") te = true;
    else if (name === "content-length") (lengths ??= []).push(value);
  }
  if (te) {
    if (version === "HTTP/1.0") throw malformed("Transfer-Encoding in an HTTP/1.0 message");
    if (lengths !== null) throw malformed("both Content-Length and Transfer-Encoding");
    return transferCoding(headers, request);
  }
  if (lengths !== null) return contentLength(parseContentLength(lengths, request));
  return null;
}

function transferCoding(headers: HeaderList, request: boolean): Framing {
  const codings = headerTokens(headers, "transfer-encoding");
  if (codings.length === 0) throw malformed("empty Transfer-Encoding");
  let chunked = 0;
  for (const coding of codings) {
    if (!/^[a-z0-9!#$%&'*+\-.^_`|~]+$/.test(coding)) throw malformed(`transfer coding ${JSON.stringify(coding)}`);
    if (coding === "chunked") chunked++;
  }
  const last = codings[codings.length - 1];
  if (last !== "chunked") {
    if (chunked > 0) throw malformed("chunked is not the final transfer coding");
    // §6.3 item 4: a request whose final coding is not chunked cannot be delimited: 400. An unknown coding: 501.
    if (request && codings.every((c) => KNOWN_CODINGS.has(c))) {
      throw malformed(`final transfer coding ${last} is not chunked`);
    }
    throw new Http1Error(501, "UNSUPPORTED", `transfer coding ${codings.join(", ")} is not supported`);
  }
  if (chunked > 1) throw malformed("chunked applied more than once");
  if (codings.length > 1) {
    throw new Http1Error(501, "UNSUPPORTED", `transfer coding ${codings.join(", ")} is not supported`);
  }
  return CHUNKED;
}

/** Content-Length = 1*DIGIT (RFC 9110 §8.6); repeated identical values (lines or list) are accepted as one. */
function parseContentLength(values: string[], request: boolean): number {
  let length = -1;
  for (const value of values) {
    for (const part of value.split(",")) {
      const digits = trimOws(part);
      if (!/^[0-9]+$/.test(digits)) throw malformed(`Content-Length ${JSON.stringify(value)} is not a number`);
      const n = Number(digits);
      if (!Number.isSafeInteger(n)) {
        throw new Http1Error(request ? 413 : 502, "TOO_LARGE", `Content-Length ${digits} is too large`);
      }
      if (length >= 0 && n !== length) throw malformed(`differing Content-Length values ${values.join(", ")}`);
      length = n;
    }
  }
  return length;
}

/**
 * Whether the connection may carry another message after this one (RFC 9112 §9.3): not after `Connection: close`,
 * not for HTTP/1.0 unless it asked for keep-alive, never after a body delimited by closing. A proxy calls it on
 * both the request and the response; the connection persists only if both say so. Upgrades and CONNECT tunnels
 * end the HTTP exchange altogether; the caller knows those from the status.
 */
export function keepAlive(head: RequestHead | ResponseHead, framing?: Framing): boolean {
  if (framing?.kind === "close") return false;
  const tokens = headerTokens(head.headers, "connection");
  if (tokens.includes("close")) return false;
  return head.version === "HTTP/1.1" || tokens.includes("keep-alive");
}

/** Whether the client waits for a 100 (Continue) before sending the body (RFC 9110 §10.1.1; ignored in 1.0). */
export function expectsContinue(head: RequestHead): boolean {
  return head.version === "HTTP/1.1" && headerTokens(head.headers, "expect").includes("100-continue");
}

const REASONS: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  200: "OK",
  201: "Created",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  413: "Content Too Large",
  414: "URI Too Long",
  417: "Expectation Failed",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/** The RFC 9110 reason phrase of `status`, or "" for codes without a well-known one. */
export function reasonPhrase(status: number): string {
  return REASONS[status] ?? "";
}

/**
 * A complete response for a request the codec or the proxy refuses: `content-length`, `connection: close` and a
 * one-line text body such as `400 Bad Request`. The connection must be closed after it is written.
 */
export function errorResponse(status: number): Uint8Array {
  const reason = reasonPhrase(status);
  const body = `${status} ${reason}\n`;
  const text = `HTTP/1.1 ${status} ${reason}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n` +
    `connection: close\r\n\r\n${body}`;
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}
