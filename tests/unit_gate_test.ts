/**
 * The unit gate (`skiff unit-gate`, cni/unit_gate.ts; the drop-in deploy/systemd/skiff-mesh.conf) closes the window
 * a meshed systemd unit's restart opens: systemd removes the unit's cgroup directory when it stops and makes it
 * anew when it starts, and the capture rule (`-m cgroup --path`) still holds the old cgroup. A real `skiff control`,
 * and on node 1 a real `skiff cni-agent` and `skiff ztunnel`; the unit `client` (node 1) calls a plain server on
 * node 2. A restart is done as systemd does it: the directory removed and made again, then (with the gate) the
 * gate run inside the new cgroup as ExecStartPre= is, and the client started as soon as it exits 0. The agent's
 * own look at the cgroups (every 500 ms by default) is slowed to 5 s, so the window is wide enough to be shown
 * without timing anything.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { checkHostRules } from "../cni/host_rules_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { SkiffNode } from "./harness/cni.ts";
import { IS_ROOT, NetnsCluster, netnsTest } from "./harness/netns.ts";
import { call, cgroup2Root, server, spawnIn } from "./harness/units.ts";
import { until } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const DEST_PORT = 7272;

const manifest = (node: string, address: string, slice: string) =>
  `apiVersion: v1
kind: Namespace
metadata: { name: gate }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: client, namespace: gate, annotations: { skiff.io/node: ${node}, skiff.io/unit: ${slice}/client.service } }
spec: { address: ${address}, serviceAccount: client, ports: { http: 7070 } }
`;

/** `skiff unit-gate` run as systemd runs ExecStartPre=: inside the unit's cgroup; its exit code and stderr. */
async function unitGate(netns: string, cgroup: string, runDir: string, timeout = "5s") {
  const out = await spawnIn(netns, cgroup, [
    Deno.execPath(),
    "run",
    "--quiet",
    "--allow-all",
    "--no-prompt",
    MAIN,
    "unit-gate",
    `--run-dir=${runDir}`,
    `--timeout=${timeout}`,
  ]).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
}

