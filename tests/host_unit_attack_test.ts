/**
 * Attacks on a systemd unit meshed in the node's own network namespace (cni/host_rules_linux.ts,
 * cni/host_units.ts), by processes on the same node that are not the unit: a real `skiff control`, and on node 1 a
 * real `skiff cni-agent` and `skiff ztunnel` meshing the unit `billing` (port 7480); a plain server on node 2
 * (port 7481). A "local" process is one in the node's namespace outside every unit's cgroup (an unprivileged
 * user's shell, say); a "child" one is in a cgroup below the unit's (systemd's `.control`, or one the unit makes).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { SkiffNode } from "./harness/cni.ts";
import { IS_ROOT, NetnsCluster, netnsTest } from "./harness/netns.ts";
import { call, cgroup2Root, server } from "./harness/units.ts";
import { until } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const UNIT_PORT = 7480;
const DEST_PORT = 7481;

const manifest = (node: string, address: string, slice: string) =>
  `apiVersion: v1
kind: Namespace
metadata: { name: atk }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: billing, namespace: atk, annotations: { skiff.io/node: ${node}, skiff.io/unit: ${slice}/billing.service } }
spec: { address: ${address}, serviceAccount: billing, ports: { http: ${UNIT_PORT} } }
`;

netnsTest("host unit attacks: local processes around the unit's capture", async (t) => {
  const root = await cgroup2Root();
  const slice = `skiff-atk-${crypto.randomUUID().slice(0, 8)}.slice`;
  const cg = join(root, slice, "billing.service");
  const child = join(cg, "child.scope");
  await Deno.mkdir(child, { recursive: true });
  await using _cgroups = {
    async [Symbol.asyncDispose]() {
      for (const dir of [child, cg, join(root, slice)]) {
        await Deno.remove(dir).catch((e) => console.error(`cleanup: ${dir}: ${e.message}`));
      }
    },
  };
  await using cluster = await NetnsCluster.create("unitatk", { nodes: 2 });
  const [node1, node2] = cluster.nodes;
  await using control = await ControlProcess.start({ "atk.yaml": manifest(node1.name, node1.address, slice) });
  await using node = new SkiffNode(node1, control.url, await control.addNode(node1.name), control.dir);
  await node.startAgent({ SKIFF_CGROUP_ROOT: root });
  await node.startZtunnel();
  await using billing = await server(node1.netns, cg, "billing", "0.0.0.0", [UNIT_PORT]);
  await using dest = await server(node2.netns, undefined, "dest", node2.address, [DEST_PORT]);

  const logged = () => (node.ztunnel?.lines ?? []).filter((l) => l.msg === "connection complete");
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, async () => {
      try {
        await fn();
      } catch (error) {
        for (const p of [node.agent, node.ztunnel, control.process]) {
          if (!p) continue;
          console.error(`--- ${p.name}, last lines:`);
          for (const l of p.lines.slice(-12)) console.error(JSON.stringify(l).slice(0, 400));
        }
        throw error;
      }
    });

  await step("the unit is redirected; its own call is captured", async () => {
    await until(
      "billing redirected",
      async () =>
        ((await node.status()) as unknown as { units?: { name: string; state: string }[] }).units
          ?.some((u) => u.name === "billing" && u.state === "redirected"),
    );
    const before = logged().length;
    assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, "own"), "dest:own");
    await until("ztunnel logs it", () => logged().length > before);
  });

  await step("a local process never reaches the unit's port in plaintext around ztunnel", async () => {
    for (const ip of [node1.address, "127.0.0.1"]) {
      const seen = billing.peers.length;
      const before = logged().length;
      const r = await call(node1.netns, undefined, ip, UNIT_PORT, "sneak");
      await new Promise((r) => setTimeout(r, 300));
      const throughZtunnel = logged().length > before;
      console.log(`local → ${ip}:${UNIT_PORT}: ${r}`);
      assert.ok(
        r.startsWith("failed") || throughZtunnel,
        `a local process reached billing on ${ip}:${UNIT_PORT} uncaptured (${r}; peers ${billing.peers.slice(seen)})`,
      );
    }
  });

  await step("a process in a child cgroup of the unit's is captured as the unit is", async () => {
    const before = logged().length;
    assert.equal(await call(node1.netns, child, node2.address, DEST_PORT, "child"), "dest:child");
    await until("ztunnel logs the child's call", () => logged().length > before, 3000);
  });

  await step("a local process (or the unit) calling ztunnel's capture ports directly gets nothing", async () => {
    const calls = [
      [undefined, node1.address, 15001],
      [undefined, "127.0.0.1", 15001],
      [undefined, node1.address, 15006],
      [cg, "127.0.0.1", 15001],
      [cg, node1.address, 15006],
    ] as const;
    for (const [from, ip, port] of calls) {
      const seenDest = dest.peers.length;
      const seenUnit = billing.peers.length;
      const r = await call(node1.netns, from, ip, port, "direct");
      await new Promise((r) => setTimeout(r, 300));
      console.log(`${from ? "unit" : "local"} → ${ip}:${port}: ${r}`);
      assert.match(r, /^failed/, `${ip}:${port} answered`);
      assert.equal(dest.peers.length, seenDest);
      assert.equal(billing.peers.length, seenUnit);
    }
  });

  await step("an unprivileged process can neither join the unit's cgroup nor reach the agent's socket", async () => {
    const asNobody = async (script: string) => {
      const out = await new Deno.Command("setpriv", {
        args: ["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
    };
    for (const dir of [cg, child]) {
      const moved = await asNobody(`echo $$ > "${dir}/cgroup.procs"`);
      assert.notEqual(moved.code, 0, `nobody moved itself into ${dir}`);
      assert.match(moved.stderr, /Permission denied/);
    }
    const socket = join(node.runDir, "cni.sock");
    const asked = await asNobody(
      `exec python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "${socket}"`,
    );
    assert.notEqual(asked.code, 0, "nobody connected to the agent's socket");
    assert.match(asked.stderr, /PermissionError|Permission denied/);
  });
});
