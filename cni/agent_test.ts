/**
 * The node agent's decisions with its hands replaced by recorders (rules, ztunnel, the control plane, the
 * disk); the real agent with real rules, ztunnel and control plane is tested in tests/cni_test.ts.
 */
import assert from "node:assert/strict";
import pino from "pino";
import { CniError, type PodEvent } from "../mesh/protocol/cni.ts";
import type { NodePod, NodePodsView } from "../mesh/protocol/node_pods.ts";
import { type AgentDeps, type AgentState, NodeAgent, type PodReport } from "./agent.ts";

const pod = (name: string, enrolled: boolean, reason = enrolled ? "namespace label" : "pod label none"): NodePod => ({
  namespace: "shop",
  name,
  serviceAccount: `sa-${name}`,
  enrolled,
  reason,
});
const view = (pods: NodePod[], version = "v1"): NodePodsView => ({
  version,
  node: "node1",
  pods,
  ambientNamespaces: ["shop"],
});
const event = (name: string, ns = "shop", containerId = `c-${name}`): PodEvent => ({
  containerId,
  netns: `/var/run/netns/${containerId}`,
  ifname: "eth0",
  podNamespace: ns,
  podName: name,
  podUid: "",
  ips: ["10.0.1.5"],
});

/** An agent whose every action is written to `log` in order. */
function harness(
  opts: { ztunnel?: boolean; failInstall?: boolean; saved?: AgentState; self?: { namespace: string; name: string } } =
    {},
) {
  const log: string[] = [];
  const reports: PodReport[][] = [];
  const gone = new Set<string>();
  const rules = new Set<string>();
  let ztunnel = opts.ztunnel ?? true;
  const notes: PodEvent[] = [];
  const deps: AgentDeps = {
    log: pino({ level: "silent" }),
    redirect: {
      install: (netns) => {
        log.push(`install ${netns}`);
        if (opts.failInstall) return Promise.reject(new Error("iptables-restore: exit 1"));
        rules.add(netns);
        return Promise.resolve();
      },
      check: (netns) => Promise.resolve({ problems: rules.has(netns) ? [] : ["chain SKIFF_DIVERT is missing"] }),
      remove: (netns) => {
        log.push(`remove ${netns}`);
        rules.delete(netns);
        return Promise.resolve();
      },
    },
    syncProbes: (ips) => {
      log.push(`probes ${ips.join(",")}`);
      return Promise.resolve();
    },
    handoff: {
      get ready() {
        return ztunnel ? 1 : 0;
      },
      add: (p) => {
        log.push(`handoff add ${p.uid} ${p.workload.serviceAccount}`);
        return ztunnel ? Promise.resolve() : Promise.reject(new Error("no ztunnel is connected"));
      },
      del: (uid) => {
        log.push(`handoff del ${uid}`);
        return Promise.resolve();
      },
    },
    report: (pods) => reports.push(pods),
    save: () => Promise.resolve(),
    exists: (path) => Promise.resolve(!gone.has(path)),
    isOwnNetns: (path) => Promise.resolve(path === "/proc/1/ns/net"),
    self: opts.self,
    deletedNotes: () => Promise.resolve([...notes]),
    forgetNote: (id) => {
      notes.splice(notes.findIndex((n) => n.containerId === id), 1);
      return Promise.resolve();
    },
  };
  const agent = new NodeAgent("node1", deps, opts.saved);
  return {
    agent,
    log,
    reports,
    rules,
    gone,
    notes,
    setZtunnel: (up: boolean) => (ztunnel = up),
    lastReport: () => reports.at(-1)!,
  };
}

async function cniCode(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (error) {
    assert.ok(error instanceof CniError, String(error));
    return error.code;
  }
  return 0;
}

Deno.test("with no view of the node yet, ADD is 11: the agent cannot tell whether the pod is enrolled", async () => {
  const h = harness();
  assert.equal(await cniCode(h.agent.add(event("web"))), 11);
  assert.deepEqual(h.log, []);
});

Deno.test("an enrolled pod: rules first, then ztunnel, then probes and the report", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  assert.deepEqual(await h.agent.add(event("web")), { redirected: true, reason: "namespace label" });
  assert.deepEqual(h.log, [
    "probes ",
    "install /var/run/netns/c-web",
    "handoff add shop/web sa-web",
    "probes 10.0.1.5",
  ]);
  assert.deepEqual(h.lastReport(), [{
    namespace: "shop",
    name: "web",
    ips: ["10.0.1.5"],
    redirected: true,
    netns: "/var/run/netns/c-web",
  }]);
});

