/**
 * The node agent's units with their hands replaced by recorders (rules, cgroups, ztunnel); the real thing, with
 * real rules, cgroups, ztunnels and control plane, is tested in tests/host_unit_test.ts.
 */
import assert from "node:assert/strict";
import pino from "pino";
import type { NodeUnit } from "../mesh/protocol/node_pods.ts";
import { gateTarget, HostUnits, planUnits, type UnitRecord, unitUid } from "./host_units.ts";

const unit = (name: string, address = "10.0.0.12", sa = name, cgroup = `system.slice/${name}.service`): NodeUnit => ({
  namespace: "shop",
  name,
  serviceAccount: sa,
  unit: `${name}.service`,
  cgroup,
  address,
  ports: [8080],
});

Deno.test("planUnits() meshes one unit per node, and says why not the others", async (t) => {
  const cases: { name: string; units: NodeUnit[]; accepted: string[]; refused: [string, RegExp][] }[] = [
    { name: "one unit on the node's address", units: [unit("billing")], accepted: ["billing"], refused: [] },
    {
      name: "an address that is not the node's",
      units: [unit("billing", "10.9.9.9")],
      accepted: [],
      refused: [["billing", /address 10\.9\.9\.9 is not one of this node's \(10\.0\.0\.12, 10\.0\.0\.13\)/]],
    },
    {
      name: "a second identity on one address: refused, naming both",
      units: [unit("worker", "10.0.0.12", "worker"), unit("billing", "10.0.0.12", "billing")],
      accepted: ["billing"],
      refused: [[
        "worker",
        /WorkloadEntry shop\/worker \(unit worker\.service, service account shop\/worker\) has address 10\.0\.0\.12, as WorkloadEntry shop\/billing \(unit billing\.service, service account shop\/billing\) has: one unit per node/,
      ]],
    },
    {
      name: "a second unit on another address: its listeners would share the first's",
      units: [unit("billing"), unit("audit", "10.0.0.13")],
      accepted: ["audit"],
      refused: [["billing", /shop\/billing .* is on this node beside WorkloadEntry shop\/audit .*: one unit per node/]],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const plan = planUnits(c.units, ["10.0.0.12", "10.0.0.13"]);
      assert.deepEqual(plan.accepted.map((u) => u.name), c.accepted);
      assert.equal(plan.refused.length, c.refused.length);
      for (const [i, [name, reason]] of c.refused.entries()) {
        assert.equal(plan.refused[i].unit.name, name);
        assert.match(plan.refused[i].reason, reason);
      }
    });
  }
});

/** Units whose every action is written to `log` in order. */
function harness(opts: { ztunnel?: boolean; failRules?: boolean } = {}) {
  const log: string[] = [];
  const dirs = new Map<string, number>([["/cg/system.slice/billing.service", 7]]);
  let next = 100;
  const state = { ztunnel: opts.ztunnel ?? true, failRules: opts.failRules ?? false };
  const units = new HostUnits({
    log: pino({ level: "silent" }),
    netns: "/proc/1/ns/net",
    cgroupRoot: "/cg",
    rules: {
      install: (us) => {
        log.push(`rules ${us.map((u) => u.cgroup).join(",")}`);
        return state.failRules ? Promise.reject(new Error("iptables-restore: exit 1")) : Promise.resolve();
      },
      remove: () => {
        log.push("rules removed");
        return Promise.resolve();
      },
    },
    localAddresses: () => Promise.resolve(["10.0.0.12", "10.0.0.13"]),
    inode: (dir) => Promise.resolve(dirs.get(dir)),
    mkdir: (dir) => {
      log.push(`mkdir ${dir}`);
      dirs.set(dir, next++);
      return Promise.resolve();
    },
    rmdir: (dir) => {
      log.push(`rmdir ${dir}`);
      dirs.delete(dir);
      return Promise.resolve();
    },
    handoff: {
      add: (pod) => {
        log.push(`add ${pod.uid} ${pod.workload.serviceAccount} ${pod.netns}`);
        return state.ztunnel ? Promise.resolve() : Promise.reject(new Error("no ztunnel is connected"));
      },
      del: (uid) => {
        log.push(`del ${uid}`);
        return Promise.resolve();
      },
    },
  });
  return { units, log, dirs, state };
}

Deno.test("HostUnits: rules first, then ztunnel; a unit not started yet gets its cgroup made first", async () => {
  const { units, log } = harness();
  await units.sync([unit("audit", "10.0.0.13")]);
  assert.deepEqual(log, [
    "mkdir /cg/system.slice/audit.service",
    "rules system.slice/audit.service",
    "add unit/shop/audit audit /proc/1/ns/net",
  ]);
  assert.deepEqual(units.records().map((r) => [r.name, r.state]), [["audit", "redirected"]]);
  log.length = 0;
  await units.sync([unit("audit", "10.0.0.13")]);
  assert.deepEqual(log, [], "the same view again changes nothing");
});

Deno.test("HostUnits: with no ztunnel the unit is pending behind its rules, and taken at the next sync", async () => {
  const { units, log, state } = harness({ ztunnel: false });
  await units.sync([unit("billing")]);
  assert.deepEqual(log, ["rules system.slice/billing.service", "add unit/shop/billing billing /proc/1/ns/net"]);
  assert.equal(units.records()[0].state, "pending");
  assert.deepEqual(units.snapshot().map((p) => p.uid), ["unit/shop/billing"], "a new ztunnel's snapshot has it");
  state.ztunnel = true;
  await units.sync([unit("billing")]);
  assert.equal(units.records()[0].state, "redirected");
});

Deno.test("HostUnits: rules that cannot be written leave the unit pending, never handed over", async () => {
  const { units, log } = harness({ failRules: true });
  await assert.rejects(units.sync([unit("billing")]), /iptables-restore/);
  assert.deepEqual(log, ["rules system.slice/billing.service"]);
  assert.equal(units.records()[0].state, "pending");
  assert.deepEqual(units.snapshot(), []);
});

Deno.test("HostUnits: a cgroup made anew (the unit restarted) or removed gets the rules written again", async () => {
  const { units, log, dirs } = harness();
  await units.sync([unit("billing")]);
  log.length = 0;
  await units.watch();
  assert.deepEqual(log, [], "nothing changed");
  dirs.set("/cg/system.slice/billing.service", 8); // removed and made again by the unit's manager
  await units.watch();
  assert.deepEqual(log, ["rules system.slice/billing.service"]);
  log.length = 0;
  dirs.delete("/cg/system.slice/billing.service"); // the unit stopped
  await units.watch();
  assert.deepEqual(log, ["mkdir /cg/system.slice/billing.service", "rules system.slice/billing.service"]);
});

Deno.test("HostUnits: a unit leaving loses ztunnel, its rules, and the cgroup the agent made", async () => {
  const { units, log } = harness();
  await units.sync([unit("audit", "10.0.0.13")]);
  log.length = 0;
  await units.sync([]);
  assert.deepEqual(log, ["del unit/shop/audit", "rules removed", "rmdir /cg/system.slice/audit.service"]);
  assert.deepEqual(units.records(), []);
});

Deno.test("HostUnits: a new service account drops the unit from ztunnel first, so it takes the new identity", async () => {
  const { units, log } = harness();
  await units.sync([unit("billing")]);
  log.length = 0;
  await units.sync([unit("billing", "10.0.0.12", "billing-v2")]);
  assert.deepEqual(log, ["del unit/shop/billing", "add unit/shop/billing billing-v2 /proc/1/ns/net"]);
});

Deno.test("HostUnits: the first sync with no unit clears what an earlier run left; later ones do nothing", async () => {
  const { units, log } = harness();
  await units.sync([]);
  await units.sync([]);
  assert.deepEqual(log, ["rules removed"]);
  assert.equal(unitUid({ namespace: "shop", name: "billing" }), "unit/shop/billing");
});

Deno.test("HostUnits: a refused unit gets no rule and no listener; it is meshed once the first one leaves", async () => {
  const { units, log } = harness();
  await units.sync([unit("billing"), unit("worker", "10.0.0.12", "worker")]);
  assert.deepEqual(log, ["rules system.slice/billing.service", "add unit/shop/billing billing /proc/1/ns/net"]);
  assert.deepEqual(units.records().map((r) => [r.name, r.state]), [["billing", "redirected"], ["worker", "refused"]]);
  assert.deepEqual(units.snapshot().map((p) => p.uid), ["unit/shop/billing"]);
  log.length = 0;
  await units.sync([unit("worker", "10.0.0.12", "worker")]);
  assert.deepEqual(log, [
    "del unit/shop/billing",
    "mkdir /cg/system.slice/worker.service",
    "rules system.slice/worker.service",
    "add unit/shop/worker worker /proc/1/ns/net",
  ]);
});

Deno.test("gateTarget() answers only for the view's units: their cgroup or below it", async (t) => {
  const records: UnitRecord[] = [
    { ...unit("billing"), state: "redirected", reason: "" },
    { ...unit("worker", "10.0.0.12", "worker", "work.slice/worker.service"), state: "refused", reason: "one per node" },
  ];
  const cases: { name: string; cgroup: string; kind: string; match?: RegExp }[] = [
    { name: "the unit's cgroup", cgroup: "system.slice/billing.service", kind: "unit" },
    { name: "with the leading slash /proc prints", cgroup: "/system.slice/billing.service", kind: "unit" },
    { name: "systemd's control group (Delegate=yes)", cgroup: "system.slice/billing.service/.control", kind: "unit" },
    {
      name: "another unit's",
      cgroup: "system.slice/sshd.service",
      kind: "unknown",
      match:
        /cgroup "system\.slice\/sshd\.service" is not a meshed unit's on node n1 \(meshed: system\.slice\/billing\.service\)/,
    },
    { name: "a name that only starts alike", cgroup: "system.slice/billing.service2", kind: "unknown" },
    { name: "the slice above", cgroup: "system.slice", kind: "unknown" },
    {
      name: "a refused unit's: its reason",
      cgroup: "work.slice/worker.service",
      kind: "refused",
      match: /one per node/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const target = gateTarget(records, c.cgroup, "n1");
      assert.equal(target.kind, c.kind);
      if (target.kind === "unit") assert.equal(target.record.name, "billing");
      else if (c.match) assert.match(target.reason, c.match);
    });
  }
});

