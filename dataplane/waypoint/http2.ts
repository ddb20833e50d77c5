/**
 * HTTP/2 with prior knowledge inside a tunnel (what gRPC clients and `curl --http2-prior-knowledge` speak), on
 * Skiff's own HTTP/2 (`../h2/`), both towards the client (a server connection on the tunnel) and towards the
 * endpoints (one multiplexed client connection per endpoint, shared by every client's requests). Trailers pass
 * through untouched, so gRPC status arrives intact, and a trailers-only response (one HEADERS frame with
 * END_STREAM, gRPC's answer when a call fails before any message) leaves as one HEADERS frame with END_STREAM: a
 * gRPC client reads the status of an empty DATA frame's stream as `UNKNOWN: Stream removed`. A local answer to a
 * gRPC request is a gRPC status (a denial is `PERMISSION_DENIED`, an unreachable backend `UNAVAILABLE`), as Envoy
 * answers gRPC clients.
 *
 * A backend whose port declares HTTP/1.1 (`protocol.ts`) gets the request over HTTP/1.1 (`http1.ts` translates:
 * `:authority` becomes Host, a body without a length goes chunked with the trailers as its trailer section), and
 * a backend declared HTTP/2 gets HTTP/1.1 clients' requests over HTTP/2 (`Http2Upstream` below). A client that
 * resets its stream before its answer is complete (a gRPC deadline, say) cancels the upstream attempt, and the
 * request is recorded as Envoy records it: `DC`, with `0` when no response had started.
 *
 * @module
 */

import type { Duplex } from "node:stream";
import { H2Connection } from "../h2/connection.ts";
import { field, type HeaderField } from "../h2/fields.ts";
import { ErrorCode } from "../h2/frame.ts";
import type { ResponseFlags } from "../proxy/flags.ts";
import type { H2Stream } from "../h2/stream.ts";
import {
  type Exchange,
  type Handled,
  handleExchange,
  type Headers,
  type Upstream,
  type UpstreamRequest,
  type UpstreamResponse,
  type WaypointContext,
} from "./exchange.ts";
import { normalizeHost, normalizePath } from "./normalize.ts";
import { applyHeaderModifier } from "./routing.ts";
import type { Session } from "./session.ts";
import { type Endpoint, endpointKey, type Tunnels } from "./upstream.ts";
import { recordRequest } from "./record.ts";
import type { Upstreams } from "./server.ts";
import { upstreamHttpVersion } from "./protocol.ts";

/** Upstream HTTP/2 connections, one per endpoint while it has room. */
export class Http2Upstream implements Upstream {
  #tunnels: Tunnels;
  #conns = new Map<string, Promise<H2Connection>>();

  constructor(tunnels: Tunnels) {
    this.#tunnels = tunnels;
  }

  async #connection(e: Endpoint, signal: AbortSignal): Promise<H2Connection> {
    const key = endpointKey(e);
    const held = this.#conns.get(key);
    if (held) {
      const conn = await held.catch(() => undefined);
      if (conn?.usable && conn.activeStreams < conn.peerMaxConcurrentStreams) return conn;
      if (this.#conns.get(key) === held) this.#conns.delete(key);
    }
    const opening = this.#tunnels.open(e, signal).then((tunnel) => {
      const conn = new H2Connection(tunnel, { role: "client" });
      conn.closed.then(() => {
        if (this.#conns.get(key) === opening) this.#conns.delete(key);
      });
      return conn;
    });
    this.#conns.set(key, opening);
    opening.catch(() => {
      if (this.#conns.get(key) === opening) this.#conns.delete(key);
    });
    return await opening;
  }

