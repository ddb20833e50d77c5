/** A worker started late gets, as one snapshot, exactly the state the main thread built from the stream. */
import assert from "node:assert/strict";
import pino from "pino";
import { ClientConfig } from "../../mesh/control_client.ts";
import { applyMirrored, ConfigMirror } from "./worker_config.ts";

const log = pino({ level: "silent" });

function workload(name: string, ip: string) {
  return { uid: `Kubernetes//Pod/shop/${name}`, name, namespace: "shop", addresses: [ip] };
}

Deno.test("ConfigMirror's snapshot rebuilds the state a stream of snapshot and deltas built", () => {
  const main = new ClientConfig(log);
  const mirror = new ConfigMirror();
  const messages = [
    {
      type: "snapshot" as const,
      version: 1,
      unchanged: 0,
      removed: [],
      resources: [
        { kind: "Workload" as const, name: "Kubernetes//Pod/shop/a", version: "1", body: workload("a", "10.0.0.1") },
        { kind: "Workload" as const, name: "Kubernetes//Pod/shop/b", version: "1", body: workload("b", "10.0.0.2") },
      ],
    },
    {
      type: "delta" as const,
      version: 2,
      removed: [{ kind: "Workload" as const, name: "Kubernetes//Pod/shop/a" }],
      resources: [
        { kind: "Workload" as const, name: "Kubernetes//Pod/shop/c", version: "1", body: workload("c", "10.0.0.3") },
      ],
    },
  ];
  for (const m of messages) {
    main.apply(m);
    mirror.observe(m);
  }
  const worker = new ClientConfig(log);
  applyMirrored(worker, structuredClone(mirror.snapshot()));
  const names = (c: ClientConfig) => [...c.state.workloads.all()].map((w) => w.name).sort();
  assert.deepEqual(names(worker), ["b", "c"]);
  assert.deepEqual(names(worker), names(main));
  assert.deepEqual(worker.known(), main.known());
});
