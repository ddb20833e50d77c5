/**
 * Inbound: HBONE tunnels arriving on the pod's 15008, and plaintext connections captured on 15006.
 *
 * For HBONE the order is upstream's and it matters (reference §2, "send 200 after RBAC+connect"): the request is
 * checked (`inbound_check.ts`: CONNECT only, the authority is this pod, the port is not ztunnel's own, the policy
 * allows the peer), then the app is dialled from the client's own address within 10 s, and only then does the 200
 * go out and the bytes start to flow; bytes the client sent early wait in the stream's window and never reach the
 * app of a refused request. A stream reset while the dial is pending cancels the dial. Before dialling, the peer
 * identity's dial budget is asked (`dial_guard.ts`): streams reset early over many connections of one identity
 * would otherwise make one dial each; beyond it, 503 (flag UO, Envoy's for an overflowing circuit breaker).
 *
 * Plaintext on 15006 is authorized with no peer identity, so a policy that requires a principal refuses it; a
 * connection addressed to one of ztunnel's ports is dropped.
 *
 * Every accepted connection is tracked so a policy change can close it (`connection_manager.ts`).
 */

import type net from "node:net";
import { field } from "../h2/fields.ts";
import { ErrorCode } from "../h2/frame.ts";
import type { HboneRequest } from "../hbone/server.ts";
import { type ConnectionFacts, tcpLabels } from "../../mesh/metrics.ts";
import type { Workload } from "../../mesh/workload.ts";
import { checkInbound } from "./inbound_check.ts";
import { authorize, type ConnectionAttributes } from "./rbac.ts";
import { abortOnClose, type PodContext, type ProxyContext, recordFinished, recordRefused, socketEnds } from "./pod.ts";
import { type ResponseFlag, responseFlag } from "../proxy/flags.ts";
import { relay } from "../proxy/relay.ts";
import { formatAddr, type SocketAddr } from "../proxy/addr.ts";
import { baggage } from "../proxy/headers.ts";
import { ILLEGAL_PORTS } from "./route.ts";

function sourceWorkload(ctx: ProxyContext, local: Workload | undefined, ip: string): Workload | undefined {
  const found = ctx.state().lookupAddress(local?.network ?? "", ip);
  return found && "workload" in found ? found.workload : undefined;
}

/** Serves one HBONE request on the pod's 15008. */
export async function handleHboneInbound(req: HboneRequest, pod: PodContext, ctx: ProxyContext): Promise<void> {
  const started = performance.now();
  const { stream } = req;
  const local = pod.workload();
  const decision = checkInbound({
    method: field(req.headers, ":method"),
    authority: field(req.headers, ":authority"),
    protocol: field(req.headers, ":protocol"),
    scheme: field(req.headers, ":scheme"),
    path: field(req.headers, ":path"),
  }, { arrivedOn: req.local.ip, srcIp: req.remote.ip, peer: req.peer, local, state: ctx.state() });
  const source = sourceWorkload(ctx, local, req.remote.ip);
  const facts = {
    reporter: "destination" as const,
    source,
    sourceIdentity: req.peer,
    destination: local,
    destinationIdentity: pod.identity,
    mtls: true,
  };
  const record = {
    direction: "inbound" as const,
    src: req.remote,
    srcWorkload: source,
    srcIdentity: req.peer,
    dst: decision.ok ? decision.upstream : req.local,
    hboneAddr: req.local,
    dstWorkload: local,
    dstIdentity: pod.identity,
  };
  const fail = (status: number, flag: ResponseFlag, reason: string) => {
    if (!stream.destroyed) {
      stream.respond([[":status", String(status)]], { endStream: true });
      // The answer is complete; the client's half is of no more use (RFC 9113 §8.1), so free the stream now.
      stream.reset(ErrorCode.NO_ERROR);
    }
    recordRefused(ctx, facts, record, started, flag, reason);
  };
  if (!decision.ok) return fail(decision.status, decision.flag || "-", decision.reason);

  const peer = req.peer.toString();
  const overflow = ctx.dials.admit(peer, performance.now());
  if (overflow) return fail(503, "UO", `too many dials for ${peer}: ${overflow}`);
  const cancel = abortOnClose(stream);
  let app: net.Socket;
  try {
    app = await pod.dial(req.remote.ip, decision.upstream, cancel.signal);
  } catch (error) {
    ctx.dials.settled(peer, cancel.signal.aborted || stream.destroyed, performance.now());
    return fail(503, responseFlag(error), `cannot reach ${formatAddr(decision.upstream)}: ${(error as Error).message}`);
  } finally {
    cancel.release();
  }
  ctx.dials.settled(peer, stream.destroyed, performance.now());
  if (stream.destroyed) {
    app.destroy();
    return fail(503, "CONNECT", "the client went away during the dial");
  }
  stream.respond([[":status", "200"], ...(local ? [["baggage", baggage(local)] as [string, string]] : [])]);
  const attributes: ConnectionAttributes = {
    srcIp: req.remote.ip,
    dstIp: req.local.ip,
    dstPort: decision.upstream.port,
    identity: req.peer,
  };
  await serve(stream, app, attributes, facts, record, started, pod, ctx);
}