netnsTest("unit gate: a meshed unit restarted in a new cgroup starts only with its capture in place", async (t) => {
  const root = await cgroup2Root();
  const slice = `skiff-gate-${crypto.randomUUID().slice(0, 8)}.slice`;
  const cg = join(root, slice, "client.service");
  const other = join(root, slice, "other.service");
  await Deno.mkdir(cg, { recursive: true });
  await Deno.mkdir(other, { recursive: true });
  await using _cgroups = {
    async [Symbol.asyncDispose]() {
      for (const dir of [cg, other, join(root, slice)]) {
        await Deno.remove(dir).catch((e) => console.error(`cleanup: ${dir}: ${e.message}`));
      }
    },
  };
  await using cluster = await NetnsCluster.create("unitgate", { nodes: 2 });
  const [node1, node2] = cluster.nodes;
  await using control = await ControlProcess.start({ "gate.yaml": manifest(node1.name, node1.address, slice) });
  await using node = new SkiffNode(node1, control.url, await control.addNode(node1.name), control.dir);
  await node.startAgent({ SKIFF_CGROUP_ROOT: root, SKIFF_UNIT_WATCH_INTERVAL: "5s" });
  await node.startZtunnel();
  await using dest = await server(node2.netns, undefined, "dest", node2.address, [DEST_PORT]);

  const unitState = async () =>
    ((await node.status()) as unknown as { units?: { name: string; state: string }[] }).units
      ?.find((u) => u.name === "client")?.state;
  /** node 1's ztunnel's access log lines for connections to the destination. */
  const captured = () =>
    (node.ztunnel?.lines ?? []).filter((l) =>
      l.msg === "connection complete" && l["dst.addr"] === `${node2.address}:${DEST_PORT}`
    ).length;
  const restart = async () => {
    await Deno.remove(cg); // systemd at the unit's stop
    await Deno.mkdir(cg); // and at its start, before ExecStartPre=
  };
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
  /** One call from the unit's cgroup that ztunnel logs: every earlier captured call is logged by then too. */
  const markedCall = async (msg: string) => {
    const before = captured();
    assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, msg), `dest:${msg}`);
    await until("ztunnel logs the marker call", () => captured() > before);
  };

  await step("the unit is redirected, its calls go through ztunnel", async () => {
    await until("client redirected", async () => await unitState() === "redirected");
    await markedCall("first");
  });

  await step(
    "without the gate: the first call after a restart leaves uncaptured, in plaintext (the window)",
    async () => {
      let uncaptured = 0;
      const rounds = 3;
      for (let i = 0; i < rounds; i++) {
        await restart();
        const before = captured();
        const seen = dest.peers.length;
        assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, `nogate${i}`), `dest:nogate${i}`);
        assert.equal(dest.peers.length, seen + 1);
        // Calls until the agent's own look has written the rules again (the window closes): the last of them is the
        // first captured one, and a captured first call would have been logged before it.
        await until("the agent's look captures the unit again", async () => {
          const b = captured();
          assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, `look${i}`), `dest:look${i}`);
          return await until("logged", () => captured() > b, 1000).catch(() => false);
        });
        if (captured() === before + 1) uncaptured++;
      }
      console.log(`without the gate: ${uncaptured} of ${rounds} first calls after a restart left uncaptured`);
      // The agent's look (every 5 s here) may land between a restart and its first call; not three times running.
      assert.ok(uncaptured >= 1, `${uncaptured} of ${rounds} first calls after a restart left uncaptured`);
    },
  );

  await step("with the gate: each restart's first call is captured, 3 of 3", async () => {
    let capturedFirst = 0;
    for (let i = 0; i < 3; i++) {
      await restart();
      const gate = await unitGate(node1.netns, cg, node.runDir);
      assert.equal(gate.code, 0, gate.stderr);
      assert.match(gate.stderr, /client\.service \(gate\/client\) captured in cgroup .*client\.service \(inode \d+\)/);
      const before = captured();
      assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, `gate${i}`), `dest:gate${i}`);
      await until("ztunnel logs the first call", () => captured() > before);
      capturedFirst++;
    }
    assert.equal(capturedFirst, 3);
    const problems = await checkHostRules(`/var/run/netns/${node1.netns}`, [
      { cgroup: `${slice}/client.service`, address: node1.address, ports: [7070] },
    ]);
    assert.deepEqual(problems, []);
  });

  await step("ztunnel stopped: the gate refuses the start after its timeout; the unit's call is refused", async () => {
    await node.stopZtunnel();
    await restart();
    const gate = await unitGate(node1.netns, cg, node.runDir, "2s");
    assert.equal(gate.code, 1, gate.stderr);
    assert.match(gate.stderr, /not started: .*no ztunnel is connected \(still so after 2000 ms/);
    const seen = dest.peers.length;
    assert.match(await call(node1.netns, cg, node2.address, DEST_PORT, "closed"), /^failed/);
    assert.equal(dest.peers.length, seen, "nothing reached the destination");
  });

  await step("ztunnel back: the gate opens again", async () => {
    await node.startZtunnel();
    await until("client redirected", async () => await unitState() === "redirected");
    await restart();
    const gate = await unitGate(node1.netns, cg, node.runDir);
    assert.equal(gate.code, 0, gate.stderr);
    const before = captured();
    assert.equal(await call(node1.netns, cg, node2.address, DEST_PORT, "back"), "dest:back");
    await until("ztunnel logs it", () => captured() > before);
  });

  await step("a cgroup that is no meshed unit's: refused at once, saying why; nothing captured", async () => {
    const gate = await unitGate(node1.netns, other, node.runDir);
    assert.equal(gate.code, 1);
    assert.match(
      gate.stderr,
      new RegExp(
        `cgroup "${slice}/other\\.service" is not a meshed unit's on node ${node1.name} \\(meshed: ` +
          `${slice}/client\\.service\\)`,
      ),
    );
    assert.doesNotMatch(gate.stderr, /still so after/, "refused at once, not after the timeout");
    const before = captured();
    assert.equal(await call(node1.netns, other, node2.address, DEST_PORT, "other"), "dest:other");
    await markedCall("after-other");
    assert.equal(captured(), before + 1, "only the marker was captured");
  });

  await step("agent down: the gate refuses the start after its timeout", async () => {
    await node.stopAgent();
    await restart();
    const gate = await unitGate(node1.netns, cg, node.runDir, "1500ms");
    assert.equal(gate.code, 1);
    assert.match(gate.stderr, /not started: the node agent is not reachable on .*cni\.sock.*still so after 1500 ms/);
  });
});