Deno.test("ztunnel away: ADD is 11 after the rules went in; the pod waits, pending, until a snapshot acks it", async () => {
  const h = harness({ ztunnel: false });
  await h.agent.setView(view([pod("web", true)]));
  assert.equal(await cniCode(h.agent.add(event("web"))), 11);
  assert.ok(h.rules.has("/var/run/netns/c-web"), "the rules stay: traffic is refused, not sent around ztunnel");
  assert.equal(h.agent.pods()[0].state, "pending");
  assert.equal(h.lastReport()[0].redirected, false);
  h.setZtunnel(true);
  assert.deepEqual(h.agent.snapshotPods().map((p) => p.uid), ["shop/web"]);
  await h.agent.exclusive(() => h.agent.snapshotTaken(new Set(["shop/web"])));
  assert.equal(h.agent.pods()[0].state, "redirected");
  assert.equal(h.lastReport()[0].redirected, true);
});

Deno.test("rules that cannot be installed are CNI error 100 and the pod is not kept", async () => {
  const h = harness({ failInstall: true });
  await h.agent.setView(view([pod("web", true)]));
  assert.equal(await cniCode(h.agent.add(event("web"))), 100);
  assert.deepEqual(h.agent.pods(), []);
});

Deno.test("pods outside the mesh get no rules; an undeclared pod in an enrolled namespace must wait (11)", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", false)]));
  assert.deepEqual(await h.agent.add(event("web")), { redirected: false, reason: "pod label none" });
  assert.equal((await h.agent.add(event("other", "default"))).redirected, false);
  assert.equal(await cniCode(h.agent.add(event("ghost"))), 11);
  assert.ok(!h.log.some((l) => l.startsWith("install") || l.startsWith("handoff")));
  assert.deepEqual(h.lastReport().map((r) => [r.name, r.redirected]), [["web", false], ["other", false]]);
});

Deno.test("a pod in the node's own network namespace is never enrolled", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  const own = { ...event("web"), netns: "/proc/1/ns/net" };
  assert.deepEqual(await h.agent.add(own), {
    redirected: false,
    reason: "the node's own network namespace: never enrolled",
  });
  assert.ok(!h.log.some((l) => l.startsWith("install")));
});

Deno.test("a pod labelled out loses its rules and ztunnel drops it; labelled back in, it is redirected again", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  await h.agent.add(event("web"));
  h.log.length = 0;
  await h.agent.setView(view([pod("web", false)], "v2"));
  assert.deepEqual(h.log, ["handoff del shop/web", "remove /var/run/netns/c-web", "probes "]);
  assert.equal(h.agent.pods()[0].state, "outside");
  h.log.length = 0;
  await h.agent.setView(view([pod("web", true)], "v3"));
  assert.deepEqual(h.log, ["install /var/run/netns/c-web", "handoff add shop/web sa-web", "probes 10.0.1.5"]);
  // A view with the same version changes nothing.
  h.log.length = 0;
  await h.agent.setView(view([pod("web", false)], "v3"));
  assert.deepEqual(h.log, []);
});

Deno.test("DEL: repeated, never added, netns gone — all succeed; what remains is undone once", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  await h.agent.add(event("web"));
  h.log.length = 0;
  await h.agent.del(event("web"));
  await h.agent.del(event("web"));
  await h.agent.del(event("never"));
  assert.deepEqual(h.log, ["handoff del shop/web", "remove /var/run/netns/c-web", "probes "]);
  await h.agent.add(event("web", "shop", "c-2"));
  h.gone.add("/var/run/netns/c-2");
  h.log.length = 0;
  await h.agent.del(event("web", "shop", "c-2"));
  assert.deepEqual(h.log, ["handoff del shop/web", "probes "], "no rules to remove in a namespace that is gone");
});

Deno.test("a new sandbox of the same pod replaces the old one", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  await h.agent.add(event("web", "shop", "old"));
  await h.agent.add(event("web", "shop", "new"));
  assert.deepEqual(h.agent.pods().map((p) => p.containerId), ["new"]);
  assert.ok(h.log.includes("remove /var/run/netns/old"));
});

Deno.test("CHECK: rules missing is 100; a pod outside is fine; an unknown container of an enrolled pod is 3", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true), pod("plain", false)]));
  await h.agent.add(event("web"));
  await h.agent.add(event("plain"));
  assert.equal(await cniCode(h.agent.check(event("web"))), 0);
  assert.equal(await cniCode(h.agent.check(event("plain"))), 0);
  h.rules.clear();
  assert.equal(await cniCode(h.agent.check(event("web"))), 100);
  assert.equal(await cniCode(h.agent.check(event("web", "shop", "unknown"))), 3);
});

