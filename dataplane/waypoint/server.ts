/**
 * The waypoint's listener: HBONE on 15008 (the same mTLS and HTTP/2 code as ztunnel's), each CONNECT admitted
 * only for a destination bound to this waypoint (`session.ts`), answered 200, then served by what its first
 * bytes are: HTTP/2 with prior knowledge (the connection preface), HTTP/1.x (a request line), or anything else
 * at L4. A Service port whose `appProtocol` is `tcp` is not sniffed. A client that sends nothing within
 * {@link SNIFF_TIMEOUT_MS} (a server-first protocol) is passed at L4 too.
 *
 * A port declared HTTP (`appProtocol` http, http2, grpc, grpc-web, kubernetes.io/h2c, or a port name istiod reads
 * so: `protocol.ts`) is never passed at L4, as Istio never sniffs a declared port: its traffic goes straight to
 * Envoy's HTTP connection manager, which waits for the request however late it comes, and answers bytes that are not
 * HTTP with a codec error (400, response flag `DPE`) and a close. So here the first bytes are awaited up to
 * {@link HTTP_FIRST_BYTES_TIMEOUT_MS}, not the sniff's 1 s (a slow client's request would otherwise reach a backend
 * at L4, around its HTTPRoute and L7 policies), and anything but HTTP/2's preface or a request line is refused with
 * no upstream connection made.
 *
 * @module
 */

import type { Duplex } from "node:stream";
import { field } from "../h2/fields.ts";
import { Http1Connection } from "../http1/mod.ts";
import type { HboneRequest } from "../hbone/server.ts";
import type { WaypointContext } from "./exchange.ts";
import { type Http1Upstream, serveHttp1 } from "./http1.ts";
import { type Http2Upstream, serveHttp2 } from "./http2.ts";
import { declaredHttpVersion } from "./protocol.ts";
import { recordRequest } from "./record.ts";
import { admit, type Session } from "./session.ts";
import { passTcp } from "./tcp.ts";

/** How long the first bytes of a tunnel are awaited before it is taken as a server-first protocol. */
export const SNIFF_TIMEOUT_MS = 1_000;

/**
 * How long a tunnel to a port declared HTTP may stay silent before it is closed: the bound the waypoint's HTTP/1
 * codec puts on a keep-alive connection awaiting its next request (`Http1Connection`'s `idleTimeoutMs`), since a
 * tunnel that has sent nothing yet is just such an idle HTTP connection. Envoy's own bound there is the HTTP
 * connection manager's `idle_timeout` (1 h by default; Istio sets no `request_headers_timeout`), far too long to
 * hold a tunnel that has had its 200.
 */
export const HTTP_FIRST_BYTES_TIMEOUT_MS = 60_000;

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** What the first bytes say: a protocol, or undefined when more bytes are needed. */
export function classify(b: Uint8Array): "http1" | "http2" | "tcp" | undefined {
  if (b.byteLength === 0) return undefined;
  const n = Math.min(b.byteLength, PREFACE.byteLength);
  let preface = true;
  for (let i = 0; i < n; i++) if (b[i] !== PREFACE[i]) preface = false;
  if (preface) return b.byteLength >= PREFACE.byteLength ? "http2" : undefined;
  // An HTTP/1 request line starts with a method token of upper-case letters and a space.
  for (let i = 0; i < Math.min(b.byteLength, 21); i++) {
    const c = b[i];
    if (c === 0x20) return i > 0 ? "http1" : "tcp";
    if ((c < 0x41 || c > 0x5a) && !(i > 0 && (c === 0x2d || c === 0x5f))) return "tcp";
  }
  return b.byteLength >= 21 ? "tcp" : undefined;
}

