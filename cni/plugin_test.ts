/**
 * The CNI plugin's decisions with its surroundings replaced (the agent, nsenter, the filesystem); the real
 * plugin, invoked as a runtime invokes it, is tested in tests/cni_test.ts.
 */
import assert from "node:assert/strict";
import { type AgentAnswer, cniPlugin, type PluginDeps } from "./plugin.ts";

const PREV = {
  cniVersion: "1.0.0",
  interfaces: [{ name: "cni0", mac: "aa" }, { name: "eth0", mac: "bb", sandbox: "/var/run/netns/p" }],
  ips: [{ interface: 1, address: "10.0.1.5/24", gateway: "10.0.1.1" }],
  dns: {},
};
const conf = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: "1.0.0", name: "net", type: "skiff", agentSocket: "/run/sk/cni.sock", ...extra });
const env = (command: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: "c1",
  CNI_NETNS: "/var/run/netns/p",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
  CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1",
  ...extra,
});

/** Fake surroundings: the agent answers with `answer` (or throws it), and everything done is recorded. */
function fakes(answer: AgentAnswer | Error = { status: 200, body: {} }, netnsExists = true) {
  const calls: { method: string; path: string; body: unknown }[] = [];
  const removed: string[] = [];
  const files: Record<string, string> = {};
  const deps: PluginDeps = {
    agent: (_socket, method, path, body) => {
      calls.push({ method, path, body });
      return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
    },
    removeRedirect: (netns) => {
      removed.push(netns);
      return Promise.resolve();
    },
    exists: () => Promise.resolve(netnsExists),
    writeFile: (path, text) => {
      files[path] = text;
      return Promise.resolve();
    },
  };
  return { deps, calls, removed, files };
}

const unreachable = Object.assign(new TypeError("client error (Connect): No such file or directory"), {});
const timeout = Object.assign(new Error("Signal timed out."), { name: "TimeoutError" });

Deno.test("ADD prints the previous result unchanged and tells the agent the pod with its addresses", async () => {
  const f = fakes({ status: 200, body: { redirected: true, reason: "namespace label" } });
  const out = await cniPlugin(env("ADD"), conf({ prevResult: PREV }), f.deps);
  assert.equal(out.exit, 0, out.stdout);
  assert.deepEqual(JSON.parse(out.stdout), PREV);
  assert.deepEqual(f.calls, [{
    method: "POST",
    path: "/v1/cni/add",
    body: {
      containerId: "c1",
      netns: "/var/run/netns/p",
      ifname: "eth0",
      podNamespace: "shop",
      podName: "web-1",
      podUid: "u-1",
      ips: ["10.0.1.5"],
    },
  }]);
});

Deno.test("ADD with the agent unreachable or silent is code 11 and prints no result: fail closed", async () => {
  for (const error of [unreachable, timeout]) {
    const f = fakes(error);
    const out = await cniPlugin(env("ADD"), conf({ prevResult: PREV }), f.deps);
    assert.equal(out.exit, 1);
    const e = JSON.parse(out.stdout);
    assert.equal(e.code, 11);
    assert.equal(e.cniVersion, "1.0.0");
    assert.match(e.msg, /the skiff node agent at \/run\/sk\/cni.sock (is not reachable|did not answer within 5 s)/);
    assert.match(e.msg, /ADD waits for it \(fail closed\)/);
    assert.equal(e.ips, undefined);
  }
});

Deno.test("ADD: the agent's refusal is the CNI error it carries", async () => {
  const f = fakes({ status: 500, body: { code: 100, msg: "the in-pod rules could not be installed", details: "x" } });
  const out = await cniPlugin(env("ADD"), conf({ prevResult: PREV }), f.deps);
  assert.equal(out.exit, 1);
  assert.deepEqual(JSON.parse(out.stdout), {
    cniVersion: "1.0.0",
    code: 100,
    msg: "the in-pod rules could not be installed",
    details: "x",
  });
});

