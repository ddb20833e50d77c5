/**
 * In-pod capture end to end, with the real rule set (cni/redirect_linux.ts) and listeners made as ztunnel
 * makes them (dataplane/sockets_linux.ts: IP_TRANSPARENT, mark 0x539) in a pod on one node, talking to a pod
 * on another: the app's outbound connections land on 15001 with the original destination as the local
 * address; inbound connections land on 15006 with the pod's own address and port; 15008, loopback and the
 * app's own pod IP are not captured; and with the rules removed traffic flows directly again.
 */
import assert from "node:assert/strict";
import net from "node:net";
import {
  checkRedirect,
  INBOUND_PLAINTEXT_PORT,
  INPOD_MARK,
  installRedirect,
  OUTBOUND_PORT,
  removeRedirect,
} from "../cni/redirect_linux.ts";
import { loadSocketSupport, transparentConnect, transparentListenerFd } from "../dataplane/sockets_linux.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { dialFrom, listenIn, readN } from "./harness/tcp.ts";

if (IS_ROOT) loadSocketSupport();

interface Captured {
  local: string;
  remote: string;
  received: string;
}

/** A node:net server on a transparent, marked listener in `pod`, answering each connection with "ack:". */
async function captureListener(pod: Pod, port: number) {
  const fd = transparentListenerFd({
    netnsPath: pod.netnsPath,
    address: "0.0.0.0",
    port,
    transparent: true,
    mark: INPOD_MARK,
  });
  const seen: Captured[] = [];
  const waiters: ((c: Captured) => void)[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.once("data", (d) => {
      const c = {
        local: `${sock.localAddress}:${sock.localPort}`,
        remote: sock.remoteAddress!,
        received: d.toString(),
      };
      seen.push(c);
      sock.end(`ack:${d}`);
      waiters.shift()?.(c);
    });
  });
  await new Promise<void>((resolve, reject) => server.listen({ fd }, resolve).once("error", reject));
  return {
    seen,
    next: () => new Promise<Captured>((resolve) => waiters.push(resolve)),
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Dials from `from` and sends `message`, returning the reply. */
async function talk(from: Pod, ip: string, port: number, message: string): Promise<string> {
  using conn = await dialFrom(from.netnsPath, ip, port);
  await conn.write(new TextEncoder().encode(message));
  return new TextDecoder().decode(await readN(conn, 64));
}

netnsTest("captured pod: outbound lands on 15001 with the original destination, inbound on 15006", async (t) => {
  await using cluster = await NetnsCluster.create("capture", { nodes: 2 });
  const app = await cluster.addPod(cluster.nodes[0], "app");
  const peer = await cluster.addPod(cluster.nodes[1], "peer");
  await installRedirect(app.netnsPath);
  assert.deepEqual((await checkRedirect(app.netnsPath)).problems, []);
  await using outbound = await captureListener(app, OUTBOUND_PORT);
  await using inbound = await captureListener(app, INBOUND_PLAINTEXT_PORT);

  await t.step("outbound to a pod on another node reaches 15001, local address = where the app dialled", async () => {
    const got = outbound.next();
    assert.equal(await talk(app, peer.address, 8080, "out"), "ack:out");
    assert.deepEqual(await got, { local: `${peer.address}:8080`, remote: app.address, received: "out" });
  });
  await t.step("outbound to an address that exists nowhere is captured the same way", async () => {
    const got = outbound.next();
    assert.equal(await talk(app, "10.99.0.7", 443, "vip"), "ack:vip");
    assert.equal((await got).local, "10.99.0.7:443");
  });
  await t.step("inbound from the other node reaches 15006 with the pod's address and the client's", async () => {
    const got = inbound.next();
    assert.equal(await talk(peer, app.address, 9090, "in"), "ack:in");
    assert.deepEqual(await got, { local: `${app.address}:9090`, remote: peer.address, received: "in" });
  });
  await t.step("inbound to 15008 is not captured", async () => {
    using hbone = listenIn(app.netnsPath, "0.0.0.0", 15008);
    const accepted = hbone.accept();
    using _conn = await dialFrom(peer.netnsPath, app.address, 15008);
    using server = await accepted;
    assert.equal((server.localAddr as Deno.NetAddr).port, 15008);
  });
  await t.step("loopback and the app's own pod IP are not captured", async () => {
    for (const ip of ["127.0.0.1", app.address]) {
      using own = listenIn(app.netnsPath, ip, 7000);
      const accepted = own.accept();
      using _conn = await dialFrom(app.netnsPath, ip, 7000);
      using server = await accepted;
      assert.equal((server.localAddr as Deno.NetAddr).port, 7000, ip);
    }
  });
  const before = outbound.seen.length + inbound.seen.length;

  await t.step("with the rules removed, traffic flows directly again", async () => {
    await removeRedirect(app.netnsPath);
    using direct = listenIn(peer.netnsPath, peer.address, 8080);
    const accepted = direct.accept();
    using conn = await dialFrom(app.netnsPath, peer.address, 8080);
    using server = await accepted;
    await conn.write(new TextEncoder().encode("direct"));
    assert.equal(new TextDecoder().decode(await readN(server, 6)), "direct");
    assert.equal(outbound.seen.length + inbound.seen.length, before, "ztunnel's listeners saw nothing");
  });
});

netnsTest(
  "ztunnel dials the app from the client's own address, and the app's replies come back to ztunnel",
  async (t) => {
    await using cluster = await NetnsCluster.create("spoof", { nodes: 2 });
    const app = await cluster.addPod(cluster.nodes[0], "app");
    const client = await cluster.addPod(cluster.nodes[1], "client");
    using appListener = listenIn(app.netnsPath, "0.0.0.0", 8080);

    const dialAsClient = async () => {
      const accepted = appListener.accept();
      const fd = await transparentConnect({
        netnsPath: app.netnsPath,
        source: client.address,
        target: { ip: app.address, port: 8080 },
        mark: INPOD_MARK,
      });
      const sock = new net.Socket({ fd, readable: true, writable: true });
      const appConn = await accepted;
      return { sock, appConn };
    };

    await t.step("with the rules, the app sees the client's address and its reply reaches ztunnel", async () => {
      await installRedirect(app.netnsPath);
      const { sock, appConn } = await dialAsClient();
      try {
        assert.equal((appConn.remoteAddr as Deno.NetAddr).hostname, client.address);
        const reply = new Promise<string>((resolve) => sock.once("data", (d) => resolve(d.toString())));
        sock.write("hello app");
        assert.equal(new TextDecoder().decode(await readN(appConn, 9)), "hello app");
        await appConn.write(new TextEncoder().encode("hello client"));
        assert.equal(await reply, "hello client");
      } finally {
        appConn.close();
        sock.destroy();
      }
    });

    await t.step(
      "without the rules the app's answer never returns, and the dial times out instead of hanging",
      async () => {
        await removeRedirect(app.netnsPath);
        await assert.rejects(
          transparentConnect({
            netnsPath: app.netnsPath,
            source: client.address,
            target: { ip: app.address, port: 8080 },
            mark: INPOD_MARK,
            timeoutMs: 500,
          }),
          (err: Error & { errno?: number }) => err.errno === 110 && /timed out/.test(err.message),
        );
      },
    );

    await t.step("a refused connection fails with its errno", async () => {
      await installRedirect(app.netnsPath);
      await assert.rejects(
        transparentConnect({
          netnsPath: app.netnsPath,
          source: client.address,
          target: { ip: app.address, port: 8081 },
          mark: INPOD_MARK,
        }),
        (err: Error & { errno?: number }) => err.errno === 111,
      );
    });
  },
);
