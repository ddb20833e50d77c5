/**
 * systemd units meshed in the node's own network namespace (WorkloadEntry + `skiff.io/unit`; cni/host_units.ts,
 * cni/host_rules_linux.ts), end to end: a real `skiff control`, and on each of two nodes a real `skiff cni-agent`
 * and `skiff ztunnel`. These machines do not run systemd, so a "unit" is what systemd would make of one: processes
 * in a cgroup v2 directory (`<root>/skiff-test-<rand>.slice/NAME.service`, made by the test before they start), in
 * the node's network namespace (tests/harness/units.ts). `billing` (node 1) serves 8080 and 8081; `frontend`
 * (node 2) serves 9090; each calls the other. Beside them, an "sshd" on node 1 (port 2222) and callers on both nodes outside every cgroup.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { checkHostRules } from "../cni/host_rules_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { SkiffNode } from "./harness/cni.ts";
import { IS_ROOT, must, NetnsCluster, netnsTest, run } from "./harness/netns.ts";
import { call, cgroup2Root, server } from "./harness/units.ts";
import { until } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const manifests = (n1: string, a1: string, n2: string, a2: string, slice?: string) => {
  const unit = (name: string) => slice ? `, skiff.io/unit: ${slice}/${name}.service` : "";
  return `apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: billing, namespace: shop, annotations: { skiff.io/node: ${n1}${unit("billing")} } }
spec: { address: ${a1}, serviceAccount: billing, labels: { app: billing }, ports: { http: 8080, admin: 8081 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: frontend, namespace: shop, annotations: { skiff.io/node: ${n2}${unit("frontend")} } }
spec: { address: ${a2}, serviceAccount: frontend, labels: { app: frontend }, ports: { http: 9090 } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin-from-frontend, namespace: shop }
spec:
  selector: { matchLabels: { app: billing } }
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/frontend] } }], to: [{ operation: { ports: ["8081"] } }] }]
`;
};

/** The node's netfilter and policy routing, counters aside: what the agent may add and must take away again. */
async function netState(netns: string): Promise<string> {
  // A table with no rule and no chain of its own is left out: iptables-nft makes a table when a rule is first put
  // in it (here mangle) and leaves it, empty, when the last goes; an empty table changes no packet.
  const tables = [
    ...(await must(["ip", "netns", "exec", netns, "iptables-save"])).split(/^(?=\*)/m),
    "--- IPv6\n",
    ...(await must(["ip", "netns", "exec", netns, "ip6tables-save"])).split(/^(?=\*)/m),
  ];
  const ipt = tables.filter((t) =>
    t.startsWith("---") || t.split("\n").some((l) => l.startsWith("-A ") || /^:[A-Z_]+ - /.test(l))
  ).join("");
  const rules = await must(["ip", "-n", netns, "rule", "list"]);
  const table = await run(["ip", "-n", netns, "route", "show", "table", "100"]);
  return [
    ...ipt.split("\n").filter((l) => !l.startsWith("#")).map((l) => l.replace(/\[\d+:\d+\]/, "")),
    rules,
    table.stdout,
  ].join("\n");
}

const accessLines = (n: SkiffNode) => (n.ztunnel?.lines ?? []).filter((l) => l.msg === "connection complete");

