/**
 * The node agent's API for the CNI plugin and `skiff unit-gate`, HTTP over its unix socket (paths and bodies in
 * mesh/protocol/cni.ts). The socket is the node's root-only door into the agent: it is created 0600, as
 * upstream's `pluginevent.sock` (a unit's gate runs as root: the drop-in's `ExecStartPre=+`). A refusal carries the CNI error the plugin is to print; a body that does not
 * decode is CNI error 6 naming the field.
 *
 * @module
 */

import { readBody } from "../mesh/http.ts";
import type { Logger } from "../mesh/log.ts";
import { AGENT_PATHS, CNI_CODES, CniError, decodePodEvent, decodeUnitGateRequest } from "../mesh/protocol/cni.ts";
import { Fields, ValidationError } from "../mesh/validate.ts";
import type { NodeAgent } from "./agent.ts";

/** Largest request body. */
const MAX_BODY = 64 * 1024;

function cniError(error: CniError): Response {
  const status = error.code === CNI_CODES.tryAgainLater ? 503 : error.code === CNI_CODES.decodeFailure ? 400 : 500;
  return Response.json({ code: error.code, msg: error.message, details: error.details }, { status });
}

/** Serves the plugin's requests on `socketPath` until `signal` aborts. */
export function serveAgentApi(
  agent: NodeAgent,
  socketPath: string,
  log: Logger,
  signal: AbortSignal,
): Deno.HttpServer<Deno.UnixAddr> {
  try {
    Deno.removeSync(socketPath); // a socket left by an earlier agent
  } catch { /* none */ }
  const server = Deno.serve({
    path: socketPath,
    signal,
    onListen: () => {
      Deno.chmodSync(socketPath, 0o600);
      log.info({ socket: socketPath }, "listening for the CNI plugin");
    },
  }, async (req) => {
    const path = new URL(req.url).pathname;
    try {
      if (req.method === "GET" && path === AGENT_PATHS.status) return Response.json(agent.status());
      if (req.method !== "POST") {
        return Response.json({ code: 4, msg: `no such endpoint: ${req.method} ${path}` }, { status: 404 });
      }
      let body: unknown;
      try {
        body = JSON.parse(await readBody(req, MAX_BODY) || "{}");
      } catch (error) {
        throw new CniError(CNI_CODES.decodeFailure, `bad request to the node agent: ${(error as Error).message}`);
      }
      switch (path) {
        case AGENT_PATHS.add:
          return Response.json(await agent.add(pod(body)));
        case AGENT_PATHS.del:
          await agent.del(pod(body));
          return Response.json({});
        case AGENT_PATHS.check:
          await agent.check(pod(body));
          return Response.json({});
        case AGENT_PATHS.unitGate:
          return Response.json(await agent.gateUnit(decoded("unit gate", () => decodeUnitGateRequest(body)).cgroup));
        case AGENT_PATHS.gc:
          return Response.json({ dropped: await agent.gc(attachments(body)) });
        default:
          return Response.json({ code: 4, msg: `no such endpoint: POST ${path}` }, { status: 404 });
      }
    } catch (error) {
      if (error instanceof CniError) {
        log.warn({ path, code: error.code, error: error.message, details: error.details }, "CNI request refused");
        return cniError(error);
      }
      log.error({ path, error: (error as Error).message }, "CNI request failed");
      return cniError(new CniError(CNI_CODES.ioFailure, `the node agent failed: ${(error as Error).message}`));
    }
  });
  return server;
}

/** Decodes a request body; a field that does not decode is CNI error 6 naming it. */
function decoded<T>(what: string, decode: () => T): T {
  try {
    return decode();
  } catch (error) {
    if (error instanceof ValidationError) throw new CniError(CNI_CODES.decodeFailure, `bad ${what}: ${error.message}`);
    throw error;
  }
}

const pod = (body: unknown) => decoded("pod event", () => decodePodEvent(body));

const attachments = (body: unknown) =>
  decoded("GC request", () => {
    const f = Fields.of(body, "");
    const valid = f.array("validAttachments", (v, p) => {
      const a = Fields.of(v, p);
      const out = { containerId: a.string("containerId", { nonEmpty: true }), ifname: a.string("ifname", {}) };
      a.done();
      return out;
    });
    f.done();
    return valid;
  });
