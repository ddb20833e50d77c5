import assert from "node:assert/strict";
import { logger } from "../../mesh/log.ts";
import { tcpLabels, TcpMetrics } from "../../mesh/metrics.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeWorkload } from "../../mesh/workload.ts";
import { type AdminSources, serveAdmin } from "./admin.ts";

async function withAdmin(
  fn: (
    urls: { admin: string; metrics: string; readiness: string },
    src: AdminSources & { metrics: TcpMetrics; setReady(v: boolean): void },
  ) => Promise<void>,
) {
  const state = new MeshState();
  state.workloads.upsert(decodeWorkload({ uid: "u1", name: "web-1", namespace: "shop", addresses: ["10.0.1.2"] }));
  let ready = false;
  const log = logger("ztunnel-admin-test");
  const src = {
    state: () => state,
    certificates: () => [{
      identity: "spiffe://cluster.local/ns/shop/sa/default",
      state: "available" as const,
      notAfter: "2030-01-01T00:00:00.000Z",
    }],
    metrics: new TcpMetrics(),
    ready: () => ready,
    config: { node: "node1" },
    log,
    setReady: (v: boolean) => (ready = v),
  };
  const ac = new AbortController();
  const s = serveAdmin(src, {
    adminPort: 0,
    metricsHost: "127.0.0.1",
    metricsPort: 0,
    readinessHost: "127.0.0.1",
    readinessPort: 0,
  }, ac.signal);
  const url = (a: Deno.NetAddr) => `http://${a.hostname}:${a.port}`;
  try {
    await fn({ admin: url(s.admin), metrics: url(s.metrics), readiness: url(s.readiness) }, src);
  } finally {
    log.level = "info";
    ac.abort();
    await s.finished;
  }
}

Deno.test("admin: /config_dump shows workloads, services, policies, certificates and config; admin is on localhost", async () => {
  await withAdmin(async (u) => {
    assert.match(u.admin, /^http:\/\/127\.0\.0\.1:/);
    const r = await fetch(`${u.admin}/config_dump`);
    assert.equal(r.status, 200);
    const dump = await r.json();
    assert.deepEqual(Object.keys(dump), ["workloads", "services", "policies", "certificates", "config"]);
    assert.equal(dump.workloads[0].uid, "u1");
    assert.equal(dump.certificates[0].state, "available");
    assert.deepEqual(dump.config, { node: "node1" });
    assert.equal(await fetch(`${u.admin}/nope`).then(async (r) => (await r.body?.cancel(), r.status)), 404);
  });
});

Deno.test("admin: /logging reads and sets the level, refusing unknown levels", async () => {
  await withAdmin(async (u, src) => {
    assert.deepEqual(await (await fetch(`${u.admin}/logging`)).json(), { level: src.log.level });
    assert.deepEqual(await (await fetch(`${u.admin}/logging?level=debug`, { method: "POST" })).json(), {
      level: "debug",
    });
    assert.equal(src.log.level, "debug");
    const bad = await fetch(`${u.admin}/logging?level=loud`, { method: "POST" });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
  });
});

Deno.test("metrics: Prometheus text at /metrics and /stats/prometheus", async () => {
  await withAdmin(async (u, src) => {
    src.metrics.opened.inc(tcpLabels({ reporter: "destination", mtls: true }));
    for (const path of ["/metrics", "/stats/prometheus"]) {
      const r = await fetch(`${u.metrics}${path}`);
      assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      assert.match(
        await r.text(),
        /^istio_tcp_connections_opened_total\{reporter="destination",.*connection_security_policy="mutual_tls"\} 1$/m,
      );
    }
  });
});

Deno.test("readiness: 503 until ready, then 200", async () => {
  await withAdmin(async (u, src) => {
    const status = async () => {
      const r = await fetch(`${u.readiness}/healthz/ready`);
      await r.body?.cancel();
      return r.status;
    };
    assert.equal(await status(), 503);
    src.setReady(true);
    assert.equal(await status(), 200);
  });
});

Deno.test("admin: ports held by the ztunnel being replaced are taken over once it releases them", async () => {
  const src = (name: string, ready: boolean): AdminSources => ({
    state: () => new MeshState(),
    certificates: () => [],
    metrics: new TcpMetrics(),
    ready: () => ready,
    config: { name },
    log: logger(`ztunnel-admin-${name}`),
  });
  const oldOne = new AbortController();
  const old = serveAdmin(src("old", true), { adminPort: 0, metricsPort: 0, readinessPort: 0 }, oldOne.signal);
  const ports = { adminPort: old.admin.port, metricsPort: old.metrics.port, readinessPort: old.readiness.port };
  const newOne = new AbortController();
  // The old one still listens: the new one starts anyway, and the old one answers meanwhile.
  const fresh = serveAdmin(src("new", false), ports, newOne.signal);
  const readiness = `http://127.0.0.1:${ports.readinessPort}/healthz/ready`;
  const status = () => fetch(readiness).then(async (r) => (await r.body?.cancel(), r.status));
  try {
    assert.equal(await status(), 200, "the old one answers while it listens");
    oldOne.abort();
    await old.finished;
    let answer = 0;
    for (let i = 0; i < 50 && answer !== 503; i++) {
      answer = await status().catch(() => 0);
      if (answer !== 503) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(answer, 503, "then the new one (not ready yet) answers on the same port");
    const dump = await fetch(`http://127.0.0.1:${ports.adminPort}/config_dump`).then((r) => r.json());
    assert.deepEqual(dump.config, { name: "new" });
  } finally {
    oldOne.abort();
    newOne.abort();
    await Promise.all([old.finished, fresh.finished]);
  }
});
