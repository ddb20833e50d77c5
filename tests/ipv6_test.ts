/**
 * IPv6 in enrolled pods, through the real CNI path: a real `skiff control`, `skiff cni-agent` and `skiff ztunnel`
 * on one node, pods made by the reference `bridge` plugin with `skiff` chained after it (tests/harness/cni.ts).
 * Skiff captures IPv4 only, yet every pod has an `fe80::` address on the node's bridge, so a neighbour pod could
 * reach an enrolled pod's app over `[fe80::…%eth0]` around ztunnel. The in-pod rules drop all IPv6 but loopback
 * (cni/redirect_linux.ts); here a neighbour on the same bridge tries, before enrolment (it works: the test can
 * fail), while enrolled (it must not), and after the pod leaves the mesh (it works again). And a node whose
 * ip6tables is missing refuses to enrol a pod rather than capture its IPv4 and leave its IPv6 open.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { checkRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { CniRuntime, nodeNetwork, REFERENCE_PLUGINS, type Sandbox, SkiffNode, skiffPluginDir } from "./harness/cni.ts";
import { curl6, httpApp6, linkLocal } from "./harness/ipv6.ts";
import { IS_ROOT, NetnsCluster, netnsTest, run } from "./harness/netns.ts";
import { until as pollUntil } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const PORT = 8087;

/** `app` and `late` are enrolled (the namespace is); `neighbour`, and `app` when `appOut`, opt out. */
const manifests = (appOut = false) => {
  const pod = (name: string, out: boolean) =>
    `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: v6
  labels: { app: ${name}${out ? ", istio.io/dataplane-mode: none" : ""} }
spec: { nodeName: node1, serviceAccountName: ${name} }
---
`;
  return `apiVersion: v1
kind: Namespace
metadata: { name: v6, labels: { istio.io/dataplane-mode: ambient } }
---
${pod("app", appOut)}${pod("neighbour", true)}${pod("late", false)}`;
};

/** Polls until `fn` resolves truthy, every 100 ms for 15 s unless told otherwise. */
const until = <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000) =>
  pollUntil(what, fn, timeoutMs, 100);

