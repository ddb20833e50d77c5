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
  const mirror = new ConfigMirror(main);
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

type Message = Parameters<ClientConfig["apply"]>[0];
type Resource = Message["resources"][number];

const wl = (name: string, ip: string, extra: Record<string, unknown> = {}): Resource => ({
  kind: "Workload",
  name: `Kubernetes//Pod/shop/${name}`,
  version: `w-${name}-${JSON.stringify(extra)}`,
  body: { ...workload(name, ip), ...extra },
});
const authz = (scope: string, extra: Record<string, unknown> = {}): Resource => ({
  kind: "Authorization",
  name: "shop/p",
  version: `p-${scope}-${JSON.stringify(extra)}`,
  body: { name: "p", namespace: "shop", scope, action: "DENY", rules: [{}], ...extra },
});
/** More than one part of a mirrored snapshot (PART_RESOURCES) of workloads no case looks at. */
const FILLER = Array.from({ length: 1_200 }, (_, i) => wl(`f${i}`, `10.1.${i >> 8}.${i & 255}`));
const snapshot = (resources: Resource[]): Message => ({
  type: "snapshot",
  version: 1,
  unchanged: 0,
  removed: [],
  resources,
});
const delta = (resources: Resource[]): Message => ({ type: "delta", version: 2, removed: [], resources });
/** Upstream's unknown field: the proxy cannot decode the resource (as in tests/policy_fail_closed_test.ts). */
const UNDECODABLE = { extensions: [] };

/** What a thread decides from: each workload's candidate policies and what each address is. */
function decisions(config: ClientConfig, ips: string[]) {
  const s = config.state;
  return {
    policies: ["web", "db"].map((n) => {
      const w = s.workloads.byUid(`Kubernetes//Pod/shop/${n}`) ?? { namespace: "shop", authorizationPolicies: [] };
      return s.policies.forWorkload({ ...w, uid: `Kubernetes//Pod/shop/${n}` }).map((a) => `${a.action} ${a.name}`);
    }),
    addresses: ips.map((ip) => {
      const found = s.lookupAddress("", ip);
      return found && "workload" in found ? found.workload.name : found ? "service" : "outside the mesh";
    }),
  };
}

Deno.test("a worker started from the mirror decides as the main thread, refused resources included", async (t) => {
  const cases: { name: string; messages: Message[] }[] = [
    {
      name: "a policy refused in the snapshot's first part (more than one part of resources)",
      messages: [snapshot([authz("NAMESPACE", UNDECODABLE), wl("web", "10.0.0.1"), wl("db", "10.0.0.2"), ...FILLER])],
    },
    {
      name: "a refused update of a DENY held: the version held stays beside the deny-all",
      messages: [
        snapshot([wl("web", "10.0.0.1"), wl("db", "10.0.0.2"), authz("NAMESPACE")]),
        delta([authz("WORKLOAD_SELECTOR", UNDECODABLE)]),
      ],
    },
    {
      name: "a refused update of a workload held: its address stays its own, refused",
      messages: [
        snapshot([wl("web", "10.0.0.1"), wl("db", "10.0.0.2")]),
        delta([wl("db", "10.0.0.2", UNDECODABLE)]),
      ],
    },
    {
      name: "a refusal the next snapshot ends (not resent: back to the version held)",
      messages: [
        snapshot([wl("web", "10.0.0.1"), wl("db", "10.0.0.2"), authz("NAMESPACE")]),
        delta([authz("WORKLOAD_SELECTOR", UNDECODABLE)]),
        { ...snapshot([]), version: 3 },
      ],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const main = new ClientConfig(log);
      const mirror = new ConfigMirror(main);
      for (const m of c.messages) {
        main.apply(m);
        mirror.observe(m);
      }
      const worker = new ClientConfig(log);
      applyMirrored(worker, structuredClone(mirror.snapshot()));
      const ips = ["10.0.0.1", "10.0.0.2"];
      assert.deepEqual(decisions(worker, ips), decisions(main, ips));
    });
  }
});
