/**
 * The CNI plugin and node agent end to end, in network namespaces: a real `skiff control`, and on each of two
 * nodes a real `skiff cni-agent` and `skiff ztunnel`; pods are created by the reference `bridge` plugin with
 * `host-local` IPAM (Debian's containernetworking-plugins) with `skiff` chained after it, invoked as a container
 * runtime does (tests/harness/cni.ts: a libcni test double, since there is no containerd here).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { checkRedirect, PROBE_SNAT_IP, removeRedirect } from "../cni/redirect_linux.ts";
import { probeRuleAddresses } from "../cni/node_rules.ts";
import { ControlProcess } from "./harness/control.ts";
import { CniRuntime, nodeNetwork, REFERENCE_PLUGINS, type Sandbox, SkiffNode, skiffPluginDir } from "./harness/cni.ts";
import { IS_ROOT, NetnsCluster, netnsTest, run } from "./harness/netns.ts";
import { call } from "./harness/tcp.ts";
import { echoApp } from "./harness/ztunnel.ts";
import { until as pollUntil } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const manifests = (optOut: string[] = []) => {
  const pod = (name: string, node: string, sa: string) =>
    `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: shop
  labels: { app: ${name}${optOut.includes(name) ? ", istio.io/dataplane-mode: none" : ""} }
spec: { nodeName: ${node}, serviceAccountName: ${sa} }
---
`;
  return `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
${pod("client", "node1", "client")}${pod("late", "node1", "client")}${pod("server", "node2", "server")}` +
    `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: shop }
spec: { mtls: { mode: STRICT } }
`;
};

/** Polls until `fn` resolves truthy, every 100 ms for 15 s unless told otherwise. */
const until = <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000) =>
  pollUntil(what, fn, timeoutMs, 100);

const tryCall = (from: string, ip: string, port: number, msg: string) =>
  call(from, ip, port, msg, 3000).catch((error) => `failed: ${(error as Error).message}`);

