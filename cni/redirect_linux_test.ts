import assert from "node:assert/strict";
import { must, NetnsCluster, netnsTest, run } from "../tests/harness/netns.ts";
import { CHAINS, checkRedirect, installRedirect, removeRedirect } from "./redirect_linux.ts";

async function saved(netns: string): Promise<string> {
  return (await must(["ip", "netns", "exec", netns, "iptables-save", "-t", "mangle"]))
    .split("\n").filter((l) => !l.startsWith("#")).join("\n");
}

netnsTest("installRedirect() puts the rule set in the pod, and check finds it complete", async () => {
  await using cluster = await NetnsCluster.create("redirect-install");
  const pod = await cluster.addPod(cluster.nodes[0]);
  assert.ok((await checkRedirect(pod.netnsPath)).problems.length > 0, "nothing is in place before install");
  await installRedirect(pod.netnsPath);
  assert.deepEqual((await checkRedirect(pod.netnsPath)).problems, []);
  const rules = await saved(pod.netns);
  for (const lines of Object.values(CHAINS)) for (const l of lines) assert.ok(rules.includes(l), l);
  assert.match(await must(["ip", "-n", pod.netns, "rule"]), /32764:\s+from all fwmark 0x111\/0xfff lookup 100/);
  assert.match(await must(["ip", "-n", pod.netns, "route", "show", "table", "100"]), /local default dev lo/);
});

netnsTest("installRedirect() twice, or over a damaged set, leaves exactly one copy of every rule", async () => {
  await using cluster = await NetnsCluster.create("redirect-idem");
  const pod = await cluster.addPod(cluster.nodes[0]);
  await installRedirect(pod.netnsPath);
  const once = await saved(pod.netns);
  const rulesOnce = await must(["ip", "-n", pod.netns, "rule"]);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), once);
  assert.equal(await must(["ip", "-n", pod.netns, "rule"]), rulesOnce);
  // Damage it: drop one rule, as an operator or another tool might.
  await must(["ip", "netns", "exec", pod.netns, "iptables", "-t", "mangle", "-D", "SKIFF_PRERT", "1"]);
  assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), /chain SKIFF_PRERT differs/);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), once);
  assert.deepEqual((await checkRedirect(pod.netnsPath)).problems, []);
});

netnsTest("checkRedirect() names each missing piece", async (t) => {
  await using cluster = await NetnsCluster.create("redirect-check");
  const pod = await cluster.addPod(cluster.nodes[0]);
  const cases: [string, string[], RegExp][] = [
    [
      "a jump",
      ["iptables", "-t", "mangle", "-D", "OUTPUT", "-j", "SKIFF_OUTPUT"],
      /OUTPUT jumps to SKIFF_OUTPUT 0 times/,
    ],
    ["the policy rule", ["ip", "rule", "del", "pref", "32764"], /ip rule fwmark 0x111\/0xfff lookup 100 is missing/],
    [
      "the local route",
      ["ip", "route", "flush", "table", "100"],
      /route local 0.0.0.0\/0 dev lo in table 100 is missing/,
    ],
  ];
  for (const [name, cmd, want] of cases) {
    await t.step(name, async () => {
      await installRedirect(pod.netnsPath);
      await must(["ip", "netns", "exec", pod.netns, ...cmd]);
      assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), want);
    });
  }
  await t.step("a duplicated jump", async () => {
    await installRedirect(pod.netnsPath);
    await must(["ip", "netns", "exec", pod.netns, "iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "SKIFF_PRERT"]);
    assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), /PREROUTING jumps to SKIFF_PRERT 2 times/);
  });
});

netnsTest("removeRedirect() removes everything it installed, and again is not an error", async () => {
  await using cluster = await NetnsCluster.create("redirect-remove");
  const pod = await cluster.addPod(cluster.nodes[0]);
  const pristine = await saved(pod.netns);
  const pristineRules = await must(["ip", "-n", pod.netns, "rule"]);
  await installRedirect(pod.netnsPath);
  // A duplicated jump (say, from an older agent) goes too.
  await must(["ip", "netns", "exec", pod.netns, "iptables", "-t", "mangle", "-A", "OUTPUT", "-j", "SKIFF_OUTPUT"]);
  await removeRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), pristine);
  assert.equal(await must(["ip", "-n", pod.netns, "rule"]), pristineRules);
  const table = await run(["ip", "-n", pod.netns, "route", "show", "table", "100"]);
  assert.equal(table.code === 0 ? table.stdout.trim() : "", "", "table 100 is empty or gone");
  await removeRedirect(pod.netnsPath);
  assert.ok((await checkRedirect(pod.netnsPath)).problems.length > 0);
});

netnsTest("the rule set touches only the pod's namespace, never the node's or the host's", async () => {
  const host = await must(["iptables-save", "-t", "mangle"]).catch(() => "");
  const strip = (s: string) =>
    s.split("\n").filter((l) => !l.startsWith("#") && !/^:.* \[\d+:\d+\]$/.test(l)).join("\n");
  await using cluster = await NetnsCluster.create("redirect-scope");
  const node = cluster.nodes[0];
  const pod = await cluster.addPod(node);
  const nodeBefore = await saved(node.netns);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(node.netns), nodeBefore);
  assert.equal(strip(await must(["iptables-save", "-t", "mangle"]).catch(() => "")), strip(host));
  await removeRedirect(pod.netnsPath);
});