  async send(e: Endpoint, req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamResponse> {
    const conn = await this.#connection(e, signal);
    // Cancelled while the connection was being made (a request body refused meanwhile, say): no stream is opened,
    // and the connection stays for others.
    signal.throwIfAborted();
    const fields: HeaderField[] = [
      [":method", req.method],
      [":scheme", "http"],
      [":authority", req.authority],
      [":path", req.target],
      // From an HTTP/1.1 client: what HTTP/2 forbids (RFC 9113 §8.2.2) is not sent; hop-by-hop fields are gone.
      ...req.headers.filter(([n, v]) =>
        !isConnectionSpecific(n) && (n !== "te" || v === "trailers") && n !== "content-length"
      ),
      ...singleLength(req.headers),
    ];
    const stream = conn.request(fields, { endStream: req.body === null });
    const abort = () => stream.reset(ErrorCode.CANCEL);
    signal.addEventListener("abort", abort, { once: true });
    if (req.body) {
      const body = req.body;
      body.on("error", () => stream.reset(ErrorCode.CANCEL));
      // An HTTP/1.1 chunked body's trailer section goes on as HTTP/2 trailers.
      body.once("end", () => {
        // Connection-specific fields are malformed in trailers too (§8.2.2): many servers take one for a
        // connection error, which would end every other client's stream on this shared connection.
        const trailers = req.trailers?.()?.filter(([n]) => !isConnectionSpecific(n) && n !== "te");
        if (trailers && trailers.length > 0) stream.endWithTrailers(trailers);
        else stream.end();
      });
      body.pipe(stream, { end: false });
    }
    try {
      const head = await stream.response;
      // The response ended with its headers (a trailers-only gRPC answer, a 204): it has no body to relay, and
      // the client must see it end on its HEADERS frame too.
      const bodiless = stream.remoteEnded && stream.readableLength === 0;
      if (bodiless) stream.resume();
      return {
        status: Number(field(head, ":status")),
        headers: head.filter(([n]) => !n.startsWith(":")),
        body: bodiless ? null : stream,
        trailers: () => stream.trailers,
        discard: () => stream.reset(ErrorCode.CANCEL),
      };
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  close(): void {
    for (const c of this.#conns.values()) c.then((conn) => conn.destroy(new Error("waypoint closing")), () => {});
    this.#conns.clear();
  }
}

/**
 * The request's Content-Length as one field with one value. HTTP/1.1 accepts it repeated, or as a list, when
 * every value is the same (RFC 9110 §8.6; the codec has refused any other), but HTTP/2 servers (nghttp2,
 * python-h2) refuse both forms, some with a connection error that would end every other client's stream on this
 * shared connection.
 */
function singleLength(headers: Headers): Headers {
  const value = headers.find(([n]) => n === "content-length")?.[1];
  return value === undefined ? [] : [["content-length", value.split(",")[0].trim()]];
}

/** gRPC status codes for local answers (Envoy's mapping of HTTP status to gRPC). */
function grpcStatusOf(status: number): string {
  if (status === 403) return "7"; // PERMISSION_DENIED
  if (status === 404) return "12"; // UNIMPLEMENTED
  if (status === 504) return "4"; // DEADLINE_EXCEEDED
  if (status === 400) return "13"; // INTERNAL
  return "14"; // UNAVAILABLE
}

/** Serves HTTP/2 requests on a tunnel until it closes. */
export async function serveHttp2(tunnel: Duplex, session: Session, upstreams: Upstreams, ctx: WaypointContext) {
  const conn = new H2Connection(tunnel, {
    role: "server",
    maxConcurrentStreams: 100,
    onStream: (stream) => {
      const served = ctx.drain?.request();
      onStream(stream, session, upstreams, ctx).catch((error) => {
        ctx.log.error({ error: String(error) }, "BUG: HTTP/2 request handling failed");
        stream.reset(ErrorCode.INTERNAL_ERROR);
      }).finally(served);
    },
  });
  // Draining: GOAWAY (2^31-1, then the last stream id); the streams open run to their end.
  ctx.drain?.http2(conn);
  await conn.closed;
}

async function onStream(stream: H2Stream, session: Session, upstreams: Upstreams, ctx: WaypointContext) {
  const started = performance.now();
  const h = stream.requestHeaders;
  const method = field(h, ":method") ?? "";
  const rawPath = field(h, ":path") ?? "";
  const authority = field(h, ":authority") ?? field(h, "host") ?? session.authority;
  const headers: Headers = h.filter(([n]) => !n.startsWith(":") && n !== "host");
  const grpc = (field(h, "content-type") ?? "").startsWith("application/grpc");
  let received = 0;
  // Counted as it flows; paused again so that nothing flows (and is lost) before the body is piped upstream.
  stream.on("data", (c: Uint8Array) => received += c.byteLength).pause();
  const record = (
    status: number,
    flags: ResponseFlags,
    handled?: Handled,
    grpcStatus?: string,
    sent = 0,
    path = rawPath,
  ) =>
    recordRequest(ctx, session, {
      handled,
      protocol: grpc ? "grpc" : "http",
      method,
      path,
      authority,
      downstreamProtocol: "HTTP/2",
      status,
      grpcStatus,
      flags,
      bytesReceived: received,
      bytesSent: sent,
      started,
      headers,
    });

  // Methods are case-sensitive tokens and policies match them exactly: `delete` is refused rather than let past
  // a DENY on DELETE to a backend that reads methods without regard to case.
  const path = method === "CONNECT"
    ? { error: "CONNECT inside a tunnel is not proxied" }
    : /[a-z]/.test(method)
    ? { error: `method ${JSON.stringify(method)} is not upper case` }
    : controlField(headers) ?? normalizePath(rawPath);
  const host = normalizeHost(authority);
  if ("error" in path || "error" in host) {
    const body = new TextEncoder().encode(
      `Bad Request: ${"error" in path ? path.error : (host as { error: string }).error}\n`,
    );
    stream.respond([[":status", "400"], ["content-type", "text/plain"], ["content-length", String(body.byteLength)]]);
    stream.end(body);
    record(400, "DPE", undefined, undefined, body.byteLength);
    return;
  }
  // The client reset its stream (a deadline, a cancelled call) before its answer was complete.
  const gone = new AbortController();
  const onGone = () => {
    if (!stream.writableFinished) gone.abort();
  };
  stream.once("close", onGone);
  const x: Exchange = {
    method,
    path: path.path,
    query: path.query,
    host: host.host,
    // Forwarded as policies saw it: lowercase, no trailing dot.
    authority: host.port === undefined ? host.host : `${host.host}:${host.port}`,
    headers,
    body: stream.remoteEnded && stream.readableLength === 0 ? null : stream,
    trailers: () => stream.trailers,
    cancelled: gone.signal,
    grpc,
  };
  const handled = await handleExchange(
    session,
    x,
    (appProtocol) => upstreams[upstreamHttpVersion(appProtocol, "http2")],
    ctx,
  );
  const answer = handled.answer;
  if (answer.kind === "cancelled" || gone.signal.aborted) {
    // Nobody to answer; an endpoint's response that came meanwhile is dropped.
    if (answer.kind === "upstream") answer.response.discard();
    handled.done();
    record(0, "DC", handled, undefined, 0, path.path);
    return;
  }
  if (answer.kind === "local") {
    handled.done();
    if (grpc) {
      stream.respond([
        [":status", "200"],
        ["content-type", "application/grpc"],
        ["grpc-status", grpcStatusOf(answer.status)],
        ["grpc-message", encodeURIComponent(answer.body)],
      ], { endStream: true });
      record(200, handled.flags, handled, grpcStatusOf(answer.status), 0, path.path);
    } else {
      const body = new TextEncoder().encode(answer.body);
      const fields: HeaderField[] = [
        [":status", String(answer.status)],
        ...answer.headers,
        ["content-length", String(body.byteLength)],
      ];
      const head = method === "HEAD";
      stream.respond(fields, { endStream: head });
      if (!head) stream.end(body);
      record(answer.status, handled.flags, handled, undefined, head ? 0 : body.byteLength, path.path);
    }
    if (!stream.remoteEnded) stream.reset(ErrorCode.NO_ERROR);
    return;
  }
  let res = answer.response;
  if (res.status < 200) {
    // A 101 from an HTTP/1.1 endpoint: HTTP/2 has no such switch (RFC 9113 §8.6), so it cannot be relayed.
    res.discard();
    handled.done();
    stream.respond([[":status", "502"]], { endStream: true });
    record(502, "UPE", handled, undefined, 0, path.path);
    return;
  }
  const out = applyHeaderModifier(res.headers.filter(([n]) => !isConnectionSpecific(n)), handled.responseHeaders);
  // A response to HEAD, a 204 or a 304 has no content (RFC 9110 §6.4.1): DATA an endpoint sends after one is
  // dropped and its stream reset, as the HTTP/1.1 side does (`http1.ts`), so both protocols answer alike.
  if ((method === "HEAD" || res.status === 204 || res.status === 304) && res.body !== null) {
    res.discard();
    res = { ...res, body: null };
  }
  stream.respond([[":status", String(res.status)], ...out], { endStream: res.body === null });
  let sent = 0;
  const finish = (flags: ResponseFlags) => {
    handled.done();
    const trailers = res.trailers();
    const grpcStatus = grpc ? (field(trailers ?? [], "grpc-status") ?? field(res.headers, "grpc-status")) : undefined;
    record(res.status, flags, handled, grpcStatus, sent, path.path);
  };
  if (!res.body) return finish(handled.flags);
  const body = res.body;
  const onDeadline = () => {
    stream.off("close", onGone); // our own reset, not the client's
    body.destroy();
    stream.reset(ErrorCode.CANCEL);
  };
  handled.deadline.addEventListener("abort", onDeadline, { once: true });
  body.on("data", (c: Uint8Array) => sent += c.byteLength);
  body.pipe(stream, { end: false });
  await new Promise<void>((resolve) => {
    body.once("end", () => {
      const trailers = res.trailers();
      if (trailers && trailers.length > 0) stream.endWithTrailers(trailers);
      else stream.end();
      resolve();
    });
    body.once("close", () => {
      if (!body.readableEnded) stream.reset(ErrorCode.CANCEL);
      resolve();
    });
    stream.once("close", () => {
      if (!body.readableEnded) body.destroy();
      resolve();
    });
  });
  handled.deadline.removeEventListener("abort", onDeadline);
  // Cut short: by the client (DC), or by the endpoint or the deadline (UC).
  finish(body.readableEnded ? handled.flags : gone.signal.aborted ? "DC" : "UC");
}

/**
 * Why a request's fields cannot go on, or null: a value with a control byte other than HTAB, or DEL. HTTP/2
 * only makes NUL, CR and LF malformed (RFC 9113 §8.2.1), but field values never hold the others (RFC 9110 §5.5)
 * and HTTP/1.1 cannot carry them; refused here, whichever protocol the backend speaks, a request is answered 400
 * (`DPE`) as it arrived rather than 503 once a backend was chosen.
 */
export function controlField(headers: Headers): { error: string } | null {
  for (const [name, value] of headers) {
    // deno-lint-ignore no-control-regex
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return { error: `field ${name} has a control byte in its value` };
  }
  return null;
}

/** Headers HTTP/2 forbids (RFC 9113 §8.2.2); an HTTP/1 endpoint may send them. */
export function isConnectionSpecific(name: string): boolean {
  return name === "connection" || name === "keep-alive" || name === "proxy-connection" ||
    name === "transfer-encoding" || name === "upgrade";
}
