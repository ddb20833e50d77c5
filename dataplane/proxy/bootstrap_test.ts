/** The shared bootstrap: `/metrics` summed over threads, and `/config_dump`'s certificate list. */
import assert from "node:assert/strict";
import client from "prom-client";
import { certificateSummaries, type MetricsJson, PooledMetrics } from "./bootstrap.ts";
import type { WorkloadCert } from "./identity.ts";

function registry(opened: number, extra?: string) {
  const r = new client.Registry();
  const c = new client.Counter({
    name: "istio_tcp_connections_opened_total",
    help: "h",
    labelNames: ["reporter"],
    registers: [r],
  });
  c.inc({ reporter: "destination" }, opened);
  if (extra) new client.Gauge({ name: extra, help: "h", registers: [r] }).set(1);
  return r;
}

Deno.test("PooledMetrics sums each thread's series by name and labels; series of the main thread alone stay", async () => {
  const main = registry(3, "skiff_policies_failing_closed");
  const workers = [registry(4), registry(5)];
  const pooled = new PooledMetrics(
    main,
    async () => await Promise.all(workers.map((w) => w.getMetricsAsJSON() as Promise<MetricsJson>)),
  );
  const { body } = await pooled.expose();
  assert.match(body, /istio_tcp_connections_opened_total\{reporter="destination"\} 12\n/);
  assert.match(body, /skiff_policies_failing_closed 1\n/);
  const alone = await new PooledMetrics(main, () => Promise.resolve([])).expose();
  assert.match(alone.body, /istio_tcp_connections_opened_total\{reporter="destination"\} 3\n/);
});

Deno.test("certificateSummaries lists each identity as available with its validity, or pending", () => {
  const cert = { notBefore: Date.UTC(2030, 0, 1), notAfter: Date.UTC(2030, 0, 2) } as WorkloadCert;
  const got = certificateSummaries({ current: (id) => id === "a" ? cert : undefined }, ["a", "b"]);
  assert.deepEqual(got, [
    { identity: "a", state: "available", notBefore: "2030-01-01T00:00:00.000Z", notAfter: "2030-01-02T00:00:00.000Z" },
    { identity: "b", state: "pending" },
  ]);
});
