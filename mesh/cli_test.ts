/**
 * main.ts as an operator or a container runtime runs it: exit codes, usage on stderr, the not-built modes and
 * the CNI plugin's answers on stdout.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import denoJson from "../deno.json" with { type: "json" };
import { USAGE, VERSION } from "./cli.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

async function skiff(args: string[], env: Record<string, string> = {}) {
  // Whether skiff runs as the CNI plugin depends on CNI_COMMAND alone, so the test's own must not leak in.
  const inherited = Deno.env.toObject();
  for (const name of ["CNI_COMMAND", "LOG_LEVEL", "LOG_FORMAT"]) delete inherited[name];
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { ...inherited, RUST_BACKTRACE: "0", NO_COLOR: "1", LOG_FORMAT: "json", ...env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("VERSION is deno.json's version and USAGE names it", () => {
  assert.equal(VERSION, denoJson.version);
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
  assert.ok(USAGE.startsWith(`Skiff ${VERSION}:`));
});

Deno.test("skiff with no mode exits 2 with the usage on stderr", async () => {
  const { code, stdout, stderr } = await skiff([]);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  assert.ok(stderr.startsWith("skiff: no mode given\n"), stderr);
  assert.ok(stderr.includes("Usage: skiff <mode> [flags]"), stderr);
});

Deno.test("skiff with an unknown mode exits 2 and names it", async () => {
  const { code, stdout, stderr } = await skiff(["bogus"]);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  assert.ok(stderr.startsWith('skiff: unknown mode "bogus"\n'), stderr);
  assert.ok(stderr.includes("Usage: skiff <mode> [flags]"), stderr);
});

Deno.test("skiff with a mode named like an Object property is an unknown mode, not a crash", async () => {
  const { code, stderr } = await skiff(["toString"]);
  assert.equal(code, 2, stderr);
  assert.ok(stderr.startsWith('skiff: unknown mode "toString"\n'), stderr);
});

Deno.test("skiff with an unknown flag exits 2 and names it", async () => {
  const { code, stdout, stderr } = await skiff(["--bogus"]);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  assert.ok(stderr.startsWith("skiff: unknown flag --bogus\n"), stderr);
  assert.ok(stderr.includes("Usage: skiff <mode> [flags]"), stderr);
});

Deno.test("skiff version prints the version from deno.json and exits 0", async (t) => {
  for (const arg of ["version", "--version"]) {
    await t.step(arg, async () => {
      const { code, stdout, stderr } = await skiff([arg]);
      assert.equal(code, 0, stderr);
      assert.equal(stdout, `skiff ${denoJson.version} (deno ${Deno.version.deno})\n`);
    });
  }
});

Deno.test("skiff help prints the usage on stdout and exits 0", async (t) => {
  for (const arg of ["help", "--help", "-h"]) {
    await t.step(arg, async () => {
      const { code, stdout, stderr } = await skiff([arg]);
      assert.equal(code, 0, stderr);
      assert.equal(stdout, `${USAGE}\n`);
      assert.equal(stderr, "");
    });
  }
});

Deno.test("skiff demo with an unknown command exits 2 with its usage", async () => {
  const { code, stderr } = await skiff(["demo", "launch"]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /demo: unknown command "launch"/);
  assert.match(stderr, /skiff demo down/);
});

Deno.test("skiff control with an unreadable kubeconfig exits 2 naming the flag and the file, before anything starts", async () => {
  const { code, stdout, stderr } = await skiff(["control", "--kubeconfig=/nonexistent/kubeconfig"]);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  assert.match(stderr, /^skiff: control: --kubeconfig \/nonexistent\/kubeconfig: cannot read: /);
});

Deno.test("skiff waypoint without its name exits 2 naming the flag and its variable", async () => {
  const { code, stderr } = await skiff(["waypoint", "--namespace=shop"], { SKIFF_WAYPOINT_NAME: "" });
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--name is required \(SKIFF_WAYPOINT_NAME\)/);
});

Deno.test("skiff ztunnel without its config exits 2 naming the flag and its variable", async () => {
  const { code, stderr } = await skiff(["ztunnel"], { SKIFF_LOCAL_CONFIG: "", SKIFF_CA_DIR: "" });
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--local-config/);
  assert.match(stderr, /SKIFF_LOCAL_CONFIG/);
});

Deno.test("skiff cni-agent without a control plane exits 2 naming the flag and its variable", async () => {
  const { code, stderr } = await skiff(["cni-agent"], { SKIFF_CONTROL: "" });
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--control/);
  assert.match(stderr, /SKIFF_CONTROL/);
});

Deno.test("skiff started by a CNI runtime is the CNI plugin, whatever its arguments", async (t) => {
  for (const args of [[], ["control"]]) {
    await t.step(
      `${args.join(" ") || "no arguments"}: a missing variable is CNI error 4 on stdout, exit 1`,
      async () => {
        const { code, stdout, stderr } = await skiff(args, { CNI_COMMAND: "ADD" });
        assert.equal(code, 1, stderr);
        const result = JSON.parse(stdout);
        assert.equal(result.code, 4);
        assert.equal(result.cniVersion, "1.1.0");
        assert.match(result.msg, /CNI_CONTAINERID is not set/);
        assert.match(stderr, /^skiff cni plugin: CNI_CONTAINERID is not set/);
      },
    );
  }
  await t.step("VERSION lists the versions it speaks", async () => {
    const { code, stdout } = await skiff([], { CNI_COMMAND: "VERSION" });
    assert.equal(code, 0);
    assert.deepEqual(JSON.parse(stdout).supportedVersions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
  });
});
