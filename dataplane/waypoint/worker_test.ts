/**
 * A waypoint worker thread (worker.ts) as `runWaypoint` starts it, a real Deno Worker on loopback (no root): it
 * listens beside another SO_REUSEPORT socket on the same port, serves mTLS with the certificate in its `init`,
 * takes a renewal pushed later, answers `/metrics` asks, and drains; it fails closed without a certificate, and a
 * worker (re)started during a drain never listens. The end-to-end tier (several threads, real clients, a control
 * plane) is tests/waypoint_workers_test.ts.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import pino from "pino";
import { until } from "../../tests/harness/assert.ts";
import { TestPki } from "../../tests/harness/pki.ts";
import { clientTlsOptions } from "../hbone/tls.ts";
import { issueLocally, type WorkloadCert } from "../proxy/identity.ts";
import { toWire } from "../proxy/worker_certs.ts";
import { WorkerPool } from "../proxy/workers.ts";
import { loadSocketSupport, transparentListenerFd } from "../sockets_linux.ts";
import type { WaypointWorkerInit, WaypointWorkerMessage, WaypointWorkerStatus } from "./worker.ts";

loadSocketSupport();
const pki = await TestPki.create();
const WAYPOINT = pki.id("shop/waypoint");
const client = await pki.credentials("shop/client");
const MODULE = new URL("./worker.ts", import.meta.url);

function start(init: Partial<WaypointWorkerInit> & { hbonePort: number }) {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const pool = new WorkerPool({
    module: MODULE,
    count: 1,
    role: "waypoint",
    log,
    init: () => ({
      trustDomain: "cluster.local",
      listenAddress: "127.0.0.1",
      drainDeadlineMs: 5_000,
      config: { version: 1, resources: [] },
      certs: [],
      draining: false,
      ...init,
      self: {
        name: "waypoint",
        namespace: "shop",
        hostname: "waypoint.shop.svc.cluster.local",
        identity: WAYPOINT,
        network: "",
      },
    } satisfies WaypointWorkerInit),
    heartbeatMs: 100,
  });
  return { pool, lines };
}

/** The serial number of the certificate the server at `port` presents to a mesh client. */
function served(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: "127.0.0.1", port });
    const socket = tls.connect(clientTlsOptions(client, raw));
    socket.on("secureConnect", () => {
      resolve(socket.getPeerX509Certificate()!.serialNumber);
      socket.destroy();
    });
    socket.on("error", reject);
  });
}

/** Whether anything accepts connections on `port`. */
function accepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

const serial = (c: WorkloadCert) =>
  new X509Certificate(c.chainPem.split(/(?<=-----END CERTIFICATE-----)/)[0]).serialNumber;

Deno.test("a waypoint worker listens beside the main thread's socket, serves the pushed certificate, drains", async () => {
  // The main thread's socket: the worker's bind on the same port succeeds only because both are SO_REUSEPORT.
  const main = net.createServer();
  await new Promise<void>((r) =>
    main.listen({ fd: transparentListenerFd({ address: "127.0.0.1", port: 0, reusePort: true }) }, r)
  );
  const port = (main.address() as net.AddressInfo).port;
  const first = await issueLocally(pki.ca, WAYPOINT, 3_600_000);
  const { pool, lines } = start({ hbonePort: port, certs: [toWire(first)] });
  try {
    // An ask is answered once the worker's init has ended: it listens by then.
    await until("the worker's init", async () => (await pool.askAll({ t: "drain-state" })).length === 1, 20_000);
    assert.deepEqual(lines.filter((l) => String(l.msg).startsWith("BUG")), []);
    await new Promise<void>((r) => main.close(() => r())); // from here every connection goes to the worker
    await until("the worker accepts", () => accepting(port), 10_000);
    assert.equal(await served(port), serial(first));

    const renewed = await issueLocally(pki.ca, WAYPOINT, 7_200_000);
    pool.broadcast({ t: "cert", identity: WAYPOINT, cert: toWire(renewed) } satisfies WaypointWorkerMessage);
    await until("the renewal is served", async () => await served(port) === serial(renewed), 10_000);

    const [metrics] = await pool.askAll({ t: "metrics" }) as { name: string }[][];
    assert.ok(metrics.some((m) => m.name === "istio_requests_total"), JSON.stringify(metrics).slice(0, 300));

    pool.broadcast({ t: "drain" } satisfies WaypointWorkerMessage);
    await until(
      "drained",
      async () => ((await pool.askAll({ t: "drain-state" })) as WaypointWorkerStatus[])[0]?.drained,
      10_000,
    );
    assert.equal(await accepting(port), false, "no listener after the drain");
  } finally {
    pool.close();
    if (main.listening) main.close();
  }
});

Deno.test("a waypoint worker without a valid certificate never listens: it dies, logged, and is started again", async () => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen({ host: "127.0.0.1", port: 0 }, r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const expired = await issueLocally(pki.ca, WAYPOINT, 1);
  await new Promise((r) => setTimeout(r, 10));
  const { pool, lines } = start({ hbonePort: port, certs: [toWire(expired)] });
  try {
    await until(
      "two deaths",
      () =>
        lines.filter((l) => l.msg === "BUG: waypoint worker died; its connections are lost; restarting it").length >= 2,
      20_000,
    );
    assert.match(String(lines[0].reason), /init failed: waypoint worker: no valid certificate/);
    assert.equal(await accepting(port), false);
  } finally {
    pool.close();
  }
});

Deno.test("a waypoint worker started during a drain never listens and reports itself drained", async () => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen({ host: "127.0.0.1", port: 0 }, r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const cert = await issueLocally(pki.ca, WAYPOINT, 3_600_000);
  const { pool, lines } = start({ hbonePort: port, certs: [toWire(cert)], draining: true });
  try {
    await until("its status", () => pool.statuses().length === 1, 20_000);
    assert.deepEqual(pool.statuses(), [{ inflight: 0, drained: true }]);
    assert.equal(await accepting(port), false);
    assert.deepEqual(lines, []);
  } finally {
    pool.close();
  }
});
