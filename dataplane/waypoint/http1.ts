/**
 * HTTP/1.x inside a tunnel, on Skiff's own codec (`../http1/`): requests read one after another (keep-alive),
 * bodies streamed both ways with backpressure and never buffered whole, chunked bodies re-framed with their
 * trailers, `Expect: 100-continue` answered, and upgrades (WebSocket) passed through as raw bytes once the
 * endpoint answers 101. A request the codec refuses (ambiguous framing, bad fields) gets its 400 and the
 * connection closes: it never reaches an endpoint.
 *
 * Towards endpoints, HTTP/1.1 connections are pooled per endpoint and reused while both sides allow it. Requests
 * from HTTP/2 clients to a backend declared HTTP/1.1 go this way too, translated (RFC 9113 §8.2.3, RFC 9110 §7.6):
 * `:authority` becomes Host, split cookies are joined, hop-by-hop fields are dropped, a body without a length
 * goes chunked with the request's trailers as its trailer section; the answer's chunked trailers come back as
 * HTTP/2 trailers (`http2.ts`). HTTP/1.1 clients' requests to a backend declared HTTP/2 go over `Http2Upstream`;
 * an upgrade (WebSocket) always goes over HTTP/1.1, the only version that can switch.
 *
 * @module
 */

import type { Duplex } from "node:stream";
import {
  checkTrailers,
  CHUNKED,
  contentLength,
  expectsContinue,
  type Framing,
  hasBody,
  headerTokens,
  headerValue,
  Http1Connection,
  Http1Error,
  keepAlive,
  NO_BODY,
  reasonPhrase,
  requestFraming,
  type RequestHead,
  type ResponseHead,
  stripHopByHop,
  UNTIL_CLOSE,
} from "../http1/mod.ts";
import type { ResponseFlags } from "../proxy/flags.ts";
import { relay } from "../proxy/relay.ts";
import { upstreamHttpVersion } from "./protocol.ts";
import type { Upstreams } from "./server.ts";
import {
  type Exchange,
  handleExchange,
  type Headers,
  type Upstream,
  type UpstreamRequest,
  type UpstreamResponse,
  type WaypointContext,
} from "./exchange.ts";
import { normalizeHost, normalizePath } from "./normalize.ts";
import { recordRequest } from "./record.ts";
import { applyHeaderModifier } from "./routing.ts";
import type { Session } from "./session.ts";
import { type Endpoint, endpointKey, type Tunnels } from "./upstream.ts";

/** An idle pooled connection to an endpoint is closed after this. */
export const UPSTREAM_IDLE_MS = 30_000;
/** Idle connections kept per endpoint. */
const MAX_IDLE_PER_ENDPOINT = 64;

/** An endpoint's response over HTTP/1.1, with the connection for an upgrade. */
interface Http1Response extends UpstreamResponse {
  /** After a 101: the endpoint's raw stream and the bytes it sent past the head. */
  detach(): { socket: Duplex; head: Uint8Array };
}

/** The framing of an outgoing body whose length may be known from Content-Length. */
function framingFor(headers: Headers, hasContent: boolean, chunkedOk: boolean): Framing {
  if (!hasContent) return NO_BODY;
  const cl = headerValue(headers, "content-length");
  if (cl !== undefined && /^\d+$/.test(cl)) return contentLength(Number(cl));
  return chunkedOk ? CHUNKED : UNTIL_CLOSE;
}

/** HTTP/1.1 connections to endpoints, reused while both sides allow it. */
export class Http1Upstream implements Upstream {
  #tunnels: Tunnels;
  #idle = new Map<string, { conn: Http1Connection; since: number }[]>();
  /** One sweep for every idle connection, rather than a timer armed and cleared per request. */
  #sweeper: ReturnType<typeof setInterval> | undefined;

  constructor(tunnels: Tunnels) {
    this.#tunnels = tunnels;
  }