Deno.test("ADD without K8S args, or in an excluded namespace, passes through without asking the agent", async () => {
  for (
    const [e, c] of [
      [env("ADD", { CNI_ARGS: "" }), conf({ prevResult: PREV })],
      [env("ADD"), conf({ prevResult: PREV, excludeNamespaces: ["shop"] })],
    ] as const
  ) {
    const f = fakes(unreachable);
    const out = await cniPlugin(e, c, f.deps);
    assert.equal(out.exit, 0);
    assert.deepEqual(JSON.parse(out.stdout), PREV);
    assert.equal(f.calls.length, 0);
  }
});

Deno.test("ADD: the pod's namespace is the runtime's, else the configuration's (podman passes none)", async (t) => {
  const podman = "IgnoreUnknown=1;K8S_POD_NAME=web-1";
  for (
    const [name, args, extra, want] of [
      ["podman: the configuration's namespace", podman, { namespace: "shop" }, "shop"],
      ["Kubernetes: the runtime's wins", "K8S_POD_NAMESPACE=kube;K8S_POD_NAME=web-1", { namespace: "shop" }, "kube"],
      [
        "an empty K8S_POD_NAMESPACE is none given",
        "K8S_POD_NAMESPACE=;K8S_POD_NAME=web-1",
        { namespace: "shop" },
        "shop",
      ],
      ["podman with no namespace configured: passed through", podman, {}, undefined],
      ["no K8S_POD_NAME: passed through", "IgnoreUnknown=1", { namespace: "shop" }, undefined],
      ["the configuration's namespace excluded: passed through", podman, {
        namespace: "shop",
        excludeNamespaces: ["shop"],
      }, undefined],
    ] as const
  ) {
    await t.step(name, async () => {
      const f = fakes({ status: 200, body: { redirected: true, reason: "" } });
      const out = await cniPlugin(env("ADD", { CNI_ARGS: args }), conf({ prevResult: PREV, ...extra }), f.deps);
      assert.equal(out.exit, 0, out.stdout);
      assert.deepEqual(JSON.parse(out.stdout), PREV);
      const sent = f.calls.map((c) => (c.body as { podNamespace: string; podName: string }));
      if (want === undefined) assert.deepEqual(sent, []);
      else assert.deepEqual(sent.map((b) => [b.podNamespace, b.podName]), [[want, "web-1"]]);
    });
  }
});

Deno.test("ADD without prevResult: skiff must be chained (code 7)", async () => {
  const out = await cniPlugin(env("ADD"), conf(), fakes().deps);
  assert.equal(JSON.parse(out.stdout).code, 7);
  assert.match(JSON.parse(out.stdout).msg, /chained plugin/);
});

Deno.test("DEL with the agent away removes the rules itself and leaves the agent a note; exit 0", async () => {
  const f = fakes(unreachable);
  const out = await cniPlugin(env("DEL"), conf({ prevResult: PREV }), f.deps);
  assert.equal(out.exit, 0, out.stdout);
  assert.equal(out.stdout, "");
  assert.deepEqual(f.removed, ["/var/run/netns/p"]);
  assert.deepEqual(Object.keys(f.files), ["/run/sk/deleted/c1"]);
  assert.equal(JSON.parse(f.files["/run/sk/deleted/c1"]).podName, "web-1");

  const gone = fakes(unreachable, false);
  assert.equal((await cniPlugin(env("DEL"), conf(), gone.deps)).exit, 0);
  assert.deepEqual(gone.removed, [], "no namespace, nothing to remove");
  const noNetns = fakes(unreachable);
  assert.equal((await cniPlugin(env("DEL", { CNI_NETNS: "" }), conf(), noNetns.deps)).exit, 0);
  assert.deepEqual(noNetns.removed, []);
});