Deno.test("HostUnits.gate(): a new cgroup gets the rules written for it before the yes; the same one, none", async () => {
  const { units, log, dirs } = harness();
  await units.sync([unit("billing")]);
  log.length = 0;
  const same = await units.gate("/system.slice/billing.service", [unit("billing")], "n1");
  assert.deepEqual(log, [], "rules already hold this cgroup");
  assert.equal(same.inode, 7);
  dirs.set("/cg/system.slice/billing.service", 9); // systemd made it anew for the unit's start
  const answer = await units.gate("/system.slice/billing.service", [unit("billing")], "n1");
  assert.deepEqual(log, ["rules system.slice/billing.service"]);
  assert.deepEqual(answer, {
    entry: "shop/billing",
    unit: "billing.service",
    cgroup: "system.slice/billing.service",
    inode: 9,
  });
  log.length = 0;
  await units.watch();
  assert.deepEqual(log, [], "the watch finds the rules current");
});

Deno.test("HostUnits.gate(): refuses what is not meshed at once, and waits (503) while ztunnel has not the unit", async () => {
  const { units, state } = harness({ ztunnel: false });
  await units.sync([unit("billing")]);
  await assert.rejects(
    units.gate("system.slice/other.service", [unit("billing")], "n1"),
    (e: Error & { code?: number }) => e.code === 50 && /not a meshed unit's on node n1/.test(e.message),
  );
  await assert.rejects(
    units.gate("system.slice/billing.service", [unit("billing")], "n1"),
    (e: Error & { code?: number }) =>
      e.code === 11 && /billing\.service: rules in place, ztunnel not reached/.test(e.message),
  );
  state.ztunnel = true;
  assert.equal((await units.gate("system.slice/billing.service", [unit("billing")], "n1")).inode, 7);
});
