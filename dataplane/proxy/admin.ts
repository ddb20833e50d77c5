/**
 * Both proxies' operator endpoints, as upstream ztunnel serves them (reference §1): admin on localhost 15000
 * (`/config_dump`: workloads, services, policies and certificates as JSON; `/logging` to read or set the log
 * level), Prometheus metrics on 15020 (`/metrics`, `/stats/prometheus`), readiness on 15021
 * (`/healthz/ready`: 200 once ready, else 503). Plain HTTP on `Deno.serve`, which is fast and needs no client
 * certificates here. Each listener binds, reports its address, logs "listener established", and closes on
 * the abort signal. A port held by another ztunnel (the one this one replaces, during a restart or an upgrade)
 * does not stop this one from starting: it takes the port over as soon as the other, draining, releases it. One
 * process answers on a port at a time, so a scrape never mixes two ztunnels' counters. (`Deno.serve`'s
 * `reusePort` would share them, but is unstable in Deno 2.9 and needs `--unstable-net`.)
 *
 * @module
 */

import { sleep } from "../../mesh/abort.ts";
import type { Logger } from "../../mesh/log.ts";
import type { MeshState } from "../../mesh/store.ts";

/** How often a port held by another ztunnel is tried again. */
export const TAKEOVER_RETRY_MS = 250;

/** Upstream's ports. */
export const ADMIN_PORT = 15000;
export const METRICS_PORT = 15020;
export const READINESS_PORT = 15021;

/** A certificate as `/config_dump` shows it. */
export interface CertificateSummary {
  identity: string;
  state: "available" | "pending" | "unavailable";
  notBefore?: string;
  notAfter?: string;
}

/** What the endpoints read. */
export interface AdminSources {
  state: () => MeshState;
  certificates: () => CertificateSummary[];
  /** `/metrics`: one registry (TcpMetrics), or every thread's (bootstrap.ts, PooledMetrics). */
  metrics: { expose(): Promise<{ body: string; contentType: string }> };
  ready: () => boolean;
  /** Static config shown in `/config_dump`. */
  config: Record<string, unknown>;
  log: Logger;
}

/** Where to listen; port 0 picks a free port (tests). */
export interface AdminAddresses {
  adminHost?: string;
  adminPort?: number;
  metricsHost?: string;
  metricsPort?: number;
  readinessHost?: string;
  readinessPort?: number;
}

/** The running listeners. */
export interface AdminServers {
  admin: Deno.NetAddr;
  metrics: Deno.NetAddr;
  readiness: Deno.NetAddr;
  finished: Promise<void>;
}

const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body, null, 2), { status, headers: { "content-type": "application/json" } });

/** The `/config_dump` document. */
export function configDump(src: AdminSources): Record<string, unknown> {
  const state = src.state();
  return {
    workloads: [...state.workloads.all()],
    services: [...state.services.all()],
    policies: [...state.policies.all()],
    certificates: src.certificates(),
    config: src.config,
  };
}

function adminHandler(src: AdminSources) {
  return (req: Request): Response => {
    const url = new URL(req.url);
    if (url.pathname === "/config_dump" && req.method === "GET") return json(configDump(src));
    if (url.pathname === "/logging") {
      if (req.method === "GET") return json({ level: src.log.level });
      if (req.method === "POST") {
        const level = url.searchParams.get("level");
        if (!level || !LEVELS.includes(level)) return json({ error: `level must be one of ${LEVELS.join(", ")}` }, 400);
        src.log.level = level;
        src.log.info({ level }, "log level changed");
        return json({ level });
      }
      return new Response("method not allowed", { status: 405 });
    }
    if (url.pathname === "/") return new Response("skiff ztunnel admin: /config_dump /logging\n");
    return new Response("not found\n", { status: 404 });
  };
}

/**
 * The uids owning sockets that listen (state 0A) on TCP `port`, any local address, in the text of
 * `/proc/net/tcp` and `/proc/net/tcp6` (proc(5): `local_address` is HEXIP:HEXPORT, `uid` the eighth column).
 */
