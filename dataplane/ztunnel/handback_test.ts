/**
 * A pod released to a successor that then died is handed back (cni/handoff_server.ts) while its first drain still
 * runs: this ztunnel then holds two sets of the pod's connections. Both must be counted by the drain and ended by a
 * del, on the in-process tier (tests/harness/inprocess.ts).
 */

import assert from "node:assert/strict";
import type net from "node:net";
import { InProcessMesh } from "../../tests/harness/inprocess.ts";

/** Sends `message` on an open connection and waits for its echo. */
function echo(socket: net.Socket, message: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    const onData = (chunk: Uint8Array) => {
      got += new TextDecoder().decode(chunk);
      if (got.length >= message.length) {
        socket.off("data", onData);
        resolve(got);
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.write(message);
  });
}

Deno.test("in-process: released, handed back, released again: each drain counted, a del ends all", async () => {
  await using mesh = await InProcessMesh.create();
  const client = await mesh.pod("client", { node: "a" });
  const server = await mesh.pod("server", { node: "b" });
  await server.echo(8080);
  const a = mesh.ztunnel("a");
  const uid = client.workload.uid;
  const info = { name: "client", namespace: client.workload.namespace, serviceAccount: client.workload.serviceAccount };

  const first = await client.connect(server.addr(8080));
  // The app's end is half-open capable: ztunnel ending the connection shows as its end of stream.
  const closed = new Promise<void>((resolve) => (first.once("end", resolve), first.once("close", resolve)));
  first.on("error", () => {});
  assert.equal(await echo(first, "one"), "one");
  const open = a.pods.openConnections();
  assert.ok(open >= 1);

  await a.pods.release(uid); // a successor took the pod
  await a.pods.add(uid, info, client.ip); // it died: the agent hands the pod back
  const second = await client.connect(server.addr(8080));
  second.on("error", () => {});
  assert.equal(await echo(second, "two"), "two");
  await a.pods.release(uid); // the next successor takes it
  assert.equal(a.pods.openConnections(), open * 2, "both drains' connections are waited for");

  await a.pods.del(uid);
  await closed;
  assert.equal(a.pods.openConnections(), 0, "a del ends every drain of the pod");
  first.destroy();
  second.destroy();
});
