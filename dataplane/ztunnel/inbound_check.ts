/**
 * The decision half of HBONE inbound (15008), after ztunnel's `build_inbound_request` and `validate_destination`
 * (`src/proxy/inbound.rs`; reference §2 and security §2): from the CONNECT request, the address the mTLS
 * connection arrived on, the verified peer identity and the mesh state, decide the upstream to dial or the
 * status to refuse with. The listener then dials the app (503 when that fails within 10 s) and sends 200 only
 * after both this check and the dial succeeded, so no byte reaches the app before then.
 *
 * In order:
 * 1. Only a plain CONNECT: another method, extended CONNECT (`:protocol`), or a CONNECT carrying `:scheme`
 *    or `:path` (RFC 9113 §8.5) → 400.
 * 2. The authority must be `ip:port`, `[v6]:port` or `host:port` → else 400.
 * 3. The local workload must be known → else 503.
 * 4. An IP authority must be the address the connection arrived on, the pod's own: a request can only target
 *    the local pod (`hbone_ip_mismatch`) → else 400. A hostname authority names a service; its port maps to
 *    this pod's target port → else 503.
 * 5. ztunnel's own ports (15001, 15006, 15008) are never a target (`SelfCall`) → 503.
 * 6. L4 authorization with the peer's verified identity (never a header) → deny 401.
 *
 * @module
 */

import { canonicalIp } from "../../mesh/net.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import type { MeshState } from "../../mesh/store.ts";
import type { Workload } from "../../mesh/workload.ts";
import { authorize } from "./rbac.ts";
import { parseAuthority, type SocketAddr } from "../proxy/addr.ts";
import type { ResponseFlag } from "../proxy/flags.ts";
import { targetPort } from "../proxy/endpoint.ts";
import { ILLEGAL_PORTS } from "./route.ts";

/** The pseudo-headers of an inbound request that the check reads. */
export interface InboundRequest {
  method?: string;
  authority?: string;
  protocol?: string;
  scheme?: string;
  path?: string;
}

/** What the listener knows of the connection. */
export interface InboundContext {
  /** The local address the connection arrived on: the pod's IP. */
  arrivedOn: string;
  /** The TCP peer's address. */
  srcIp: string;
  /** The identity from the peer's verified certificate. */
  peer: SpiffeId;
  /** The pod this listener serves, if the state knows it. */
  local: Workload | undefined;
  state: MeshState;
}

/** Refused: the status to answer with, the reason for the log, and Istio's response flag. */
export interface InboundRefusal {
  ok: false;
  status: 400 | 401 | 503;
  reason: string;
  flag: "" | Extract<ResponseFlag, "DENY" | "SELF_CALL" | "NO_ROUTE">;
}

/** Accepted: the upstream to dial, and the policy that allowed it (for logs). */
export interface InboundAccept {
  ok: true;
  upstream: SocketAddr;
  policy?: string;
}

const refuse = (
  status: InboundRefusal["status"],
  reason: string,
  flag: InboundRefusal["flag"] = "",
): InboundRefusal => ({
  ok: false,
  status,
  reason,
  flag,
});

/** Decides an inbound HBONE request. */
export function checkInbound(req: InboundRequest, ctx: InboundContext): InboundAccept | InboundRefusal {
  if (req.method !== "CONNECT") return refuse(400, `method ${JSON.stringify(req.method)} is not CONNECT`);
  if (req.protocol !== undefined) return refuse(400, "extended CONNECT (:protocol) is not HBONE");
  if (req.scheme !== undefined || req.path !== undefined) {
    return refuse(400, "a CONNECT request carries no :scheme or :path");
  }
  const authority = req.authority === undefined ? undefined : parseAuthority(req.authority);
  if (!authority) return refuse(400, `authority ${JSON.stringify(req.authority)} is not ip:port or host:port`);
  const local = ctx.local;
  if (!local) return refuse(503, `no workload is known for ${ctx.arrivedOn}`, "NO_ROUTE");

  let port: number;
  if (authority.ip !== undefined) {
    if (authority.ip !== canonicalIp(ctx.arrivedOn)) {
      return refuse(400, `authority ${authority.ip} is not this pod's address ${ctx.arrivedOn} (ip mismatch)`);
    }
    port = authority.port;
  } else {
    const service = ctx.state.services.byHostname(authority.host, local.namespace);
    const mapped = service && targetPort(service, authority.port, local);
    if (mapped === undefined) {
      return refuse(503, `no service ${authority.host} with port ${authority.port} on this pod`, "NO_ROUTE");
    }
    port = mapped;
  }
  if (ILLEGAL_PORTS.has(port)) return refuse(503, `port ${port} is one of ztunnel's own`, "SELF_CALL");

  const decision = authorize(ctx.state.policies.forWorkload(local), {
    srcIp: ctx.srcIp,
    dstIp: ctx.arrivedOn,
    dstPort: port,
    identity: ctx.peer,
  });
  if (!decision.allowed) return refuse(401, decision.reason, "DENY");
  return { ok: true, upstream: { ip: ctx.arrivedOn, port }, policy: decision.policy };
}
