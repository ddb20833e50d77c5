/**
 * One half of a bare `node:tls` relay pair, the data-plane benchmark's measure of what this runtime allows
 * (issue 18): the same topology as Skiff (client → relay A → TLS → relay B → server), the same certificates and
 * TLS settings as HBONE (TLS 1.3 only, AES-GCM suites, a client certificate required and verified against the
 * mesh root), one TLS connection per client connection and no HTTP/2, no routing, no policy, no telemetry.
 *
 * The copy never pauses a TLS socket: in Deno 2.9 a `node:tls` socket paused by backpressure can lose its peer's
 * end-of-stream (deno-platform.md), which would hang the benchmark's sink. Skiff's HTTP/2 layer never pauses its
 * TLS socket either (its windows bound what it buffers); here a TLS reader whose writer falls behind by more than
 * MAX_BUFFERED bytes is cut, which a benchmark run would show as an error.
 *
 * `deno run --allow-all bench/tls_relay.ts CONFIG.json`, run in a pod's namespace by bench/dataplane.ts; prints
 * "ready" once every listener is up, and runs until killed.
 *
 * @module
 */

import net from "node:net";
import tls from "node:tls";
import { HBONE_CIPHERS, type WorkloadCredentials } from "../dataplane/hbone/tls.ts";
import type { Duplex } from "node:stream";

/** What a TLS socket's reader may hold for a slower writer before the connection is cut. */
const MAX_BUFFERED = 64 * 1024 * 1024;

/** Copies both ways until both directions end; `tlsSide` is never paused. An error on either side ends both. */
function pair(plain: net.Socket, tlsSide: Duplex): void {
  plain.setNoDelay(true);
  const fail = () => {
    plain.destroy();
    tlsSide.destroy();
  };
  plain.on("error", fail);
  tlsSide.on("error", fail);
  plain.on("data", (chunk: Uint8Array) => {
    if (!tlsSide.write(chunk)) {
      plain.pause();
      tlsSide.once("drain", () => plain.resume());
    }
  });
  tlsSide.on("data", (chunk: Uint8Array) => {
    plain.write(chunk);
    if (plain.writableLength > MAX_BUFFERED) fail();
  });
  plain.on("end", () => tlsSide.end());
  tlsSide.on("end", () => plain.end());
  plain.once("close", () => !plain.readableEnded && tlsSide.destroy());
  tlsSide.once("close", () => !tlsSide.readableEnded && plain.destroy());
}

/** What one relay process does: its role, its certificate, and listen → connect pairs. */
export interface TlsRelayConfig {
  /** `client`: plain TCP in, TLS out (relay A); `server`: TLS in, plain TCP out (relay B). */
  role: "client" | "server";
  credentials: Omit<WorkloadCredentials, "identity">;
  routes: { listen: { host: string; port: number }; connect: { host: string; port: number } }[];
}

function tlsOptions(c: TlsRelayConfig["credentials"]) {
  return {
    key: c.keyPem,
    cert: c.chainPem,
    ca: c.rootsPem,
    minVersion: "TLSv1.3" as const,
    maxVersion: "TLSv1.3" as const,
    ciphers: HBONE_CIPHERS,
  };
}

function listen(server: net.Server, at: { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(at, () => resolve());
  });
}

/** Starts every listener of `config`; resolves once all accept. */
export async function runTlsRelay(config: TlsRelayConfig): Promise<net.Server[]> {
  const servers: net.Server[] = [];
  for (const route of config.routes) {
    if (config.role === "client") {
      const server = net.createServer({ allowHalfOpen: true }, (downstream) => {
        downstream.on("error", () => {});
        // Over a socket dialled half-open, as Skiff's HBONE pool dials: TLS alone would close on the peer's end.
        const raw = net.connect({ ...route.connect, allowHalfOpen: true });
        raw.once("error", () => downstream.destroy());
        raw.once("connect", () => {
          raw.setNoDelay(true);
          const upstream = tls.connect({
            ...tlsOptions(config.credentials),
            socket: raw,
            rejectUnauthorized: true,
            // No hostname check, as HBONE: the peer is a workload identity, not a host name.
            checkServerIdentity: () => undefined,
          });
          upstream.once("secureConnect", () => pair(downstream, upstream));
          upstream.once("error", () => downstream.destroy());
        });
      });
      servers.push(server);
      await listen(server, route.listen);
    } else {
      const server = tls.createServer(
        { ...tlsOptions(config.credentials), requestCert: true, rejectUnauthorized: true, allowHalfOpen: true },
        (downstream) => {
          downstream.on("error", () => {});
          const upstream = net.connect({ ...route.connect, allowHalfOpen: true });
          upstream.once("connect", () => pair(upstream, downstream));
          upstream.once("error", () => downstream.destroy());
        },
      );
      server.on("tlsClientError", () => {});
      servers.push(server);
      await listen(server, route.listen);
    }
  }
  return servers;
}

if (import.meta.main) {
  const file = Deno.args[0];
  if (!file) throw new Error("tls_relay: give a config file (JSON, TlsRelayConfig)");
  await runTlsRelay(JSON.parse(await Deno.readTextFile(file)) as TlsRelayConfig);
  console.log("ready");
}
