/**
 * The systemd units of `install.sh --systemd control|node`: `systemd-analyze verify` accepts each one without a
 * single warning (it exits 0 on unknown keys and bad values, so silence is what is checked), and the installer
 * stages them with their settings files under a root of the test's own (`SKIFF_SYSTEMD_ROOT`), never
 * overwriting a settings file an operator changed. systemd does not run these machines (no PID 1), so starting
 * the units is not tested here; the units run `/usr/local/bin/skiff`, which `install.sh` makes.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_DRAIN_DEADLINE_MS } from "../dataplane/ztunnel/drain.ts";

const DEPLOY = new URL("../deploy/systemd/", import.meta.url).pathname;
const INSTALL = new URL("../install.sh", import.meta.url).pathname;
const UNITS = ["skiff-control.service", "skiff-cni-agent.service", "skiff-ztunnel.service", "skiff-waypoint@.service"];

async function run(cmd: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), env, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("each unit passes systemd-analyze verify without a warning", async (t) => {
  for (const unit of UNITS) {
    await t.step(unit, async () => {
      const r = await run(["systemd-analyze", "verify", join(DEPLOY, unit)]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(`${r.stdout}${r.stderr}`.trim(), "", "systemd-analyze printed warnings");
    });
  }
});

Deno.test("each unit bounds its capabilities to what its role needs", async () => {
  const caps = async (unit: string) =>
    (await Deno.readTextFile(join(DEPLOY, unit))).match(/^CapabilityBoundingSet=(.*)$/m)?.[1].trim();
  assert.equal(await caps("skiff-control.service"), "");
  assert.equal(await caps("skiff-waypoint@.service"), "");
  assert.equal(await caps("skiff-ztunnel.service"), "CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE");
  assert.equal(await caps("skiff-cni-agent.service"), "CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN CAP_SYS_PTRACE");
});

Deno.test("the ztunnel unit reloads by SIGHUP (a successor that takes over as main pid) and waits out the drain", async () => {
  const unit = await Deno.readTextFile(join(DEPLOY, "skiff-ztunnel.service"));
  const key = (k: string) => unit.match(new RegExp(`^${k}=(.*)$`, "m"))?.[1].trim();
  assert.equal(
    key("ExecReload"),
    "/bin/kill -HUP $MAINPID",
    "SIGHUP starts the successor (dataplane/ztunnel/drain.ts)",
  );
  assert.equal(key("NotifyAccess"), "all", "the successor, not the main process, sends MAINPID=");
  const stop = Number(key("TimeoutStopSec")?.replace(/s$/, ""));
  assert.ok(stop > DEFAULT_DRAIN_DEADLINE_MS / 1000, `TimeoutStopSec=${stop}s leaves the drain deadline time to pass`);
  assert.equal(key("ProtectKernelTunables"), undefined, "it sets tcp_migrate_req in each pod's namespace");
});

Deno.test("install-units.sh stages a role's units and settings, and never overwrites a settings file", async () => {
  const root = await Deno.makeTempDir({ prefix: "skiff-systemd-" });
  try {
    const env = { SKIFF_SYSTEMD_ROOT: root };
    const node = await run(["bash", join(DEPLOY, "install-units.sh"), "node"], env);
    assert.equal(node.code, 0, node.stderr);
    for (const u of ["skiff-cni-agent.service", "skiff-ztunnel.service", "skiff-waypoint@.service"]) {
      assert.equal(
        await Deno.readTextFile(join(root, "etc/systemd/system", u)),
        await Deno.readTextFile(join(DEPLOY, u)),
      );
    }
    const nodeEnv = join(root, "etc/skiff/node.env");
    assert.match(await Deno.readTextFile(nodeEnv), /^SKIFF_CONTROL=$/m);
    await Deno.writeTextFile(nodeEnv, "SKIFF_CONTROL=https://10.0.0.1:15012\n");
    const again = await run(["bash", join(DEPLOY, "install-units.sh"), "node"], env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await Deno.readTextFile(nodeEnv), "SKIFF_CONTROL=https://10.0.0.1:15012\n");
    assert.match(again.stdout, /kept .*node\.env/);

    const control = await run(["bash", join(DEPLOY, "install-units.sh"), "control"], env);
    assert.equal(control.code, 0, control.stderr);
    assert.match(
      await Deno.readTextFile(join(root, "etc/skiff/control.env")),
      /^SKIFF_MANIFESTS=\/etc\/skiff\/manifests$/m,
    );
    assert.ok((await Deno.stat(join(root, "etc/skiff/manifests"))).isDirectory);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install.sh --systemd with an unknown role stops before doing anything, naming the roles", async () => {
  const r = await run(["bash", INSTALL, "--systemd", "ztunnel"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /unknown role "ztunnel" \(control or node\)/);
});

Deno.test("the meshed unit drop-in (skiff-mesh.conf) passes systemd-analyze verify on a unit, and gates its start", async () => {
  const dropIn = await Deno.readTextFile(join(DEPLOY, "skiff-mesh.conf"));
  // "+": as root whatever the unit's User= (the agent's socket is root's), still in the unit's cgroup.
  assert.deepEqual([...dropIn.matchAll(/^ExecStartPre=(.*)$/gm)].map((m) => m[1]), [
    "+/usr/local/bin/skiff unit-gate",
  ]);
  const dir = await Deno.makeTempDir({ prefix: "skiff-dropin-" });
  try {
    // A unit as an operator has it (an unprivileged user), with the drop-in where systemd reads it.
    await Deno.writeTextFile(
      join(dir, "billing.service"),
      "[Unit]\nDescription=billing\n\n[Service]\nExecStart=/bin/sleep infinity\nDynamicUser=yes\n",
    );
    await Deno.mkdir(join(dir, "billing.service.d"));
    const verify = async (text: string) => {
      await Deno.writeTextFile(join(dir, "billing.service.d", "skiff-mesh.conf"), text);
      return await run(["systemd-analyze", "verify", join(dir, "billing.service")]);
    };
    const r = await verify(dropIn);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), "", "systemd-analyze printed warnings");
    // verify reads the drop-in: a key it does not know is reported.
    const broken = await verify(dropIn.replace(/^ExecStartPre=/m, "ExecStartPree="));
    assert.match(`${broken.stdout}${broken.stderr}`, /skiff-mesh\.conf:\d+: Unknown key 'ExecStartPree'/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