netnsTest(
  "host units: systemd units meshed by cgroup in the node's namespace, fail closed, removed whole",
  async (t) => {
    const root = await cgroup2Root();
    const slice = `skiff-test-${crypto.randomUUID().slice(0, 8)}.slice`;
    const cg = { billing: join(root, slice, "billing.service"), frontend: join(root, slice, "frontend.service") };
    await Deno.mkdir(cg.billing, { recursive: true });
    await Deno.mkdir(cg.frontend, { recursive: true });
    await using _cgroups = {
      async [Symbol.asyncDispose]() {
        for (const dir of [cg.billing, cg.frontend, join(root, slice)]) {
          await Deno.remove(dir).catch((e) => console.error(`cleanup: ${dir}: ${e.message}`));
        }
      },
    };
    await using cluster = await NetnsCluster.create("hostunit", { nodes: 2 });
    const [node1, node2] = cluster.nodes;
    const plain = manifests(node1.name, node1.address, node2.name, node2.address);
    const meshed = manifests(node1.name, node1.address, node2.name, node2.address, slice);
    await using control = await ControlProcess.start({ "shop.yaml": plain });
    const nodes = await Promise.all(
      [node1, node2].map(async (n) => new SkiffNode(n, control.url, await control.addNode(n.name), control.dir)),
    );
    await using _n1 = nodes[0];
    await using _n2 = nodes[1];
    for (const n of nodes) {
      await n.startAgent({ SKIFF_CGROUP_ROOT: root });
      await n.startZtunnel();
    }
    // What the nodes hold with the agents running and no unit declared: removing the units must come back to it.
    await until(
      "agents hold the view",
      async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s.ready),
    );
    const before = [await netState(node1.netns), await netState(node2.netns)];

    // IPv6 on the fabric, which Skiff does not capture: a unit's must be dropped, the node's other IPv6 untouched.
    const v6 = ["fd00:5c1f::1", "fd00:5c1f::2"];
    for (const [i, n] of [node1, node2].entries()) {
      await must(["ip", "-n", n.netns, "addr", "add", `${v6[i]}/64`, "dev", "eth0", "nodad"]);
    }
    await using billing = await server(node1.netns, cg.billing, "billing", node1.address, [8080, 8081]);
    await using frontend = await server(node2.netns, cg.frontend, "frontend", node2.address, [9090]);
    await using sshd = await server(node1.netns, undefined, "sshd", node1.address, [2222]);
    await using sshd6 = await server(node2.netns, undefined, "sshd6", v6[1], [2222]);

    const step = (name: string, fn: () => Promise<void>) =>
      t.step(name, async () => {
        try {
          await fn();
        } catch (error) {
          for (const p of [...nodes.flatMap((n) => [n.agent, n.ztunnel]), control.process]) {
            if (!p) {
              continue;
            }
            console.error(`--- ${p.name}, last lines:`);
            for (const l of p.lines.slice(-12)) console.error(JSON.stringify(l).slice(0, 400));
          }
          for (const n of nodes) console.error(`--- ${n.node.name} access log:`, JSON.stringify(accessLines(n)));
          throw error;
        }
      });

    const unitsOf = async (n: SkiffNode) =>
      ((await n.status()) as unknown as { units?: { name: string; state: string }[] }).units ?? [];

    await step("declared units are redirected on their nodes, the host rule set in place", async () => {
      await control.writeManifest("shop.yaml", meshed);
      for (const [i, name] of [[0, "billing"], [1, "frontend"]] as const) {
        await until(
          `${name} redirected`,
          async () => (await unitsOf(nodes[i])).some((u) => u.name === name && u.state === "redirected"),
        );
      }
      const problems = await checkHostRules(`/var/run/netns/${node1.netns}`, [
        { cgroup: `${slice}/billing.service`, address: node1.address, ports: [8080, 8081] },
      ]);
      assert.deepEqual(problems, []);
    });

    await step(
      "frontend → billing over HBONE: both SPIFFE identities in the access logs, the caller's address kept",
      async () => {
        const seen = billing.peers.length;
        assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "hi"), "billing:hi");
        assert.deepEqual(billing.peers.slice(seen), [`8080 ${node2.address}`]);
        const line = await until(
          "billing's ztunnel logs the connection",
          () => accessLines(nodes[0]).find((l) => l["dst.addr"] === `${node1.address}:8080`),
        );
        assert.equal(line["src.identity"], "spiffe://cluster.local/ns/shop/sa/frontend");
        assert.equal(line["dst.identity"], "spiffe://cluster.local/ns/shop/sa/billing");
        const out = await until(
          "frontend's ztunnel logs the connection",
          () => accessLines(nodes[1]).find((l) => l["dst.hbone_addr"] === `${node1.address}:8080`),
        );
        assert.equal(out["direction"], "outbound");
        assert.equal(out["src.identity"], "spiffe://cluster.local/ns/shop/sa/frontend");
        assert.equal(out["dst.identity"], "spiffe://cluster.local/ns/shop/sa/billing");
      },
    );

    await step("billing → frontend: the unit's outbound is captured too", async () => {
      const seen = frontend.peers.length;
      assert.equal(await call(node1.netns, cg.billing, node2.address, 9090, "yo"), "frontend:yo");
      assert.deepEqual(frontend.peers.slice(seen), [`9090 ${node1.address}`]);
      const line = await until(
        "frontend's ztunnel logs it inbound",
        () => accessLines(nodes[1]).find((l) => l["dst.addr"] === `${node2.address}:9090`),
      );
      assert.equal(line["src.identity"], "spiffe://cluster.local/ns/shop/sa/billing");
    });

    await step("DENY frontend → billing:8081 is enforced; the app never sees the caller", async () => {
      const seen = billing.peers.length;
      assert.match(await call(node2.netns, cg.frontend, node1.address, 8081, "admin"), /^failed/);
      assert.equal(billing.peers.length, seen);
      const line = await until(
        "billing's ztunnel logs the refusal",
        () => accessLines(nodes[0]).find((l) => /denied by policy shop\/no-admin-from-frontend/.test(String(l.error))),
      );
      assert.equal(line["src.identity"], "spiffe://cluster.local/ns/shop/sa/frontend");
      assert.equal(line["dst.identity"], "spiffe://cluster.local/ns/shop/sa/billing");
    });

    await step("processes outside the units' cgroups, and the node's other ports, are untouched", async () => {
      assert.equal(await call(node2.netns, undefined, node1.address, 2222, "ssh"), "sshd:ssh");
      assert.equal(await call(node1.netns, undefined, node1.address, 2222, "local"), "sshd:local");
      assert.equal(await call(node1.netns, cg.billing, node1.address, 2222, "own"), "sshd:own"); // the node itself
      await new Promise((r) => setTimeout(r, 300));
      // By what the lines name, not how many there are: a line of an earlier step may still come in (each of
      // ztunnel's threads writes its own access log asynchronously).
      const seen = nodes.map((n) => accessLines(n).filter((l) => /:2222$/.test(String(l["dst.addr"]))).length);
      assert.deepEqual(seen, [0, 0], "no ztunnel saw the sshd traffic");
      assert.deepEqual(sshd.peers.map((p) => p.split(" ")[1]), [node2.address, node1.address, node1.address]);
    });

    await step("IPv6: the unit's is dropped, the node's other processes' is not", async () => {
      assert.equal(await call(node1.netns, undefined, v6[1], 2222, "v6"), "sshd6:v6");
      assert.match(await call(node1.netns, cg.billing, v6[1], 2222, "v6"), /^failed/);
      assert.deepEqual(sshd6.peers, [`2222 ${v6[0]}`]);
    });

    await step("a second identity on billing's address is refused, naming both; billing is served on", async () => {
      await control.writeManifest(
        "shop.yaml",
        meshed + `---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: worker, namespace: shop, annotations: { skiff.io/node: ${node1.name}, skiff.io/unit: ${slice}/worker.service } }
spec: { address: ${node1.address}, serviceAccount: worker, ports: { http: 7070 } }
`,
      );
      const worker = await until(
        "worker refused",
        async () =>
          ((await nodes[0].status()) as unknown as { units?: { name: string; state: string; reason: string }[] }).units
            ?.find((u) => u.name === "worker" && u.state === "refused"),
      );
      assert.match(worker.reason, /WorkloadEntry shop\/worker .* has address .*, as WorkloadEntry shop\/billing /);
      assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "still"), "billing:still");
      await control.writeManifest("shop.yaml", meshed);
      await until("worker gone", async () => !(await unitsOf(nodes[0])).some((u) => u.name === "worker"));
    });

    await step("ztunnels stopped: the units' captured traffic is refused both ways, never plaintext", async () => {
      for (const n of nodes) await n.stopZtunnel();
      const billingSeen = billing.peers.length;
      const frontendSeen = frontend.peers.length;
      const results = [
        await call(node2.netns, cg.frontend, node1.address, 8080, "out"), // frontend's outbound
        await call(node1.netns, cg.billing, node2.address, 9090, "out"), // billing's outbound
        await call(node2.netns, undefined, node1.address, 8080, "in"), // plaintext to billing, uncaptured caller
      ];
      assert.deepEqual(results.map((r) => r.startsWith("failed")), [true, true, true], JSON.stringify(results));
      assert.equal(billing.peers.length, billingSeen);
      assert.equal(frontend.peers.length, frontendSeen);
      assert.equal(await call(node2.netns, undefined, node1.address, 2222, "ssh"), "sshd:ssh");
    });

    await step("ztunnels back: the agent's snapshot hands them the units again", async () => {
      for (const n of nodes) await n.startZtunnel();
      const answer = await until("frontend reaches billing again", async () => {
        const r = await call(node2.netns, cg.frontend, node1.address, 8080, "back");
        return r.startsWith("failed") ? undefined : r;
      });
      assert.equal(answer, "billing:back");
    });

    await using later = new AsyncDisposableStack();
    await step("a unit restarted in a new cgroup is captured again", async () => {
      await billing[Symbol.asyncDispose]();
      await Deno.remove(cg.billing); // as systemd does when a unit stops, and makes it anew when it starts
      await Deno.mkdir(cg.billing);
      const restarted = later.use(await server(node1.netns, cg.billing, "billing", node1.address, [8080, 8081]));
      const fromBilling = () => accessLines(nodes[1]).filter((l) => String(l["src.identity"]).endsWith("/sa/billing"));
      await until("billing's outbound from its new cgroup goes through ztunnel again", async () => {
        const logged = fromBilling().length;
        const r = await call(node1.netns, cg.billing, node2.address, 9090, "again");
        await new Promise((r) => setTimeout(r, 200));
        return r === "frontend:again" && fromBilling().length > logged;
      });
      assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "new"), "billing:new");
      assert.equal(restarted.peers.length, 1);
    });

    await step("an agent restart keeps the units: the rule set rewritten whole, never doubled", async () => {
      await nodes[0].stopAgent();
      assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "away"), "billing:away");
      await nodes[0].startAgent({ SKIFF_CGROUP_ROOT: root });
      await until(
        "billing redirected again",
        async () => (await unitsOf(nodes[0])).some((u) => u.name === "billing" && u.state === "redirected"),
      );
      const problems = await checkHostRules(`/var/run/netns/${node1.netns}`, [
        { cgroup: `${slice}/billing.service`, address: node1.address, ports: [8080, 8081] },
      ]);
      assert.deepEqual(problems, []);
      assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "back"), "billing:back");
    });

    await step("the annotations removed: every rule goes, the nodes are as before", async () => {
      await control.writeManifest("shop.yaml", plain);
      for (const n of nodes) await until("units gone", async () => (await unitsOf(n)).length === 0);
      await until("node 1 as before", async () => await netState(node1.netns) === before[0]);
      await until("node 2 as before", async () => await netState(node2.netns) === before[1]);
      const logged = nodes.map((n) => accessLines(n).length);
      assert.equal(await call(node2.netns, cg.frontend, node1.address, 8080, "plain"), "billing:plain");
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(nodes.map((n) => accessLines(n).length), logged, "no ztunnel saw it: the units are out");
    });
  },
);
