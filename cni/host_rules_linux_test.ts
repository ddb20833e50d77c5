import assert from "node:assert/strict";
import { hostChains, hostChains6, hostRestoreInput } from "./host_rules_linux.ts";

const billing = { cgroup: "system.slice/billing.service", address: "10.0.0.12", ports: [8080, 8081] };
const audit = { cgroup: "app.slice/audit.service", address: "10.0.0.13", ports: [9000] };

Deno.test("hostChains() captures each unit by its cgroup out and by its address and ports in", async (t) => {
  const cases: { name: string; units: (typeof billing)[]; local: string[]; out: string[]; inbound: string[] }[] = [
    { name: "no unit: the fixed rules only", units: [], local: [], out: [], inbound: [] },
    {
      name: "one unit",
      units: [billing],
      local: [
        `-A SKIFF_HOST_OUTPUT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 8080,8081 -m cgroup ! --path "system.slice/billing.service" -j DROP`,
      ],
      out: [
        `-A SKIFF_HOST_OUTPUT -p tcp -m cgroup --path "system.slice/billing.service" -m conntrack --ctdir ORIGINAL -j MARK --set-xmark 0x111/0xfff`,
      ],
      inbound: [
        "-A SKIFF_HOST_PRERT -d 10.0.0.12/32 -p tcp -m multiport --dports 8080,8081 -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
      ],
    },
    {
      name: "two units, sorted by cgroup whatever the order given",
      units: [billing, audit],
      local: [
        `-A SKIFF_HOST_OUTPUT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 9000 -m cgroup ! --path "app.slice/audit.service" -j DROP`,
        `-A SKIFF_HOST_OUTPUT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 8080,8081 -m cgroup ! --path "system.slice/billing.service" -j DROP`,
      ],
      out: [
        `-A SKIFF_HOST_OUTPUT -p tcp -m cgroup --path "app.slice/audit.service" -m conntrack --ctdir ORIGINAL -j MARK --set-xmark 0x111/0xfff`,
        `-A SKIFF_HOST_OUTPUT -p tcp -m cgroup --path "system.slice/billing.service" -m conntrack --ctdir ORIGINAL -j MARK --set-xmark 0x111/0xfff`,
      ],
      inbound: [
        "-A SKIFF_HOST_PRERT -d 10.0.0.13/32 -p tcp -m multiport --dports 9000 -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
        "-A SKIFF_HOST_PRERT -d 10.0.0.12/32 -p tcp -m multiport --dports 8080,8081 -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
      ],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const chains = hostChains(c.units);
      const fixed = hostChains([]);
      // The local callers' drops come after ztunnel's and the captured replies' RETURNs, before `-o lo`'s.
      const lo = fixed.SKIFF_HOST_OUTPUT.indexOf("-A SKIFF_HOST_OUTPUT -o lo -j RETURN");
      const [head, tail] = [fixed.SKIFF_HOST_OUTPUT.slice(0, lo), fixed.SKIFF_HOST_OUTPUT.slice(lo)];
      assert.deepEqual(chains.SKIFF_HOST_OUTPUT, [...head, ...c.local, ...tail, ...c.out]);
      assert.deepEqual(chains.SKIFF_HOST_PRERT, [...fixed.SKIFF_HOST_PRERT, ...c.inbound]);
    });
  }
});

Deno.test("hostChains() leaves ztunnel's own packets, lo and established flows alone before any capture", () => {
  const { SKIFF_HOST_OUTPUT: out, SKIFF_HOST_PRERT: pre } = hostChains([billing]);
  assert.equal(out[0], "-A SKIFF_HOST_OUTPUT -m mark --mark 0x539/0xfff -j RETURN");
  assert.ok(out.indexOf("-A SKIFF_HOST_OUTPUT -o lo -j RETURN") < out.findIndex((l) => l.includes("-j MARK")));
  // A node-local caller of the unit's ports is refused before `lo` would let it reach the unit uncaptured.
  assert.ok(out.findIndex((l) => l.includes("! --path")) < out.indexOf("-A SKIFF_HOST_OUTPUT -o lo -j RETURN"));
  const tproxyIn = pre.findIndex((l) => l.includes("--on-port 15006"));
  assert.ok(pre.indexOf("-A SKIFF_HOST_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN") < tproxyIn);
  // The capture ports are not reachable from the network: a caller there would have ztunnel speak as the unit.
  assert.ok(pre.some((l) => l.includes("--dst-type LOCAL -m multiport --dports 15001,15006 -j DROP")));
  // No --nowildcard: ztunnel's 0.0.0.0 listeners never take what the node forwards to its pods.
  assert.ok(!pre.some((l) => l.includes("--nowildcard")));
});

Deno.test("hostRestoreInput() declares every chain, so a rewrite is whole and atomic", () => {
  const input = hostRestoreInput([billing]);
  assert.ok(
    input.startsWith("*mangle\n:SKIFF_HOST_DIVERT - [0:0]\n:SKIFF_HOST_OUTPUT - [0:0]\n:SKIFF_HOST_PRERT - [0:0]\n"),
  );
  assert.ok(input.endsWith("COMMIT\n"));
});

Deno.test("hostChains6() drops a unit's IPv6 but loopback, out by its cgroup and in to its ports", () => {
  assert.deepEqual(hostChains6([billing]), {
    SKIFF_HOST_OUTPUT: [
      `-A SKIFF_HOST_OUTPUT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 8080,8081 -m cgroup ! --path "system.slice/billing.service" -j DROP`,
      "-A SKIFF_HOST_OUTPUT -o lo -j RETURN",
      `-A SKIFF_HOST_OUTPUT -m cgroup --path "system.slice/billing.service" -j DROP`,
    ],
    SKIFF_HOST_PRERT: [
      "-A SKIFF_HOST_PRERT -i lo -j RETURN",
      "-A SKIFF_HOST_PRERT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 8080,8081 -j DROP",
    ],
  });
});
