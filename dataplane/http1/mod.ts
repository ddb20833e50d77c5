/**
 * Skiff's HTTP/1.1 codec (RFC 9112, RFC 9110), for the waypoint: it speaks HTTP/1.1 as a server on the byte
 * streams clients open (HTTP/2 CONNECT streams of HBONE, or sockets) and as a client towards backends, over any
 * Node duplex.
 *
 * Why not `node:http`: Deno's `node:http` server cannot reliably be handed an arbitrary duplex such as an `H2Stream`,
 * it is slow (16–23k requests/s on the project machines), and a proxy needs control `node:http` does not give:
 * exact framing decisions, refusal of every ambiguous message (the request smuggling defence), interim responses,
 * trailers, and handing the raw stream back for upgrades and CONNECT tunnels.
 *
 * Pieces: `head.ts` parses and serialises heads, `framing.ts` decides where bodies end and whether a connection
 * persists, `chunked.ts` decodes and encodes the chunked coding, `connection.ts` drives one connection with
 * backpressure both ways (`body.ts` holds its body streams, `buffer.ts` its receive buffer), `fields.ts` has the field
 * helpers a proxy needs.
 *
 * @module
 */

export { Http1Error, type Http1ErrorCode } from "./errors.ts";
export { checkTrailers } from "./chunked.ts";
export {
  DEFAULT_LIMITS,
  type HeaderList,
  type HeadLimits,
  type HttpVersion,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
} from "./head.ts";
export {
  CHUNKED,
  contentLength,
  errorResponse,
  expectsContinue,
  type Framing,
  hasBody,
  keepAlive,
  NO_BODY,
  reasonPhrase,
  requestFraming,
  responseFraming,
  UNTIL_CLOSE,
} from "./framing.ts";
export { headerTokens, headerValue, headerValues, HOP_BY_HOP_HEADERS, stripHopByHop } from "./fields.ts";
export { Http1Body, Http1BodyWriter } from "./body.ts";
export { Http1Connection, type Http1ConnectionOptions, type ReadResponseOptions } from "./connection.ts";