/** A directory whose ip6tables, ip6tables-restore and ip6tables-save fail as a missing program does. */
async function noIp6tables() {
  const dir = await Deno.makeTempDir({ prefix: "skiff-no-ip6tables-" });
  for (const tool of ["ip6tables", "ip6tables-restore", "ip6tables-save"]) {
    await Deno.writeTextFile(join(dir, tool), `#!/bin/sh\necho "${tool}: not installed (test)" >&2\nexit 127\n`, {
      mode: 0o755,
    });
  }
  return {
    dir,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

netnsTest(
  "ipv6: a neighbour on the bridge reaches an enrolled pod over fe80:: only while it is not enrolled",
  async (t) => {
    await using cluster = await NetnsCluster.create("ipv6");
    const [node] = cluster.nodes;
    await using bin = await skiffPluginDir();
    await using control = await ControlProcess.start({ "v6.yaml": manifests() });
    await using skiffNode = new SkiffNode(node, control.url, await control.addNode(node.name), control.dir);
    const runtime = new CniRuntime(
      nodeNetwork(node, { ipamDir: join(control.dir, "ipam"), agentSocket: skiffNode.agentSocket }),
      [REFERENCE_PLUGINS, bin.dir],
      node.netns,
    );
    await skiffNode.startAgent();
    await skiffNode.startZtunnel();
    const sandbox = async (name: string): Promise<Sandbox & { ns: string }> => {
      const ns = await cluster.addSandbox(name);
      return {
        containerId: `c-${name}-${crypto.randomUUID().slice(0, 8)}`,
        netns: ns.path,
        namespace: "v6",
        name,
        ns: ns.name,
      };
    };
    const step = (name: string, fn: () => Promise<void>) =>
      t.step(name, async () => {
        try {
          await fn();
        } catch (error) {
          for (const p of [skiffNode.agent, skiffNode.ztunnel, control.process]) {
            if (!p) continue;
            console.error(`--- ${p.name}, last lines:`);
            for (const l of p.lines.slice(-15)) console.error(JSON.stringify(l).slice(0, 300));
          }
          throw error;
        }
      });

    // The app's pod gets its interface from bridge alone first: the neighbour's view of it before enrolment.
    const app = await sandbox("app");
    const neighbour = await sandbox("neighbour");
    const [bridgePlugin, skiffPlugin] = runtime.list.plugins;
    const bridged = await runtime.exec(bridgePlugin, runtime.env("ADD", app));
    assert.equal(bridged.code, 0, bridged.stdout);
    const nAdded = await runtime.add(neighbour);
    assert.ok(nAdded.ok, JSON.stringify(nAdded.error));
    const appLL = await linkLocal(app.ns);
    const neighbourLL = await linkLocal(neighbour.ns);
    await using appServer = httpApp6(app.netns, PORT, "app");
    await using neighbourServer = httpApp6(neighbour.netns, PORT, "neighbour");
    const inward = () => curl6(neighbour.ns, appLL, "eth0", PORT, 2);
    const outward = () => curl6(app.ns, neighbourLL, "eth0", PORT, 2);
    const answered = (body: string) => ({ code: 0, body, stderr: "" });

    await step("before enrolment: the neighbour reaches the app over [fe80::…%eth0], and back", async () => {
      assert.deepEqual(await inward(), answered("app\n"));
      assert.deepEqual(await outward(), answered("neighbour\n"));
    });

    await step("enrolled: no IPv6 either way but loopback; IPv4 still reaches the app through ztunnel", async () => {
      const added = await runtime.exec(skiffPlugin, runtime.env("ADD", app), bridged.json);
      assert.equal(added.code, 0, added.stdout);
      assert.deepEqual((await checkRedirect(app.netns)).problems, []);
      const [appSeen, neighbourSeen] = [appServer.peers.length, neighbourServer.peers.length];
      const inn = await inward();
      assert.notEqual(inn.code, 0, `the neighbour reached the enrolled app around ztunnel: ${JSON.stringify(inn)}`);
      const out = await outward();
      assert.notEqual(out.code, 0, `the enrolled app's IPv6 left uncaptured: ${JSON.stringify(out)}`);
      assert.equal(appServer.peers.length, appSeen, "nothing reached the app over IPv6");
      assert.equal(neighbourServer.peers.length, neighbourSeen, "nothing reached the neighbour over IPv6");
      assert.deepEqual(await curl6(app.ns, "::1", undefined, PORT), answered("app\n"));
      // IPv4 is captured, not dropped: the neighbour (outside the mesh) reaches the app in plaintext via 15006.
      const appIp = String((bridged.json?.ips as { address: string }[])[0].address).split("/")[0];
      const v4 = await run([
        "ip",
        "netns",
        "exec",
        neighbour.ns,
        "curl",
        "-sS",
        "--max-time",
        "3",
        `http://${appIp}:${PORT}/`,
      ]);
      assert.equal(v4.stdout, "app\n", v4.stderr);
      await skiffNode.ztunnel!.waitForLog((l) =>
        l.msg === "connection complete" && l.direction === "inbound" && String(l["dst.addr"]).startsWith(appIp)
      );
    });

    await step("CHECK fails (100) when the IPv6 drop is gone; ADD again puts it back", async () => {
      const check = () => runtime.exec(skiffPlugin, runtime.env("CHECK", app), bridged.json);
      assert.equal((await check()).code, 0);
      await run(["ip", "netns", "exec", app.ns, "ip6tables", "-t", "mangle", "-D", "PREROUTING", "-j", "SKIFF_PRERT"]);
      const failed = await check();
      assert.equal(failed.json?.code, 100, failed.stdout);
      assert.match(String(failed.json?.details), /IPv6: PREROUTING jumps to SKIFF_PRERT 0 times/);
      const again = await runtime.exec(skiffPlugin, runtime.env("ADD", app), bridged.json);
      assert.equal(again.code, 0, again.stdout);
      assert.deepEqual((await checkRedirect(app.netns)).problems, []);
      assert.equal((await check()).code, 0);
      const inn = await inward();
      assert.notEqual(inn.code, 0, `the neighbour reached the app after the re-ADD: ${JSON.stringify(inn)}`);
    });

    await step("out of the mesh: the agent removes the rules, and IPv6 works again both ways", async () => {
      await control.writeManifest("v6.yaml", manifests(true));
      await until("the app outside the mesh", async () => {
        const status = await skiffNode.status();
        return status.pods.find((p) => p.name === "app")?.state === "outside";
      });
      const saved6 = await run(["ip", "netns", "exec", app.ns, "ip6tables-save", "-t", "mangle"]);
      assert.doesNotMatch(saved6.stdout, /SKIFF_/);
      assert.deepEqual(await inward(), answered("app\n"));
      assert.deepEqual(await outward(), answered("neighbour\n"));
    });

    await step("without ip6tables the agent refuses an enrolled pod (100): never captured half-way", async () => {
      await using shim = await noIp6tables();
      await skiffNode.stopAgent();
      await skiffNode.startAgent({ PATH: `${shim.dir}:${Deno.env.get("PATH")}` });
      const late = await sandbox("late");
      const outcome = await runtime.add(late); // bridge, then skiff fails; then the runtime's DEL
      assert.equal(outcome.ok, false);
      assert.equal(outcome.error?.code, 100, JSON.stringify(outcome.error));
      assert.match(outcome.error!.msg, /in-pod rules could not be installed/);
      assert.match(String(outcome.error!.details), /ip6tables-restore .*not installed/);
      const status = await skiffNode.status();
      assert.equal(status.pods.find((p) => p.name === "late"), undefined, JSON.stringify(status.pods));
      assert.equal(
        skiffNode.ztunnel!.lines.find((l) => l.pod === "v6/late"),
        undefined,
        "ztunnel was never handed the refused pod",
      );
      await skiffNode.stopAgent();
    });
  },
);
