/**
 * `skiff demo` end to end, as a user runs it: up (the cluster and the tour, each step's verdict), status, exec,
 * down twice, and nothing left behind: no `skd-` namespace, no host link or iptables rule that was not there
 * before, no process the demo started, no state directory, no pod resolv.conf, no cgroup of the demo's unit. It uses the demo's own fixed names, ports and
 * directory, so it refuses to run beside a demo someone left up rather than tear theirs down.
 */

import assert from "node:assert/strict";
import { DEMO_DIR, demoNamespaces } from "../demo/system.ts";
import { cgroup2Root } from "../demo/unit.ts";
import { netnsTest, run } from "./harness/netns.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function skiff(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The host's links and iptables rules, to compare before and after. */
async function hostState() {
  const links = (await run(["ip", "-o", "link", "show"])).stdout.split("\n").map((l) => l.split(":")[1]?.trim())
    .filter(Boolean).sort();
  const rules = (await run(["iptables-save"])).stdout.split("\n").filter((l) => l && !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]/, "")).sort();
  return { links, rules };
}

netnsTest(
  "skiff demo: up walks the tour with real identities, status and exec work, down leaves nothing",
  async (t) => {
    const there = await demoNamespaces();
    const dirThere = await Deno.stat(DEMO_DIR).then(() => true, () => false);
    assert.ok(
      there.length === 0 && !dirThere,
      `a demo cluster is up on this machine (${there.join(", ") || DEMO_DIR}); this test will not touch it`,
    );
    const before = await hostState();
    try {
      await t.step("up: every step of the tour passes", async () => {
        const r = await skiff(["demo"]);
        assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
        assert.equal(r.stdout.match(/^ {5}PASS /gm)?.length, 6, r.stdout);
        assert.doesNotMatch(r.stdout, /FAIL/);
        assert.match(
          r.stdout,
          /spiffe:\/\/cluster\.local\/ns\/demo\/sa\/client → spiffe:\/\/cluster\.local\/ns\/demo\/sa\/echo-v1/,
        );
        assert.match(r.stdout, /100 requests to 10\.96\.10\.10: \d+ to v1, \d+ to v2, all through the waypoint/);
        // The unit, by its DNS name: node2's ztunnel logged it inbound with the caller's and the unit's identity.
        assert.match(
          r.stdout,
          new RegExp(
            String.raw`PASS  billing\.demo\.svc\.cluster\.local → 10\.96\.10\.30 \(ztunnel's DNS proxy\), ` +
              String.raw`answered "billing /\\n" over mTLS: spiffe://cluster\.local/ns/demo/sa/client → ` +
              String.raw`spiffe://cluster\.local/ns/demo/sa/billing \(node2's ztunnel, inbound to the unit\)`,
          ),
        );
      });

      await t.step("up again refuses and names the command that cleans up", async () => {
        const r = await skiff(["demo", "up"]);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /skiff demo down/);
      });

      await t.step("status lists running processes and the pods' addresses", async () => {
        const r = await skiff(["demo", "status"]);
        assert.equal(r.code, 0, r.stderr);
        assert.doesNotMatch(r.stdout, /NOT RUNNING/);
        for (
          const name of ["control", "ztunnel-node1", "ztunnel-node2", "cni-agent-node1", "cni-agent-node2", "waypoint"]
        ) {
          assert.match(r.stdout, new RegExp(`^  ${name} +pid \\d+ +running$`, "m"));
        }
        assert.match(r.stdout, /^ {2}client +node1 +10\.244\.1\.\d+$/m);
        assert.match(
          r.stdout,
          /^ {2}billing +node2 +172\.31\.0\.2:8090 +skiff-demo\.slice\/billing\.service +redirected:/m,
        );
        assert.match(r.stdout, /^ {4}cgroup \S+\/skiff-demo\.slice\/billing\.service: pids \d+$/m);
      });

      await t.step("exec runs a command inside a pod, through the mesh", async () => {
        const r = await skiff([
          "demo",
          "exec",
          "client",
          "--",
          "bash",
          "-c",
          "exec 3<>/dev/tcp/10.96.10.20/9000; printf hi >&3; head -c 11 <&3",
        ]);
        assert.equal(r.stdout, "tcp-echo:hi", r.stderr);
      });
    } finally {
      const r = await skiff(["demo", "down"]);
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    }

    await t.step("down twice is fine, and nothing is left behind", async () => {
      const again = await skiff(["demo", "down"]);
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual(await demoNamespaces(), []);
      assert.equal(await Deno.stat(DEMO_DIR).then(() => true, () => false), false);
      const after = await hostState();
      assert.deepEqual(after.links, before.links);
      assert.deepEqual(after.rules, before.rules);
      const ps = await run(["pgrep", "-af", `${DEMO_DIR}|main.ts demo app`]);
      assert.equal(ps.stdout.trim(), "");
      const root = await cgroup2Root();
      assert.ok(root);
      assert.equal(await Deno.stat(`${root}/skiff-demo.slice`).then(() => true, () => false), false);
      const etc = await Array.fromAsync(Deno.readDir("/etc/netns")).catch(() => []);
      assert.deepEqual(etc.map((e) => e.name).filter((n) => n.startsWith("skd-")), []);
    });
  },
);