export function listenerUids(tables: readonly string[], port: number): number[] {
  const uids: number[] = [];
  for (const table of tables) {
    for (const line of table.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 8 || f[3] !== "0A") continue;
      if (parseInt(f[1].slice(f[1].lastIndexOf(":") + 1), 16) === port) uids.push(Number(f[7]));
    }
  }
  return uids;
}

/**
 * Who else listens on `port`: uids other than ours. Any local user may bind 15000, 15020 or 15021 before ztunnel
 * does; a port held by the ztunnel being replaced (our uid) is waited for, one held by a stranger is not, or it
 * would answer ztunnel's readiness probe for as long as it liked.
 */
function strangersOn(port: number): number[] {
  const tables = ["/proc/net/tcp", "/proc/net/tcp6"].map((path) => {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return "";
    }
  });
  const ours = Deno.uid();
  return listenerUids(tables, port).filter((uid) => uid !== ours);
}

/** Starts the three listeners; they stop when `signal` aborts. */
export function serveAdmin(src: AdminSources, addrs: AdminAddresses, signal: AbortSignal): AdminServers {
  const start = (
    name: string,
    hostname: string,
    port: number,
    handler: (req: Request) => Response | Promise<Response>,
  ) => {
    const listen = () => {
      const server = Deno.serve({ hostname, port, signal, onListen: () => {} }, handler);
      const address = server.addr as Deno.NetAddr;
      src.log.info({ listener: name, address: `${address.hostname}:${address.port}` }, "listener established");
      return { finished: server.finished, address };
    };
    try {
      return listen();
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse) || port === 0) throw error;
      const strangers = strangersOn(port);
      if (strangers.length > 0) {
        throw new Error(
          `listen on ${hostname}:${port}: held by uid ${strangers.join(", ")}, not by a ztunnel (uid ${Deno.uid()})`,
          { cause: error },
        );
      }
    }
    src.log.warn(
      { listener: name, address: `${hostname}:${port}` },
      "port in use (by the ztunnel this one replaces?); taking it over once it is released",
    );
    const finished = (async () => {
      let warned = false;
      while (!signal.aborted) {
        await sleep(TAKEOVER_RETRY_MS, signal);
        if (signal.aborted) return;
        try {
          return await listen().finished;
        } catch (error) {
          if (!(error instanceof Deno.errors.AddrInUse)) {
            src.log.error({ listener: name, error: (error as Error).message }, "listener failed; retrying");
          } else if (!warned && strangersOn(port).length > 0) {
            // Taken in the moment the ztunnel we replace let it go: say so, loudly, once; keep trying.
            warned = true;
            src.log.error(
              { listener: name, address: `${hostname}:${port}`, uids: strangersOn(port) },
              "port taken by another user, not a ztunnel; retrying",
            );
          }
        }
      }
    })();
    return { finished, address: { transport: "tcp" as const, hostname, port } };
  };
  const admin = start("admin", addrs.adminHost ?? "127.0.0.1", addrs.adminPort ?? ADMIN_PORT, adminHandler(src));
  const metrics = start("metrics", addrs.metricsHost ?? "0.0.0.0", addrs.metricsPort ?? METRICS_PORT, async (req) => {
    const path = new URL(req.url).pathname;
    if (path !== "/metrics" && path !== "/stats/prometheus") return new Response("not found\n", { status: 404 });
    const { body, contentType } = await src.metrics.expose();
    return new Response(body, { headers: { "content-type": contentType } });
  });
  const readiness = start(
    "readiness",
    addrs.readinessHost ?? "0.0.0.0",
    addrs.readinessPort ?? READINESS_PORT,
    (req) => {
      if (new URL(req.url).pathname !== "/healthz/ready") return new Response("not found\n", { status: 404 });
      return src.ready() ? new Response("ready\n") : new Response("not ready\n", { status: 503 });
    },
  );
  return {
    admin: admin.address,
    metrics: metrics.address,
    readiness: readiness.address,
    finished: Promise.all([admin.finished, metrics.finished, readiness.finished]).then(() => {}),
  };
}