netnsTest(
  "cni: bridge + host-local with skiff chained; HBONE between pods, probes, fail closed, reconcile",
  async (t) => {
    await using cluster = await NetnsCluster.create("cni", { nodes: 2 });
    const [node1, node2] = cluster.nodes;
    await using bin = await skiffPluginDir();
    await using control = await ControlProcess.start({ "shop.yaml": manifests() });
    const dir = control.dir;
    const nodes = await Promise.all(
      [node1, node2].map(async (n) => new SkiffNode(n, control.url, await control.addNode(n.name), dir)),
    );
    await using _n1 = nodes[0];
    await using _n2 = nodes[1];
    const runtimes = nodes.map((n) =>
      new CniRuntime(
        nodeNetwork(n.node, { ipamDir: join(dir, `ipam-${n.node.name}`), agentSocket: n.agentSocket }),
        [REFERENCE_PLUGINS, bin.dir],
        n.node.netns,
      )
    );
    for (const n of nodes) {
      await n.startAgent();
      await n.startZtunnel();
    }
    let sandboxes = 0;
    const sandbox = async (node: 0 | 1, name: string): Promise<Sandbox> => {
      const ns = await cluster.addSandbox(`s${++sandboxes}n${node + 1}`);
      return { containerId: `c-${name}-${crypto.randomUUID().slice(0, 8)}`, netns: ns.path, namespace: "shop", name };
    };
    const ipOf = (result: Record<string, unknown> | undefined) =>
      String((result?.ips as { address: string }[])[0].address).split("/")[0];

    // On a failure, the processes' last log lines say why.
    const step = (name: string, fn: () => Promise<void>) =>
      t.step(name, async () => {
        try {
          await fn();
        } catch (error) {
          for (const p of [...nodes.flatMap((n) => [n.agent, n.ztunnel]), control.process]) {
            if (!p) continue;
            console.error(`--- ${p.name}, last lines:`);
            for (const l of p.lines.slice(-15)) console.error(JSON.stringify(l).slice(0, 300));
          }
          throw error;
        }
      });

    const client = await sandbox(0, "client");
    const server = await sandbox(1, "server");
    const added = [await runtimes[0].add(client), await runtimes[1].add(server)];
    const [clientIp, serverIp] = added.map((a) => ipOf(a.result));
    await using app = echoApp({ netnsPath: server.netns, name: "server" }, 8080);

    await step("ADD chains after bridge: the result is bridge's, unchanged; the rules are in the pod", async () => {
      for (const a of added) {
        assert.ok(a.ok, JSON.stringify(a.error));
        assert.equal(a.runs.length, 2);
        assert.deepEqual(a.runs[1].json, a.runs[0].json, "skiff passes prevResult through unchanged");
      }
      for (const s of [client, server]) assert.deepEqual((await checkRedirect(s.netns)).problems, []);
      const status = await nodes[0].status();
      assert.deepEqual(status.pods.map((p) => [p.name, p.state]), [["client", "redirected"]]);
    });

    await step("the client reaches the server over HBONE with both identities verified", async () => {
      // The control plane marks both workloads HBONE once their agents report them redirected; until then
      // STRICT refuses the plaintext call.
      const answer = await until("a call over HBONE", async () => {
        const a = await tryCall(client.netns, serverIp, 8080, "hi");
        return a === "server:hi" ? a : undefined;
      });
      assert.equal(answer, "server:hi");
      const inbound = await nodes[1].ztunnel!.waitForLog((l) =>
        l.msg === "connection complete" && l.direction === "inbound" && l["src.addr"] !== undefined &&
        String(l["src.addr"]).startsWith(clientIp)
      );
      assert.equal(inbound["src.identity"], "spiffe://cluster.local/ns/shop/sa/client");
      assert.equal(inbound["dst.identity"], "spiffe://cluster.local/ns/shop/sa/server");
      // The app sees the client's own address: ztunnel preserved it.
      assert.ok(app.peers.includes(clientIp), `peers ${app.peers}`);
    });

    await step(`a probe from the server's node reaches the app from ${PROBE_SNAT_IP}, past STRICT`, async () => {
      assert.deepEqual(await probeRuleAddresses(`/var/run/netns/${node2.netns}`), [serverIp]);
      const before = app.peers.length;
      // A process on the node itself (as the kubelet is): its socket matches --socket-exists.
      assert.equal(await call(`/var/run/netns/${node2.netns}`, serverIp, 8080, "probe"), "server:probe");
      assert.equal(app.peers.at(-1), PROBE_SNAT_IP);
      assert.equal(app.peers.length, before + 1);
    });

    await step(
      "CHECK passes with the rules in place, fails once they are removed; ADD again restores them",
      async () => {
        assert.ok((await runtimes[0].check(client)).ok);
        await removeRedirect(client.netns);
        const failed = await runtimes[0].check(client);
        assert.equal(failed.ok, false);
        assert.equal(failed.error?.code, 100);
        assert.match(failed.error!.msg, /redirection is not in place/);
        const again = await runtimes[0].exec(
          runtimes[0].list.plugins[1],
          runtimes[0].env("ADD", client),
          added[0].result,
        );
        assert.equal(again.code, 0, again.stdout);
        assert.deepEqual((await checkRedirect(client.netns)).problems, []);
        assert.ok((await runtimes[0].check(client)).ok);
      },
    );

    await step("an agent restart reconciles every pod without duplicate rules; traffic still flows", async () => {
      await nodes[0].agent!.kill();
      await nodes[0].startAgent();
      await nodes[0].agent!.waitForLog((l) => l.msg === "pods of the last run reconciled" && l.pods === 1);
      await nodes[0].agent!.waitForLog((l) => l.msg === "ztunnel took the snapshot" && l.pods === 1, 20_000);
      const problems = (await checkRedirect(client.netns)).problems;
      assert.deepEqual(problems, [], "rules rewritten once: each jump exactly once");
      const saved = await run([
        "ip",
        "netns",
        "exec",
        client.netns.split("/").at(-1)!,
        "iptables-save",
        "-t",
        "mangle",
      ]);
      assert.equal(saved.stdout.split("\n").filter((l) => l === "-A PREROUTING -j SKIFF_PRERT").length, 1);
      assert.equal(await tryCall(client.netns, serverIp, 8080, "again"), "server:again");
    });

    await step(
      "with ztunnel away, ADD fails with 11 after the rules went in: the pod's traffic is refused",
      async () => {
        await nodes[0].stopZtunnel();
        const late = await sandbox(0, "late");
        const [bridge, skiffPlugin] = runtimes[0].list.plugins;
        const bridgeOnly = await runtimes[0].exec(bridge, runtimes[0].env("ADD", late));
        assert.equal(bridgeOnly.code, 0, bridgeOnly.stdout);
        const skiff = await runtimes[0].exec(skiffPlugin, runtimes[0].env("ADD", late), bridgeOnly.json);
        assert.equal(skiff.code, 1);
        assert.equal(skiff.json?.code, 11, skiff.stdout);
        // Even if the runtime started the container anyway, its traffic would go nowhere but to the absent ztunnel.
        const lateNs = late.netns.split("/").at(-1)!;
        const sneak = await run([
          "ip",
          "netns",
          "exec",
          lateNs,
          "timeout",
          "2",
          "bash",
          "-c",
          `echo x >/dev/tcp/${serverIp}/8080`,
        ]);
        assert.notEqual(sneak.code, 0, "a connection from the unacknowledged pod must not be made");
        assert.ok(!app.peers.includes(ipOf(bridgeOnly.json)));
        // The runtime's DEL after the failed ADD succeeds.
        assert.ok((await runtimes[0].del(late)).ok);
        await nodes[0].startZtunnel();
      },
    );

    await step("with the agent stopped, ADD fails with 11 (fail closed) and DEL still succeeds", async () => {
      await nodes[0].stopAgent();
      const late = await sandbox(0, "late");
      const outcome = await runtimes[0].add(late); // bridge, then skiff fails; then the runtime's DEL
      assert.equal(outcome.ok, false);
      assert.equal(outcome.error?.code, 11);
      assert.match(outcome.error!.msg, /node agent .* is not reachable/);
      assert.equal(outcome.runs.length, 2);
      await nodes[0].startAgent();
    });

    await step("a pod labelled out of the mesh loses its rules, and ztunnel drops it", async () => {
      await Deno.writeTextFile(join(control.manifests, "shop.yaml"), manifests(["client"]));
      await until("the client outside the mesh", async () => {
        const status = await nodes[0].status();
        return status.pods.length === 1 && status.pods[0].name === "client" && status.pods[0].state === "outside";
      });
      assert.deepEqual((await checkRedirect(client.netns)).problems.slice(0, 1), ["chain SKIFF_DIVERT is missing"]);
      await nodes[0].ztunnel!.waitForLog((l) => String(l.msg).startsWith("pod removed") && l.uid === "shop/client");
    });

    await step("DEL succeeds in every odd case: twice, netns gone, never added", async () => {
      assert.ok((await runtimes[1].del(server)).ok);
      assert.ok((await runtimes[1].del(server)).ok, "a repeated DEL");
      await run(["ip", "netns", "del", client.netns.split("/").at(-1)!]);
      assert.ok((await runtimes[0].del(client)).ok, "DEL with the netns gone");
      const never = await sandbox(1, "never");
      assert.ok((await runtimes[1].del(never)).ok, "DEL of a pod never added");
      assert.deepEqual(await probeRuleAddresses(`/var/run/netns/${node2.netns}`), []);
    });
  },
);