/** Reads the first bytes of `s` to tell its protocol, then puts them back. */
export function sniff(s: Duplex, timeoutMs = SNIFF_TIMEOUT_MS): Promise<"http1" | "http2" | "tcp"> {
  return new Promise((resolve) => {
    const chunks: Uint8Array[] = [];
    let total = 0;
    const joined = () => {
      const out = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.byteLength;
      }
      return out;
    };
    const decide = (kind: "http1" | "http2" | "tcp") => {
      clearTimeout(timer);
      s.off("readable", onReadable);
      s.off("end", onEnd);
      s.off("close", onEnd);
      if (total > 0 && !s.destroyed) s.unshift(joined());
      resolve(kind);
    };
    const onReadable = () => {
      let c: Uint8Array | null;
      while ((c = s.read()) !== null) {
        chunks.push(c);
        total += c.byteLength;
      }
      // At the end of the input, decide now: once `end` is emitted the bytes could no longer be put back.
      const eof = (s as Duplex & { _readableState?: { ended?: boolean } })._readableState?.ended === true;
      const kind = classify(joined()) ?? (eof && total > 0 ? "tcp" : undefined);
      if (kind) decide(kind);
    };
    const onEnd = () => decide(classify(joined()) ?? "tcp");
    const timer = setTimeout(() => decide(classify(joined()) ?? "tcp"), timeoutMs);
    s.on("readable", onReadable);
    s.once("end", onEnd);
    // A tunnel reset before it decided (RST_STREAM) ends without `end`: let it go now, not at the timeout.
    s.once("close", onEnd);
  });
}

/** The per-protocol upstreams, shared by every tunnel. */
export interface Upstreams {
  http1: Http1Upstream;
  http2: Http2Upstream;
}

/** Options of {@link handleTunnel}. */
export interface TunnelOptions {
  /** How long a port declared HTTP waits for its first bytes; default {@link HTTP_FIRST_BYTES_TIMEOUT_MS}. */
  firstBytesTimeoutMs?: number;
}

/** Serves one HBONE request to the waypoint to its end. */
export async function handleTunnel(
  req: HboneRequest,
  ctx: WaypointContext,
  upstreams: Upstreams,
  opts: TunnelOptions = {},
): Promise<void> {
  const { stream } = req;
  const session = admit(req.headers, { identity: req.peer, ...req.remote }, ctx.self, ctx.state());
  if ("reason" in session) {
    ctx.log.info({
      authority: field(req.headers, ":authority"),
      peer: req.peer.toString(),
      status: session.status,
    }, `tunnel refused: ${session.reason}`);
    stream.respond([[":status", String(session.status)]], { endStream: true });
    return;
  }
  stream.respond([[":status", "200"]]);
  const app = session.destination.appProtocol?.toLowerCase();
  const declared = declaredHttpVersion(app) !== undefined;
  const kind = app === "tcp"
    ? "tcp"
    : await sniff(stream, declared ? opts.firstBytesTimeoutMs ?? HTTP_FIRST_BYTES_TIMEOUT_MS : SNIFF_TIMEOUT_MS);
  if (kind === "http2") await serveHttp2(stream, session, upstreams, ctx);
  else if (kind === "http1") await serveHttp1(stream, session, upstreams, ctx);
  else if (declared) await refuseNotHttp(stream, session, ctx);
  else {
    // An L4 connection is in flight for as long as it is open: a drain waits for it, up to its deadline.
    const served = ctx.drain?.request();
    await passTcp(stream, session, ctx).finally(served);
  }
}

/**
 * Ends a tunnel to a port declared HTTP that did not start with HTTP. Bytes that are not HTTP are answered as
 * Envoy's HTTP/1 codec answers a protocol error: 400, connection closed, recorded with the flag `DPE`. A tunnel
 * reset, ended or silent before any byte is closed unrecorded, as Envoy logs no request for a connection that sent
 * none. Either way no upstream connection is made.
 */
async function refuseNotHttp(tunnel: Duplex, session: Session, ctx: WaypointContext): Promise<void> {
  if (tunnel.destroyed) return;
  if (tunnel.readableLength === 0) return void tunnel.destroy();
  ctx.log.info({ src: session.peer.ip, dst: session.authority }, "tunnel refused: not HTTP on a port declared HTTP");
  recordRequest(ctx, session, {
    protocol: "http",
    method: "-",
    path: "-",
    authority: session.authority,
    downstreamProtocol: "HTTP/1.1",
    status: 400,
    flags: "DPE",
    bytesReceived: 0,
    bytesSent: 0,
    started: performance.now(),
    headers: [],
  });
  await new Http1Connection(tunnel, { role: "server" }).sendError(400);
}
