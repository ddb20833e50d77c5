/**
 * ztunnel's DNS proxy end to end, in network namespaces: a real `skiff ztunnel` (the test plays the node agent),
 * the in-pod rules of cni/redirect_linux.ts, and real resolver clients inside an enrolled pod (`dig` from Debian's
 * dnsutils, glibc's `getent`, `curl`). The pod's resolv.conf (bind-mounted by `ip netns exec` from
 * /etc/netns/NAME/resolv.conf) names a fake resolver on the node, which the pod could reach directly; ztunnel's
 * `--dns-resolv-conf` names the same fake on the host's loopback, where ztunnel forwards from. So the fake's log
 * tells a forwarded query (from ztunnel, at "host") from one that leaked around it (from the pod, at "node").
 *
 * Skipped locally without root or dig, failing in CI without them (install.sh --dev installs dnsutils).
 */

import assert from "node:assert/strict";
import { checkRedirect, installRedirect, removeRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { netnsPath } from "../mesh/netns_linux.ts";
import { runIn } from "./harness/apps.ts";
import { FakeResolver } from "./harness/dns.ts";
import { IN_CI, IS_ROOT, must, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { listenIn } from "./harness/tcp.ts";
import { meshDir, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const HAVE_DIG = (() => {
  try {
    return new Deno.Command("dig", { args: ["-v"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
})();
if (!HAVE_DIG && IN_CI) throw new Error("tests/dns_test.ts: dig is missing (apt-get install dnsutils)");

const NS = "shop";
const VIP = "10.96.0.53";
const WEB = `web.${NS}.svc.cluster.local`;
/** The fake resolver's address on the host's loopback, where ztunnel forwards (its own namespace). */
const HOST_RESOLVER = "127.0.53.53";
const BIG = Array.from({ length: 60 }, (_, i) => `192.0.2.${i + 1}`);

function workload(p: Pod, opts: { captured: boolean; endpoint?: boolean }) {
  const services = opts.endpoint ? `\n    services: { "${NS}/${WEB}": [{ servicePort: 80, targetPort: 8080 }] }` : "";
  return `  - uid: Kubernetes//Pod/${NS}/${p.name}
    name: ${p.name}
    namespace: ${NS}
    serviceAccount: ${p.name}
    node: ${p.node.name}
    addresses: [${p.address}]
    tunnelProtocol: ${opts.captured ? "HBONE" : "NONE"}${services}`;
}

/** An HTTP/1.1 app answering every request `200 <name>` and closing. */
function httpApp(pod: Pod, port: number) {
  const listener = listenIn(pod.netnsPath, "0.0.0.0", port);
  const loop = (async () => {
    for await (const conn of listener) {
      try {
        await conn.read(new Uint8Array(4096));
        const body = `hello from ${pod.name}\n`;
        await conn.write(
          new TextEncoder().encode(
            `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
          ),
        );
      } catch { /* reset */ }
      conn.close();
    }
  })().catch(() => {});
  return {
    async [Symbol.asyncDispose]() {
      listener.close();
      await loop;
    },
  };
}

/** `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` mounts over /etc/resolv.conf; removed on dispose. */
async function podResolvConf(pod: Pod, text: string) {
  const dir = `/etc/netns/${pod.netns}`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/resolv.conf`, text);
  return {
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

interface Dig {
  code: number;
  status?: string;
  flags: string[];
  answers: { name: string; ttl: number; type: string; data: string }[];
  out: string;
}

/** Runs dig inside `pod` against its resolv.conf; one try, `time` seconds. */
async function dig(pod: Pod, args: string[], time = 3): Promise<Dig> {
  const r = await runIn(pod, ["dig", "+tries=1", `+time=${time}`, ...args], 30_000);
  const out = r.stdout + r.stderr;
  const status = /status: (\w+)/.exec(out)?.[1];
  const flags = /;; flags: ([a-z ]+);/.exec(out)?.[1].trim().split(" ") ?? [];
  const answers: Dig["answers"] = [];
  const section = /;; ANSWER SECTION:\n([\s\S]*?)\n\n/.exec(out)?.[1] ?? "";
  for (const line of section.split("\n").filter(Boolean)) {
    const [name, ttl, _in, type, data] = line.split(/\s+/);
    answers.push({ name, ttl: Number(ttl), type, data });
  }
  return { code: r.code, status, flags, answers, out };
}

netnsTest(
  "dns: ztunnel answers mesh names in the pod, forwards the rest, and a stopped proxy leaks nothing",
  async (t) => {
    if (!HAVE_DIG) {
      console.warn("dig is missing (apt-get install dnsutils): skipped");
      return;
    }
    await using cluster = await NetnsCluster.create("dns");
    const [node] = cluster.nodes;
    const client = await cluster.addPod(node, "client");
    const web = await cluster.addPod(node, "web");
    const plain = await cluster.addPod(node, "plain");
    for (const p of [client, web]) await installRedirect(p.netnsPath);

    // The node's resolver, reachable from the pods at their gateway, and from ztunnel (the host's namespace).
    await using resolver = FakeResolver.start([
      { label: "node", netns: netnsPath(node.netns), host: node.gateway, port: 53 },
      { label: "host", host: HOST_RESOLVER, port: 53 },
    ], { "example.test": ["192.0.2.7"], "tcp.example.test": ["192.0.2.8"], "big.test": BIG });
    const fromPod = (p: Pod) => resolver.at("node").filter((q) => q.from === p.address);
    await using _clientConf = await podResolvConf(client, `nameserver ${node.gateway}\noptions timeout:2 attempts:1\n`);
    await using _plainConf = await podResolvConf(plain, `nameserver ${node.gateway}\noptions timeout:2 attempts:1\n`);

    await using mesh = await meshDir();
    await Deno.writeTextFile(
      mesh.configFile,
      `workloads:
${workload(client, { captured: true })}
${workload(web, { captured: true, endpoint: true })}
${workload(plain, { captured: false })}
services:
  - name: web
    namespace: ${NS}
    hostname: ${WEB}
    addresses: [{ address: ${VIP} }]
    ports: [{ port: 80, targetPort: 8080 }]
`,
    );
    const ztResolvConf = `${mesh.dir}/resolv.conf`;
    await Deno.writeTextFile(ztResolvConf, `nameserver ${HOST_RESOLVER}\n`);
    await using _app = httpApp(web, 8080);

    const zt = await ZtunnelProcess.start("dns", mesh, { SKIFF_DNS_RESOLV_CONF: ztResolvConf });
    let ztRunning = true;
    try {
      for (const p of [client, web]) {
        const answer = await zt.add(`Kubernetes//Pod/${NS}/${p.name}`, p, {
          name: p.name,
          namespace: NS,
          serviceAccount: p.name,
        });
        assert.deepEqual(answer, { type: "ack" }, p.name);
      }
      assert.deepEqual(await zt.snapshotSent(), { type: "ack" });

      await t.step(
        "the fake resolver is reachable from a pod directly (so no query at it means none leaked)",
        async () => {
          const r = await dig(plain, ["example.test"]);
          assert.equal(r.status, "NOERROR", r.out);
          assert.deepEqual(r.answers.map((a) => a.data), ["192.0.2.7"]);
          assert.equal(fromPod(plain).length, 1);
          assert.equal((await dig(plain, [WEB])).status, "NXDOMAIN", "the node's resolver knows no mesh names");
        },
      );

      await t.step("the in-pod rules hold the DNS capture", async () => {
        assert.deepEqual((await checkRedirect(client.netnsPath)).problems, []);
        const nat = await must(["ip", "netns", "exec", client.netns, "iptables-save", "-t", "nat"]);
        assert.match(nat, /-A OUTPUT -j SKIFF_DNS/);
        assert.match(nat, /-A SKIFF_DNS ! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053/);
      });

      await t.step("a mesh service name answers its VIP, in each form, from the caller's namespace", async () => {
        for (const name of [WEB, `web.${NS}`, `web.${NS}.svc`, "web", "WEB.Shop.svc.Cluster.Local"]) {
          const r = await dig(client, [name]);
          assert.equal(r.status, "NOERROR", `${name}: ${r.out}`);
          assert.ok(r.flags.includes("aa"), `${name}: authoritative`);
          assert.deepEqual(r.answers, [{ name: `${name}.`, ttl: 30, type: "A", data: VIP }], name);
        }
        const aaaa = await dig(client, ["AAAA", WEB]);
        assert.equal(aaaa.status, "NOERROR", "AAAA for a mesh name: the name exists");
        assert.deepEqual(aaaa.answers, [], "and has no IPv6 address");
        assert.equal(fromPod(client).length, 0, "none went to the node's resolver");
        assert.equal(resolver.at("host").length, 0, "none was forwarded");
      });

      await t.step("another name is forwarded to the node's resolver from ztunnel, never from the pod", async () => {
        const r = await dig(client, ["example.test"]);
        assert.equal(r.status, "NOERROR", r.out);
        assert.deepEqual(r.answers.map((a) => a.data), ["192.0.2.7"]);
        assert.ok(!r.flags.includes("aa"), "ztunnel is no authority for it");
        assert.deepEqual(resolver.at("host").map((q) => [q.name, q.transport]), [["example.test", "udp"]]);
        assert.equal((await dig(client, ["nothing.test"])).status, "NXDOMAIN");
        assert.equal(fromPod(client).length, 0);
      });

      await t.step("dig +tcp: mesh names and forwarded names over TCP", async () => {
        const mesh = await dig(client, ["+tcp", WEB]);
        assert.deepEqual(mesh.answers.map((a) => a.data), [VIP], mesh.out);
        const fwd = await dig(client, ["+tcp", "tcp.example.test"]);
        assert.deepEqual(fwd.answers.map((a) => a.data), ["192.0.2.8"], fwd.out);
        assert.ok(resolver.at("host").some((q) => q.name === "tcp.example.test" && q.transport === "tcp"));
        assert.equal(fromPod(client).length, 0);
      });

      await t.step("a large answer: truncated over UDP, and dig's retry over TCP gets it whole", async () => {
        const r = await dig(client, ["+noedns", "big.test"]);
        assert.match(r.out, /Truncated, retrying in TCP mode/);
        assert.equal(r.answers.length, BIG.length, r.out);
      });

      await t.step("getent hosts (glibc's resolver, the pod's resolv.conf) finds the service", async () => {
        const r = await runIn(client, ["getent", "ahostsv4", WEB], 30_000);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, new RegExp(`^${VIP.replaceAll(".", "\\.")}\\s`));
      });

      await t.step("curl by name goes through the mesh to the service's endpoint", async () => {
        const r = await runIn(client, ["curl", "-sS", "--max-time", "10", `http://${WEB}/`], 30_000);
        assert.equal(r.stdout, "hello from web\n", r.stderr);
        const log = await zt.waitForLog((l) =>
          l.msg === "connection complete" && l.direction === "outbound" && l["dst.hbone_addr"] === `${web.address}:8080`
        );
        assert.equal(log["src.addr"]?.toString().split(":")[0], client.address);
      });

      await t.step("ztunnel stopped: queries fail, and the node's resolver sees nothing from the pod", async () => {
        const forwarded = resolver.at("host").length;
        await zt[Symbol.asyncDispose]();
        ztRunning = false;
        for (const args of [["example.test"], ["+tcp", "example.test"], [WEB]]) {
          const r = await dig(client, args, 2);
          assert.notEqual(r.code, 0, `${args.join(" ")}: dig failed: ${r.out}`);
          assert.equal(r.answers.length, 0, r.out);
        }
        assert.equal(fromPod(client).length, 0, "nothing leaked around the stopped proxy");
        assert.equal(resolver.at("host").length, forwarded);
        assert.deepEqual((await checkRedirect(client.netnsPath)).problems, [], "the capture stays in place");
      });

      await t.step(
        "removeRedirect() takes the DNS capture out with the rest: the pod asks its resolver itself",
        async () => {
          await removeRedirect(client.netnsPath);
          const nat = await must(["ip", "netns", "exec", client.netns, "iptables-save", "-t", "nat"]);
          assert.doesNotMatch(nat, /SKIFF_DNS/);
          const r = await dig(client, ["example.test"]);
          assert.deepEqual(r.answers.map((a) => a.data), ["192.0.2.7"], r.out);
          assert.equal(fromPod(client).length, 1, "now straight from the pod");
        },
      );
    } finally {
      if (ztRunning) await zt[Symbol.asyncDispose]();
    }
  },
);