Deno.test("DEL ends in success even when the agent fails and undoing it ourselves fails too", async () => {
  const f = fakes({ status: 500, body: { code: 5, msg: "the node agent failed: disk full" } });
  f.deps.removeRedirect = () => Promise.reject(new Error("nsenter: exit 1"));
  f.deps.writeFile = () => Promise.reject(new Error("read-only file system"));
  const out = await cniPlugin(env("DEL"), conf(), f.deps);
  assert.equal(out.exit, 0);
  assert.equal(out.stdout, "");
  assert.match(out.stderr, /disk full.*could not remove the pod's rules: nsenter.*could not leave a note/);
});

Deno.test("DEL with the agent up is the agent's; it needs no K8S args", async () => {
  const f = fakes();
  assert.equal((await cniPlugin(env("DEL", { CNI_ARGS: "" }), conf(), f.deps)).exit, 0);
  assert.deepEqual(f.calls.map((c) => c.path), ["/v1/cni/del"]);
});

Deno.test("CHECK: from 0.4.0, needs prevResult, asks the agent; the agent away is 11", async () => {
  const old = await cniPlugin(env("CHECK"), conf({ cniVersion: "0.3.1", prevResult: PREV }), fakes().deps);
  assert.equal(JSON.parse(old.stdout).code, 1);
  assert.equal(JSON.parse((await cniPlugin(env("CHECK"), conf(), fakes().deps)).stdout).code, 7);
  const f = fakes();
  assert.equal((await cniPlugin(env("CHECK"), conf({ prevResult: PREV }), f.deps)).exit, 0);
  assert.deepEqual(f.calls.map((c) => c.path), ["/v1/cni/check"]);
  const away = await cniPlugin(env("CHECK"), conf({ prevResult: PREV }), fakes(unreachable).deps);
  assert.equal(JSON.parse(away.stdout).code, 11);
});

Deno.test("VERSION answers even with a configuration it cannot use", async () => {
  const out = await cniPlugin({ CNI_COMMAND: "VERSION" }, "not json", fakes().deps);
  assert.equal(out.exit, 0);
  assert.deepEqual(JSON.parse(out.stdout), {
    cniVersion: "1.1.0",
    supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
  });
});

Deno.test("STATUS (1.1): ready only when the agent says so; otherwise 50 with its reason", async () => {
  const v11 = conf({ cniVersion: "1.1.0" });
  const statusEnv = { CNI_COMMAND: "STATUS", CNI_PATH: "/opt/cni/bin" };
  assert.equal((await cniPlugin(statusEnv, v11, fakes({ status: 200, body: { ready: true } }).deps)).exit, 0);
  const notReady = await cniPlugin(
    statusEnv,
    v11,
    fakes({ status: 200, body: { ready: false, reason: "no ztunnel" } }).deps,
  );
  assert.equal(JSON.parse(notReady.stdout).code, 50);
  assert.match(JSON.parse(notReady.stdout).msg, /not ready: no ztunnel/);
  assert.equal(JSON.parse((await cniPlugin(statusEnv, v11, fakes(unreachable).deps)).stdout).code, 50);
  assert.equal(JSON.parse((await cniPlugin(statusEnv, conf(), fakes().deps)).stdout).code, 1, "STATUS needs 1.1.0");
});

Deno.test("GC (1.1) without its list of valid attachments is refused (7), never taken as none valid", async () => {
  const f = fakes();
  const out = await cniPlugin({ CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" }, conf({ cniVersion: "1.1.0" }), f.deps);
  assert.equal(JSON.parse(out.stdout).code, 7);
  assert.equal(f.calls.length, 0);
});

Deno.test("GC (1.1) hands the agent the valid attachments", async () => {
  const f = fakes({ status: 200, body: { dropped: 1 } });
  const out = await cniPlugin(
    { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
    conf({ cniVersion: "1.1.0", "cni.dev/valid-attachments": [{ containerID: "c2", ifname: "eth0" }] }),
    f.deps,
  );
  assert.equal(out.exit, 0, out.stdout);
  assert.deepEqual(f.calls[0].body, { validAttachments: [{ containerId: "c2", ifname: "eth0" }] });
});

Deno.test("the plugin loads no npm package and no control-plane code (it runs once per pod event)", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("./plugin.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: { specifier: string }[] };
  const specifiers = graph.modules.map((m) => m.specifier);
  assert.ok(specifiers.some((s) => s.endsWith("/cni/plugin.ts")));
  assert.deepEqual(specifiers.filter((s) => !s.startsWith("file:") && !s.startsWith("node:")), []);
  assert.deepEqual(specifiers.filter((s) => /\/(control|dataplane|certs)\//.test(s)), []);
});
