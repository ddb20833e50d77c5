import assert from "node:assert/strict";
import { decodeUnitGateRequest } from "../mesh/protocol/cni.ts";
import { cgroupV2Path, gateStep } from "./unit_gate.ts";

Deno.test("cgroupV2Path() reads the cgroup v2 line of /proc/self/cgroup", async (t) => {
  const cases: [string, string, string | undefined][] = [
    ["unified", "0::/system.slice/billing.service\n", "system.slice/billing.service"],
    [
      "hybrid (v1 lines first)",
      "12:pids:/system.slice/a.service\n1:name=systemd:/x\n0::/system.slice/a.service\n",
      "system.slice/a.service",
    ],
    ["Delegate=yes control group", "0::/system.slice/a.service/.control\n", "system.slice/a.service/.control"],
    ["the root", "0::/\n", undefined],
    ["v1 only", "1:name=systemd:/system.slice/a.service\n", undefined],
  ];
  for (const [name, text, want] of cases) await t.step(name, () => assert.equal(cgroupV2Path(text), want));
});

Deno.test("gateStep() opens on the agent's yes, waits on try again later, refuses on anything else", async (t) => {
  const yes = { entry: "shop/billing", unit: "billing.service", cgroup: "system.slice/billing.service", inode: 9 };
  const cases: [string, { status: number; body: unknown }, string, RegExp?][] = [
    ["yes", { status: 200, body: yes }, "open"],
    [
      "no ztunnel yet",
      { status: 503, body: { code: 11, msg: "unit gate: no ztunnel is connected" } },
      "retry",
      /no ztunnel/,
    ],
    [
      "not a meshed unit",
      { status: 500, body: { code: 50, msg: "unit gate: cgroup x is not" } },
      "refused",
      /agent refused: unit gate: cgroup x/,
    ],
    [
      "an old agent without the endpoint",
      { status: 404, body: { code: 4, msg: "no such endpoint" } },
      "refused",
      /no such endpoint/,
    ],
    ["a 200 that is no answer", { status: 200, body: {} }, "refused"],
  ];
  for (const [name, answer, kind, match] of cases) {
    await t.step(name, () => {
      const step = gateStep(answer);
      assert.equal(step.kind, kind);
      if (match && step.kind !== "open") assert.match(step.reason, match);
    });
  }
});

Deno.test("decodeUnitGateRequest() takes a cgroup path and nothing that walks out of one", async (t) => {
  assert.deepEqual(decodeUnitGateRequest({ cgroup: "/system.slice/a.service" }), { cgroup: "/system.slice/a.service" });
  for (
    const bad of [{}, { cgroup: "" }, { cgroup: "system.slice/../x.service" }, { cgroup: "a//b" }, { cgroup: 3 }, {
      cgroup: "a.service",
      extra: 1,
    }]
  ) {
    await t.step(JSON.stringify(bad), () => assert.throws(() => decodeUnitGateRequest(bad)));
  }
});
