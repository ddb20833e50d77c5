import assert from "node:assert/strict";
import { must, NetnsCluster, netnsTest, run } from "../tests/harness/netns.ts";
import { netnsPath } from "../mesh/netns_linux.ts";
import { curl6, httpApp6, linkLocal } from "../tests/harness/ipv6.ts";
import { CHAINS, CHAINS6, checkRedirect, installRedirect, removeRedirect } from "./redirect_linux.ts";

async function saved(netns: string, save: "iptables-save" | "ip6tables-save" = "iptables-save"): Promise<string> {
  return (await must(["ip", "netns", "exec", netns, save, "-t", "mangle"]))
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
  const rules6 = await saved(pod.netns, "ip6tables-save");
  for (const lines of Object.values(CHAINS6)) for (const l of lines) assert.ok(rules6.includes(l), l);
  for (const jump of ["-A PREROUTING -j SKIFF_PRERT", "-A OUTPUT -j SKIFF_OUTPUT"]) assert.ok(rules6.includes(jump));
  assert.match(await must(["ip", "-n", pod.netns, "rule"]), /32764:\s+from all fwmark 0x111\/0xfff lookup 100/);
  assert.match(await must(["ip", "-n", pod.netns, "route", "show", "table", "100"]), /local default dev lo/);
});