/** Serves one plaintext connection captured on the pod's 15006 (`originalDst`: see `PodNetwork.originalDst`). */
export async function handlePlaintextInbound(
  socket: net.Socket,
  pod: PodContext,
  ctx: ProxyContext,
  originalDst?: SocketAddr,
): Promise<void> {
  const started = performance.now();
  socket.on("error", () => {});
  const { src, dst } = socketEnds(socket, originalDst);
  const local = pod.workload();
  const source = sourceWorkload(ctx, local, src.ip);
  const facts = { reporter: "destination" as const, source, destination: local, mtls: false };
  const record = { direction: "inbound" as const, src, srcWorkload: source, dst, dstWorkload: local };
  const refuse = (flag: ResponseFlag, reason: string) => {
    socket.resetAndDestroy();
    recordRefused(ctx, facts, record, started, flag, reason);
  };
  if (ILLEGAL_PORTS.has(dst.port)) return refuse("SELF_CALL", `port ${dst.port} is one of ztunnel's own`);
  if (!local) return refuse("NO_ROUTE", `no workload is known for ${dst.ip}`);
  const attributes: ConnectionAttributes = { srcIp: src.ip, dstIp: dst.ip, dstPort: dst.port };
  const decision = authorize(ctx.state().policies.forWorkload(local), attributes);
  if (!decision.allowed) return refuse("DENY", decision.reason);
  const cancel = abortOnClose(socket);
  let app: net.Socket;
  try {
    app = await pod.dial(src.ip, dst, cancel.signal);
  } catch (error) {
    return refuse(responseFlag(error), `cannot reach ${formatAddr(dst)}: ${(error as Error).message}`);
  } finally {
    cancel.release();
  }
  await serve(socket, app, attributes, facts, record, started, pod, ctx);
}

/** The common tail: track for re-authorization, relay, count, log. */
async function serve(
  downstream: import("node:stream").Duplex,
  app: net.Socket,
  attributes: ConnectionAttributes,
  facts: ConnectionFacts,
  record: Parameters<typeof recordFinished>[2],
  started: number,
  pod: PodContext,
  ctx: ProxyContext,
) {
  const labels = tcpLabels(facts);
  ctx.metrics.opened.inc(labels);
  const r = relay(downstream, app);
  const untrack = ctx.connections.track({
    attributes,
    podUid: pod.uid,
    workload: facts.destination,
    current: () => pod.workload(),
    close: (reason) => r.stop(new Error(reason)),
  });
  const handle = { destroy: (error?: Error) => r.stop(error ?? new Error("pod removed")) };
  pod.open.add(handle);
  const result = await r.done;
  untrack();
  pod.open.delete(handle);
  recordFinished(ctx, labels, record, result, started);
}