Deno.test("after a restart: rules rewritten for every redirected pod, gone pods forgotten, DEL notes applied", async () => {
  const saved: AgentState = {
    pods: ["a", "b", "c"].map((n) => ({
      containerId: `c-${n}`,
      uid: `shop/${n}`,
      namespace: "shop",
      name: n,
      netns: `/var/run/netns/c-${n}`,
      ips: [],
      serviceAccount: `sa-${n}`,
      state: "redirected" as const,
      reason: "",
    })),
    view: view([pod("a", true), pod("b", true), pod("c", true)]),
  };
  const h = harness({ saved });
  h.gone.add("/var/run/netns/c-b");
  h.notes.push(event("c"));
  await h.agent.reconcile(true);
  assert.deepEqual(h.agent.pods().map((p) => p.name), ["a"]);
  assert.ok(h.log.includes("install /var/run/netns/c-a"));
  assert.ok(h.log.includes("handoff del shop/b") && h.log.includes("handoff del shop/c"));
  assert.ok(h.log.includes("remove /var/run/netns/c-c"), "a noted DEL removes the rules still there");
  assert.deepEqual(h.notes, []);
  assert.ok(!h.log.includes("handoff add shop/a"), "ztunnel gets it in the snapshot, not again here");
});

Deno.test("status: ready only with a view and a ztunnel, saying why not", async () => {
  const h = harness({ ztunnel: false });
  assert.equal(h.agent.status().reason, "no view of node node1 from the control plane yet");
  await h.agent.setView(view([]));
  assert.equal(h.agent.status().reason, "no ztunnel is connected");
  h.setZtunnel(true);
  assert.equal(h.agent.status().ready, true);
});

Deno.test("the agent's own pod is never enrolled", async () => {
  const h = harness({ self: { namespace: "shop", name: "agent" } });
  await h.agent.setView(view([pod("agent", true)]));
  assert.deepEqual(await h.agent.add(event("agent")), { redirected: false, reason: "the node agent's own pod" });
  assert.ok(!h.log.some((l) => l.startsWith("install")));
});

Deno.test("a saved view may enrol but never leave a pod out: until a fresh one comes, that is 11", async () => {
  const h = harness({ saved: { pods: [], view: view([pod("web", true), pod("plain", false)]) } });
  assert.equal((await h.agent.add(event("web"))).redirected, true);
  assert.equal(await cniCode(h.agent.add(event("plain"))), 11);
  assert.equal(await cniCode(h.agent.add(event("other", "default"))), 11);
  assert.equal(h.agent.status().ready, false);
  await h.agent.setView(view([pod("web", true), pod("plain", false)]));
  assert.equal((await h.agent.add(event("plain"))).redirected, false);
  assert.equal(h.agent.status().ready, true);
});

Deno.test("an enrolled pod that cannot be redirected is refused (100), never run around ztunnel", async () => {
  const h = harness();
  await h.agent.setView(view([pod("v6", true), pod("odd", true)]));
  const v6 = { ...event("v6"), ips: ["10.0.1.7", "fd00::7"] };
  assert.equal(await cniCode(h.agent.add(v6)), 100);
  const odd = { ...event("odd"), netns: "/var/run/docker/netns/abc" };
  assert.equal(await cniCode(h.agent.add(odd)), 100);
  assert.deepEqual(h.agent.pods(), []);
  assert.ok(!h.log.some((l) => l.startsWith("install")));
});

Deno.test("a pod a new ztunnel refused in its snapshot waits again (pending), and is not reported redirected", async () => {
  const h = harness();
  await h.agent.setView(view([pod("web", true)]));
  await h.agent.add(event("web"));
  await h.agent.exclusive(() => h.agent.snapshotTaken(new Set()));
  assert.equal(h.agent.pods()[0].state, "pending");
  assert.equal(h.lastReport()[0].redirected, false);
  await h.agent.reconcile();
  assert.equal(h.agent.pods()[0].state, "redirected", "the next reconcile hands it over again");
});

Deno.test("GC forgets only pods the runtime no longer knows whose namespace is gone", async () => {
  const h = harness();
  await h.agent.setView(view([pod("a", true), pod("b", true), pod("c", true)]));
  for (const n of ["a", "b", "c"]) await h.agent.add(event(n));
  h.gone.add("/var/run/netns/c-c");
  assert.equal(await h.agent.gc([{ containerId: "c-a" }]), 1);
  assert.deepEqual(h.agent.pods().map((p) => p.name), ["a", "b"], "b's namespace is still there: it keeps its rules");
});