netnsTest("installRedirect() twice, or over a damaged set, leaves exactly one copy of every rule", async () => {
  await using cluster = await NetnsCluster.create("redirect-idem");
  const pod = await cluster.addPod(cluster.nodes[0]);
  await installRedirect(pod.netnsPath);
  const once = await saved(pod.netns);
  const once6 = await saved(pod.netns, "ip6tables-save");
  const rulesOnce = await must(["ip", "-n", pod.netns, "rule"]);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), once);
  assert.equal(await saved(pod.netns, "ip6tables-save"), once6);
  assert.equal(await must(["ip", "-n", pod.netns, "rule"]), rulesOnce);
  // Damage it: drop one rule, as an operator or another tool might.
  await must(["ip", "netns", "exec", pod.netns, "iptables", "-t", "mangle", "-D", "SKIFF_PRERT", "1"]);
  assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), /chain SKIFF_PRERT differs/);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), once);
  assert.deepEqual((await checkRedirect(pod.netnsPath)).problems, []);
  // The IPv6 drop likewise: its DROP deleted, then rewritten whole.
  await must(["ip", "netns", "exec", pod.netns, "ip6tables", "-t", "mangle", "-D", "SKIFF_PRERT", "2"]);
  assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), /IPv6: chain SKIFF_PRERT differs/);
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns, "ip6tables-save"), once6);
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
    [
      "the IPv6 drop's jump",
      ["ip6tables", "-t", "mangle", "-D", "PREROUTING", "-j", "SKIFF_PRERT"],
      /IPv6: PREROUTING jumps to SKIFF_PRERT 0 times/,
    ],
    [
      "the IPv6 drop's rules",
      ["ip6tables", "-t", "mangle", "-F", "SKIFF_OUTPUT"],
      /IPv6: chain SKIFF_OUTPUT differs: expected 2 rules, found 0/,
    ],
  ];
  for (const [name, cmd, want] of cases) {
    await t.step(name, async () => {
      await installRedirect(pod.netnsPath);
      await must(["ip", "netns", "exec", pod.netns, ...cmd]);
      assert.match((await checkRedirect(pod.netnsPath)).problems.join("; "), want);
    });
  }
  for (const [tool, label, chain] of [["iptables", "", "OUTPUT"], ["ip6tables", "IPv6: ", "PREROUTING"]] as const) {
    await t.step(`${label || "IPv4: "}a rule ahead of a jump (an ACCEPT there would skip the whole set)`, async () => {
      await installRedirect(pod.netnsPath);
      await must(["ip", "netns", "exec", pod.netns, tool, "-t", "mangle", "-I", chain, "1", "-j", "ACCEPT"]);
      const problems = (await checkRedirect(pod.netnsPath)).problems.join("; ");
      assert.ok(problems.includes(`${label}${chain} has 1 rule before its jump to SKIFF_`), problems);
      await installRedirect(pod.netnsPath);
      assert.deepEqual((await checkRedirect(pod.netnsPath)).problems, [], "install puts its jump first again");
      await must(["ip", "netns", "exec", pod.netns, tool, "-t", "mangle", "-D", chain, "-j", "ACCEPT"]);
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
  const pristine6 = await saved(pod.netns, "ip6tables-save");
  const pristineRules = await must(["ip", "-n", pod.netns, "rule"]);
  await installRedirect(pod.netnsPath);
  // A duplicated jump (say, from an older agent) goes too.
  await must(["ip", "netns", "exec", pod.netns, "iptables", "-t", "mangle", "-A", "OUTPUT", "-j", "SKIFF_OUTPUT"]);
  await must(["ip", "netns", "exec", pod.netns, "ip6tables", "-t", "mangle", "-A", "OUTPUT", "-j", "SKIFF_OUTPUT"]);
  await removeRedirect(pod.netnsPath);
  assert.equal(await saved(pod.netns), pristine);
  assert.equal(await saved(pod.netns, "ip6tables-save"), pristine6);
  assert.equal(await must(["ip", "-n", pod.netns, "rule"]), pristineRules);
  const table = await run(["ip", "-n", pod.netns, "route", "show", "table", "100"]);
  assert.equal(table.code === 0 ? table.stdout.trim() : "", "", "table 100 is empty or gone");
  await removeRedirect(pod.netnsPath);
  assert.ok((await checkRedirect(pod.netnsPath)).problems.length > 0);
});

netnsTest("the rule set touches only the pod's namespace, never the node's or the host's", async () => {
  const host = await must(["iptables-save", "-t", "mangle"]).catch(() => "");
  const host6 = await must(["ip6tables-save", "-t", "mangle"]).catch(() => "");
  const strip = (s: string) =>
    s.split("\n").filter((l) => !l.startsWith("#") && !/^:.* \[\d+:\d+\]$/.test(l)).join("\n");
  await using cluster = await NetnsCluster.create("redirect-scope");
  const node = cluster.nodes[0];
  const pod = await cluster.addPod(node);
  const nodeBefore = await saved(node.netns);
  const nodeBefore6 = await saved(node.netns, "ip6tables-save");
  await installRedirect(pod.netnsPath);
  assert.equal(await saved(node.netns), nodeBefore);
  assert.equal(await saved(node.netns, "ip6tables-save"), nodeBefore6);
  assert.equal(strip(await must(["iptables-save", "-t", "mangle"]).catch(() => "")), strip(host));
  assert.equal(strip(await must(["ip6tables-save", "-t", "mangle"]).catch(() => "")), strip(host6));
  await removeRedirect(pod.netnsPath);
});

netnsTest(
  "in a redirected pod all IPv6 but loopback is dropped both ways; removeRedirect lets it through",
  async (t) => {
    // The pod's node is its neighbour on the veth: both ends have fe80:: addresses whatever the CNI configured.
    await using cluster = await NetnsCluster.create("redirect-ipv6");
    const node = cluster.nodes[0];
    const pod = await cluster.addPod(node);
    const podLL = await linkLocal(pod.netns, "eth0");
    const nodeLL = await linkLocal(node.netns, pod.hostVeth);
    await using app = httpApp6(pod.netnsPath, 8086, "app");
    await using neighbour = httpApp6(netnsPath(node.netns), 8086, "neighbour");
    const inward = () => curl6(node.netns, podLL, pod.hostVeth, 8086, 2);
    const outward = () => curl6(pod.netns, nodeLL, "eth0", 8086, 2);

    await t.step("before: the neighbour reaches the app over link-local, and the app the neighbour", async () => {
      assert.deepEqual(await inward(), { code: 0, body: "app\n", stderr: "" });
      assert.deepEqual(await outward(), { code: 0, body: "neighbour\n", stderr: "" });
    });
    await t.step("redirected: neither way connects, nothing arrives; loopback still works", async () => {
      await installRedirect(pod.netnsPath);
      const [appSeen, neighbourSeen] = [app.peers.length, neighbour.peers.length];
      const inn = await inward();
      assert.notEqual(inn.code, 0, `the neighbour reached the app around ztunnel: ${JSON.stringify(inn)}`);
      const out = await outward();
      assert.notEqual(out.code, 0, `the app reached the neighbour uncaptured: ${JSON.stringify(out)}`);
      assert.equal(app.peers.length, appSeen);
      assert.equal(neighbour.peers.length, neighbourSeen);
      assert.deepEqual(await curl6(pod.netns, "::1", undefined, 8086), { code: 0, body: "app\n", stderr: "" });
    });
    await t.step("removed: both ways work again", async () => {
      await removeRedirect(pod.netnsPath);
      assert.deepEqual(await inward(), { code: 0, body: "app\n", stderr: "" });
      assert.deepEqual(await outward(), { code: 0, body: "neighbour\n", stderr: "" });
    });
  },
);
