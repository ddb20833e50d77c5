/**
 * A smoke of what is built, for the README's first command until `skiff demo` exists: two nodes in network
 * namespaces, a client pod and a server pod enrolled in the mesh, one real ztunnel per node, one call over HBONE
 * with both SPIFFE identities shown from the access logs, then a DENY policy that stops the client. Everything it
 * made is removed at the end, also on failure. Needs root. Exits non-zero if any step does not hold.
 */

import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { IS_ROOT, NetnsCluster } from "./harness/netns.ts";
import { call } from "./harness/tcp.ts";
import { echoApp, hboneWorkload, meshDir, ZtunnelProcess } from "./harness/ztunnel.ts";

if (!IS_ROOT) {
  console.error("smoke_ztunnel: run as root (it builds network namespaces)");
  Deno.exit(2);
}
loadSocketSupport();

let failed = false;
const say = (ok: boolean, what: string) => {
  console.log(`${ok ? "ok  " : "FAIL"}  ${what}`);
  if (!ok) failed = true;
};

{
  await using cluster = await NetnsCluster.create("smoke", { nodes: 2 });
  const [a, b] = cluster.nodes;
  const client = await cluster.addPod(a, "client");
  const server = await cluster.addPod(b, "server");
  console.log(`cluster: ${a.name} with pod client ${client.address}, ${b.name} with pod server ${server.address}`);
  for (const p of [client, server]) await installRedirect(p.netnsPath);
  await using mesh = await meshDir();
  const config = (deny: boolean) =>
    `workloads:
${[client, server].map((p) => hboneWorkload(p, "default")).join("\n")}
policies:${
      deny
        ? `
  - name: deny-client
    namespace: default
    scope: NAMESPACE
    action: DENY
    rules: [{ clauses: [{ matches: [{ principals: [{ exact: cluster.local/ns/default/sa/client }] }] }] }]`
        : " []"
    }
`;
  await Deno.writeTextFile(mesh.configFile, config(false));
  await using _app = echoApp(server, 8080);
  const app = _app;
  await using za = await ZtunnelProcess.start(a.name, mesh);
  await using zb = await ZtunnelProcess.start(b.name, mesh);
  await za.enroll(client, "default");
  await zb.enroll(server, "default");
  console.log("ztunnels started on both nodes; pods enrolled (in-pod TPROXY rules, listeners on 15001/15006/15008)");

  const reply = await call(client.netnsPath, server.address, 8080, "hello");
  say(reply === "server:hello", `client → ${server.address}:8080 answered ${JSON.stringify(reply)}`);
  say(app.peers.at(-1) === client.address, `the server app saw the client's own address ${app.peers.at(-1)}`);
  const out = await za.waitForLog((l) => l.msg === "connection complete" && l.direction === "outbound");
  const inb = await zb.waitForLog((l) => l.msg === "connection complete" && l.direction === "inbound");
  say(
    out["dst.identity"] === "spiffe://cluster.local/ns/default/sa/server",
    `client's ztunnel: outbound over HBONE to ${out["dst.addr"]}, server identity ${out["dst.identity"]}`,
  );
  say(
    inb["src.identity"] === "spiffe://cluster.local/ns/default/sa/client",
    `server's ztunnel: inbound from ${inb["src.addr"]}, client identity ${inb["src.identity"]} (mTLS verified)`,
  );

  await Deno.writeTextFile(mesh.configFile, config(true));
  await zb.waitForLog((l) => l.msg === "local config reloaded");
  const denied = await call(client.netnsPath, server.address, 8080, "again");
  say(denied !== "server:again", `with a DENY policy for the client, the call got ${denied}`);
}
console.log(failed ? "smoke failed" : "smoke passed; namespaces, links and processes removed");
Deno.exit(failed ? 1 : 0);