  #take(key: string): Http1Connection | undefined {
    const list = this.#idle.get(key);
    while (list && list.length > 0) {
      const { conn } = list.pop()!;
      if (conn.reusable) return conn;
      conn.destroy();
    }
    return undefined;
  }

  #giveBack(key: string, conn: Http1Connection) {
    const list = this.#idle.get(key) ?? [];
    if (list.length >= MAX_IDLE_PER_ENDPOINT) return void conn.close();
    list.push({ conn, since: performance.now() });
    this.#idle.set(key, list);
    this.#sweeper ??= setInterval(() => this.#sweep(), UPSTREAM_IDLE_MS / 4);
  }

  /** Closes connections idle for {@link UPSTREAM_IDLE_MS}; stops when none is left. */
  #sweep() {
    const now = performance.now();
    for (const [key, list] of this.#idle) {
      const keep = list.filter((e) => {
        if (now - e.since < UPSTREAM_IDLE_MS && e.conn.reusable) return true;
        e.conn.close();
        return false;
      });
      if (keep.length > 0) this.#idle.set(key, keep);
      else this.#idle.delete(key);
    }
    if (this.#idle.size === 0) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  async send(e: Endpoint, req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamResponse> {
    const key = endpointKey(e);
    const pooled = this.#take(key);
    try {
      return await this.#exchange(pooled ?? await this.#open(e, signal), key, req, signal);
    } catch (error) {
      // A pooled connection the endpoint closed meanwhile: once more on a new one, when nothing was sent yet.
      if (pooled && error instanceof Http1Error && error.code === "CLOSED" && req.body === null) {
        return await this.#exchange(await this.#open(e, signal), key, req, signal);
      }
      throw error;
    }
  }

  async #open(e: Endpoint, signal: AbortSignal): Promise<Http1Connection> {
    const tunnel = await this.#tunnels.open(e, signal);
    if (signal.aborted) {
      // Cancelled while the endpoint was being reached (a TCP dial does not watch the signal).
      tunnel.destroy();
      signal.throwIfAborted();
    }
    return new Http1Connection(tunnel, { role: "client" });
  }

  async #exchange(conn: Http1Connection, key: string, req: UpstreamRequest, signal: AbortSignal) {
    const abort = () => conn.destroy(new Error("request cancelled"));
    if (signal.aborted) {
      // Nothing was written: a request body refused meanwhile, say. The head must not go out without its body.
      conn.destroy();
      signal.throwIfAborted();
    }
    signal.addEventListener("abort", abort, { once: true });
    try {
      const headers = toHttp1Fields(req.headers);
      const framing = framingFor(headers, req.body !== null, true);
      const head: RequestHead = {
        method: req.method,
        target: req.target,
        version: "HTTP/1.1",
        headers: [["host", req.authority], ...headers],
      };
      conn.writeHead(head, framing);
      if (req.body && hasBody(framing)) {
        const writer = conn.bodyWriter(framing);
        const body = req.body;
        body.on("error", (error) => conn.destroy(error));
        // HTTP/2 trailers go on as the chunked trailer section; with a Content-Length body they cannot (§7.1.2).
        body.once("end", () => {
          const trailers = framing.kind === "chunked" ? carriable(req.trailers?.() ?? []) : [];
          try {
            writer.finish(trailers);
          } catch {
            writer.end(); // never expected: carriable() kept only what HTTP/1.1 carries; the body still ends
          }
        });
        body.pipe(writer, { end: false });
      }
      const res: ResponseHead = await conn.readResponse(req.method);
      const body = res.status === 101 ? null : conn.readBody();
      const reusable = () => res.status !== 101 && keepAlive(res, body?.framing) && conn.reusable;
      const settle = () => {
        if (reusable()) this.#giveBack(key, conn);
        else conn.close();
      };
      const withBody = body !== null && hasBody(body.framing);
      if (withBody) {
        body!.once("end", () => queueMicrotask(settle));
        body!.once("close", () => {
          if (!body!.readableEnded) conn.destroy();
        });
      } else if (res.status !== 101) queueMicrotask(settle);
      const out: Http1Response = {
        status: res.status,
        headers: stripHopByHop(res.headers, { keepUpgrade: res.status === 101 }) as Headers,
        body: withBody ? body : null,
        trailers: () => body?.trailers,
        discard: () => conn.destroy(),
        detach: () => conn.detach(),
      };
      return out;
    } catch (error) {
      conn.destroy();
      throw error;
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  close(): void {
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    for (const list of this.#idle.values()) for (const { conn } of list) conn.destroy();
    this.#idle.clear();
  }
}

/**
 * The trailer fields an HTTP/1.1 trailer section may carry, each judged alone: not one that frames, routes or
 * authenticates (RFC 9110 §6.5.1, `checkTrailers`), nor a value with a control byte HTTP/2 lets through and
 * HTTP/1.1 cannot write (RFC 9110 §5.5). The others go on; a trailer section used to be dropped whole for one such
 * field, or the request failed 503.
 */
export function carriable(trailers: Headers): Headers {
  return trailers.filter((f) => {
    try {
      checkTrailers([f]);
    } catch {
      return false;
    }
    // deno-lint-ignore no-control-regex
    return !/[\x00-\x08\x0a-\x1f\x7f]/.test(f[1]);
  });
}

/**
 * A request's fields as HTTP/1.1 carries them: no Host (the authority is written as Host), no hop-by-hop field
 * (an HTTP/2 client may send `te: trailers`) but the Upgrade the HTTP/1.1 adapter let through (a WebSocket), and
 * an HTTP/2 client's split cookies joined into one field with `; ` (RFC 9113 §8.2.3).
 */
export function toHttp1Fields(headers: Headers): Headers {
  const keepUpgrade = headers.some(([n]) => n === "upgrade");
  const out = (stripHopByHop(headers, { keepUpgrade }) as Headers).filter(([n]) => n !== "host" && n !== "cookie");
  const cookies = headers.filter(([n]) => n === "cookie").map(([, v]) => v);
  if (cookies.length > 0) out.push(["cookie", cookies.join("; ")]);
  return out;
}

/** Serves HTTP/1.x requests on a tunnel until the client or the codec ends it. */
export async function serveHttp1(tunnel: Duplex, session: Session, upstreams: Upstreams, ctx: WaypointContext) {
  const conn = new Http1Connection(tunnel, { role: "server" });
  // The client closed the connection, or only its side of it: whatever request is in flight is cancelled. A FIN
  // ends an HTTP/1 client's part as Envoy reads it (its HTTP connections do not half-close): a downstream reset.
  const gone = new AbortController();
  tunnel.once("end", () => gone.abort());
  tunnel.once("close", () => gone.abort());
  for (;;) {
    const started = performance.now();
    let head: RequestHead | null;
    // Draining: a connection idle between requests is closed once the drain's grace is over.
    let idleClosed = false;
    const busy = ctx.drain?.idle(() => {
      idleClosed = true;
      void conn.close();
    });
    try {
      head = await conn.readRequest();
    } catch (error) {
      if (idleClosed) return;
      const status = error instanceof Http1Error ? error.status : 400;
      ctx.log.info({ src: session.peer.ip, error: (error as Error).message }, "malformed request refused");
      recordRequest(ctx, session, {
        protocol: "http",
        method: "-",
        path: "-",
        authority: session.authority,
        downstreamProtocol: "HTTP/1.1",
        status,
        flags: "DPE",
        bytesReceived: 0,
        bytesSent: 0,
        started,
        headers: [],
      });
      await conn.sendError(status);
      return;
    } finally {
      busy?.();
    }
    if (head === null || idleClosed) return void await conn.close();
    let again = false;
    const served = ctx.drain?.request();
    try {
      again = await serveRequest(conn, head, session, upstreams, ctx, started, gone.signal);
    } catch (error) {
      ctx.log.debug({ error: String(error) }, "HTTP/1 exchange ended early");
    } finally {
      served?.();
    }
    if (!again) return void await conn.close();
  }
}

/** Serves one request; returns whether the connection may carry another. */
async function serveRequest(
  conn: Http1Connection,
  head: RequestHead,
  session: Session,
  upstreams: Upstreams,
  ctx: WaypointContext,
  started: number,
  cancelled: AbortSignal,
): Promise<boolean> {
  const authority = headerValue(head.headers, "host") ?? session.authority;
  // Only WebSocket is upgraded, as Envoy enables it: any other protocol (h2c, say) would carry requests past the
  // L7 policy once switched. Its Upgrade header is dropped as hop-by-hop; an upgrade request with a body is not
  // upgraded either.
  const upgrade = headerTokens(head.headers, "connection").includes("upgrade") &&
    headerTokens(head.headers, "upgrade").join(",") === "websocket" && !hasBody(requestFraming(head));
  const grpc = (headerValue(head.headers, "content-type") ?? "").startsWith("application/grpc");
  const headers = (stripHopByHop(head.headers, { keepUpgrade: upgrade }) as Headers)
    .filter(([n]) => n !== "host" && n !== "expect");
  let received = 0;
  let sent = 0;
  const done = (
    status: number,
    flags: ResponseFlags,
    path: string,
    handled?: Awaited<ReturnType<typeof handleExchange>>,
  ) =>
    recordRequest(ctx, session, {
      handled,
      protocol: grpc ? "grpc" : "http",
      method: head.method,
      path,
      authority,
      downstreamProtocol: head.version,
      status,
      flags,
      bytesReceived: received,
      bytesSent: sent,
      started,
      headers: head.headers,
    });

  const path = head.method === "CONNECT"
    ? { error: "CONNECT is not proxied by the waypoint" }
    : normalizePath(head.target);
  const host = normalizeHost(authority);
  if ("error" in path || "error" in host) {
    ctx.log.info(
      { target: head.target, authority, error: "error" in path ? path.error : "bad host" },
      "request refused",
    );
    done(400, "DPE", head.target);
    await conn.sendError(400);
    return false;
  }
  if (expectsContinue(head)) {
    conn.writeHead({ version: "HTTP/1.1", status: 100, reason: "Continue", headers: [] }, NO_BODY);
  }
  // A request without a body (most GETs) gets no stream: a Readable made, ended and listened to per request, for
  // nothing to read, was a measurable share of the request's cost (docs/performance.md).
  const body = hasBody(requestFraming(head)) ? conn.readBody() : null;
  // Counted as it flows; paused again so that nothing flows (and is lost) before the body is piped upstream.
  body?.on("data", (c: Uint8Array) => received += c.byteLength).pause();
  const x: Exchange = {
    method: head.method,
    path: path.path,
    query: path.query,
    host: host.host,
    // Forwarded as policies saw it: lowercase, no trailing dot.
    authority: host.port === undefined ? host.host : `${host.host}:${host.port}`,
    headers,
    body,
    trailers: () => (body?.trailers ?? []) as Headers,
    cancelled,
    grpc,
  };
  const handled = await handleExchange(
    session,
    x,
    (appProtocol) => upgrade ? upstreams.http1 : upstreams[upstreamHttpVersion(appProtocol, "http1")],
    ctx,
  );
  const answer = handled.answer;
  // Draining: this response closes the connection (`Connection: close`), so the client reconnects elsewhere.
  const clientKeeps = keepAlive(head) && !ctx.drain?.draining;
  if (answer.kind === "cancelled" || cancelled.aborted) {
    if (answer.kind === "upstream") answer.response.discard();
    handled.done();
    done(0, "DC", path.path, handled);
    return false;
  }
  if (answer.kind === "local") {
    handled.done();
    const bytes = new TextEncoder().encode(answer.body);
    const h: Headers = [...answer.headers];
    // With a request body left unread, the connection cannot carry another request: say so.
    const drop = !clientKeeps || body !== null && !body.readableEnded;
    if (drop) h.push(["connection", "close"]);
    const respond = { version: "HTTP/1.1" as const, status: answer.status, reason: reasonPhrase(answer.status) };
    if (head.method === "HEAD") {
      // The length of the body a GET would have had, and no body.
      conn.writeHead({ ...respond, headers: [...h, ["content-length", String(bytes.byteLength)]] }, NO_BODY);
    } else {
      conn.writeHead({ ...respond, headers: h }, contentLength(bytes.byteLength));
      const writer = conn.bodyWriter(contentLength(bytes.byteLength));
      await new Promise<void>((resolve) => {
        writer.once("finish", resolve);
        writer.once("close", resolve);
        writer.end(bytes);
      });
      sent = bytes.byteLength;
    }
    done(answer.status, handled.flags, path.path, handled);
    if (drop) body?.destroy();
    return !drop;
  }

  const res = answer.response as Http1Response;
  const resHeaders = applyHeaderModifier(res.headers, handled.responseHeaders);
  if (res.status === 101 && !upgrade) {
    // A switch nobody asked for would turn the rest of the connection into bytes no policy reads.
    res.discard();
    handled.done();
    done(502, "UPE", path.path, handled);
    await conn.sendError(502);
    return false;
  }
  if (res.status === 101) {
    conn.writeHead({ version: "HTTP/1.1", status: 101, reason: "Switching Protocols", headers: resHeaders }, NO_BODY);
    const down = conn.detach();
    const up = res.detach();
    if (down.head.byteLength > 0) up.socket.write(down.head);
    if (up.head.byteLength > 0) down.socket.write(up.head);
    down.socket.resume();
    up.socket.resume();
    handled.done();
    const result = await relay(down.socket, up.socket).done;
    received += result.aToB;
    sent += result.bToA;
    done(101, handled.flags, path.path, handled);
    return false;
  }
  // A response to HEAD, a 204 or a 304 ends with its head in HTTP/1.1 (RFC 9112 §6.3 item 1). An HTTP/2 endpoint
  // can still send DATA after one (its frames delimit it); written here, those bytes would be read by the client
  // as the answer to its next request on this connection (response splitting). The body is dropped, the stream
  // reset; and a 204 loses any Content-Length (RFC 9110 §8.6: never sent with a 204), which a lax client would
  // take as a body to read.
  const bodyless = head.method === "HEAD" || res.status === 204 || res.status === 304;
  if (bodyless && res.body !== null) res.discard();
  const framing = bodyless ? NO_BODY : framingFor(resHeaders, res.body !== null, head.version === "HTTP/1.1");
  const out: ResponseHead = {
    version: "HTTP/1.1",
    status: res.status,
    reason: reasonPhrase(res.status),
    headers: resHeaders.filter(([n]) => n !== "transfer-encoding" && !(res.status === 204 && n === "content-length")),
  };
  // An HTTP/2 answer that ended with its headers (a trailers-only gRPC status) has an empty body, which
  // HTTP/1.1 must frame: without a length, the client would read to the connection's close.
  if (res.body === null && !bodyless && headerValue(resHeaders, "content-length") === undefined) {
    out.headers.push(["content-length", "0"]);
  }
  if (!clientKeeps || framing.kind === "close") out.headers.push(["connection", "close"]);
  try {
    conn.writeHead(out, framing);
  } catch (error) {
    // A field value HTTP/2 allows and HTTP/1.1 cannot carry (a control byte, RFC 9110 §5.5): the head is refused
    // whole before a byte of it is written, the endpoint's answer dropped, and the client told so, as Envoy answers
    // an upstream protocol error (502, UPE).
    ctx.log.info({ path: path.path, error: String(error) }, "endpoint's response head cannot be sent over HTTP/1.1");
    if (!bodyless) res.discard();
    handled.done();
    done(502, "UPE", path.path, handled);
    await conn.sendError(502);
    return false;
  }
  let complete = true;
  if (res.body && hasBody(framing)) {
    const writer = conn.bodyWriter(framing);
    const resBody = res.body;
    // What the endpoint's connection already holds of the body (a small answer arrives with its head) goes now, in
    // one write with the head: piped, it would flow a tick later, after the head had left alone (the codec holds a
    // head only to the end of the microtask). A write is the costliest step of a small request here (an op and a
    // syscall, over HBONE a DATA frame and a TLS record): docs/performance.md.
    const first = resBody.read() as Uint8Array | null;
    if (first !== null) {
      sent += first.byteLength;
      writer.write(first);
    }
    resBody.on("data", (c: Uint8Array) => sent += c.byteLength);
    const onDeadline = () => resBody.destroy(new Error("request timeout"));
    handled.deadline.addEventListener("abort", onDeadline, { once: true });
    complete = await new Promise<boolean>((resolve) => {
      resBody.pipe(writer, { end: false });
      resBody.once("end", () => {
        const trailers = res.trailers() ?? [];
        if (framing.kind === "chunked" && trailers.length > 0) writer.finish(trailers);
        else writer.end();
      });
      resBody.once("close", () => {
        if (!resBody.readableEnded) {
          conn.destroy();
          resolve(false);
        }
      });
      writer.once("finish", () => resolve(true));
      writer.once("close", () => resolve(writer.writableFinished));
    });
    handled.deadline.removeEventListener("abort", onDeadline);
  }
  handled.done();
  // Cut short: by the client (DC), or by the endpoint or the deadline (UC).
  done(res.status, complete ? handled.flags : cancelled.aborted ? "DC" : "UC", path.path, handled);
  if (!complete || !clientKeeps || framing.kind === "close") return false;
  // The request body must have been read to its end for another request to follow.
  if (body !== null && !body.readableEnded) {
    body.destroy();
    return false;
  }
  return true;
}
