/**
 * The agent's handoff server against ztunnel's real handoff client (dataplane/ztunnel/handoff_client.ts), over a
 * unix socket: the snapshot on connect, adds to the newest ztunnel, dels to all, refusals and timeouts.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import pino from "pino";
import { type PodHandler, runHandoffClient } from "../dataplane/ztunnel/handoff_client.ts";
import { HandoffError, type HandoffPod, HandoffServer } from "../cni/handoff_server.ts";

const log = pino({ level: "silent" });
const pod = (uid: string): HandoffPod => ({
  uid,
  workload: { name: uid, namespace: "shop", serviceAccount: "web" },
  netns: `/var/run/netns/${uid}`,
});

/** A ztunnel stand-in: the real client with a recording handler. */
function ztunnel(path: string, refuse = new Set<string>()) {
  const events: string[] = [];
  const handler: PodHandler = {
    add: (uid) => {
      if (refuse.has(uid)) return Promise.reject(new Error(`cannot serve ${uid}`));
      events.push(`add ${uid}`);
      return Promise.resolve();
    },
    del: (uid) => {
      events.push(`del ${uid}`);
      return Promise.resolve();
    },
    release: (uid) => {
      events.push(`release ${uid}`);
      return Promise.resolve();
    },
    reconcile: (keep) => {
      events.push(`keep ${[...keep].sort().join(",")}`);
      return Promise.resolve();
    },
  };
  const controller = new AbortController();
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  const running = runHandoffClient({ socketPath: path, handler, signal: controller.signal, onReady: ready });
  return {
    events,
    isReady,
    async stop() {
      controller.abort();
      await running;
    },
  };
}

async function withServer(
  pods: HandoffPod[],
  fn: (s: HandoffServer, path: string, acked: Set<string>[]) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-handoff-" });
  const path = join(dir, "ztunnel.sock");
  const acked: Set<string>[] = [];
  const server = new HandoffServer({
    socketPath: path,
    log,
    snapshot: async (send) => {
      acked.push(await send(pods));
    },
  });
  try {
    await fn(server, path, acked);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const until = async (ok: () => boolean) => {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ok());
};

Deno.test("a ztunnel that connects gets the snapshot, answers each pod, then takes adds and dels", async () => {
  await withServer([pod("a"), pod("b")], async (server, path, acked) => {
    const z = ztunnel(path, new Set(["b"]));
    await z.isReady;
    assert.deepEqual(z.events, ["add a", "keep a"]);
    await until(() => server.ready === 1);
    assert.deepEqual(acked, [new Set(["a"])], "the refused pod is not acknowledged");
    await server.add(pod("c"));
    await server.del("a");
    assert.deepEqual(z.events.slice(2), ["add c", "del a"]);
    await assert.rejects(server.add(pod("b")), (e) => e instanceof HandoffError && /cannot serve b/.test(e.message));
    await z.stop();
    await until(() => server.ready === 0);
    await assert.rejects(server.add(pod("d")), /no ztunnel is connected/);
  });
});

Deno.test("adds go to the newest ztunnel, dels to every one; older ones release what the newest took", async () => {
  await withServer([pod("a"), pod("b")], async (server, path, acked) => {
    const old = ztunnel(path);
    await old.isReady;
    await until(() => server.ready === 1);
    const fresh = ztunnel(path);
    await fresh.isReady;
    await until(() => server.ready === 2);
    // Each pod is released by the old one right after the new one acknowledged it, before the new one is ready.
    assert.deepEqual(old.events, ["add a", "add b", "keep a,b", "release a", "release b"]);
    await server.add(pod("n"));
    await server.del("a");
    assert.deepEqual(old.events.slice(5), ["del a"]);
    assert.deepEqual(fresh.events, ["add a", "add b", "keep a,b", "add n", "del a"]);
    assert.equal(acked.length, 2);
    await old.stop();
    await fresh.stop();
  });
});

Deno.test("a client that never says hello is dropped; one that does not answer in time is disconnected", async () => {
  await withServer([], async (server, path) => {
    const silent = await Deno.connect({ transport: "unix", path });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.ready, 0);
    silent.close();
    // A peer that says hello and takes the snapshot's end but then never answers an add.
    const conn = await Deno.connect({ transport: "unix", path });
    await conn.write(new TextEncoder().encode('{"type":"hello","version":1}\n'));
    const buf = new Uint8Array(1024);
    const n = await conn.read(buf);
    assert.match(new TextDecoder().decode(buf.subarray(0, n!)), /snapshot-sent/);
    await conn.write(new TextEncoder().encode('{"type":"ack"}\n'));
    await until(() => server.ready === 1);
    await assert.rejects(server.add(pod("x")), /did not answer add within 5000 ms/);
    await until(() => server.ready === 0);
    conn.close();
  });
});

Deno.test("a ztunnel that refuses the snapshot or answers garbage is disconnected, so it reconnects afresh", async () => {
  await withServer([], async (server, path) => {
    for (const answer of ['{"type":"nack","reason":"busy"}\n', "not json\n"]) {
      const conn = await Deno.connect({ transport: "unix", path });
      await conn.write(new TextEncoder().encode('{"type":"hello","version":1}\n'));
      const buf = new Uint8Array(1024);
      const n = await conn.read(buf);
      assert.match(new TextDecoder().decode(buf.subarray(0, n!)), /snapshot-sent/);
      await conn.write(new TextEncoder().encode(answer));
      assert.equal(await conn.read(buf), null, "the agent closed the connection");
      assert.equal(server.ready, 0);
      conn.close();
    }
  });
});

Deno.test("a successor that dies mid-handoff: the pods it took go back to the ztunnel still connected", async () => {
  await withServer([pod("a"), pod("b")], async (server, path) => {
    const old = ztunnel(path);
    await old.isReady;
    await until(() => server.ready === 1);
    // The successor acknowledges the first pod (so the old one releases it), then crashes before the second.
    const successor = await Deno.connect({ transport: "unix", path });
    await successor.write(new TextEncoder().encode('{"type":"hello","version":1}\n'));
    const buf = new Uint8Array(1024);
    const n = await successor.read(buf);
    assert.match(new TextDecoder().decode(buf.subarray(0, n!)), /"type":"add","uid":"a"/);
    await successor.write(new TextEncoder().encode('{"type":"ack"}\n'));
    await until(() => old.events.includes("release a"));
    successor.close();
    // Pod a is served by no one unless the agent hands it back; pod b was never released.
    await until(() =>
      old.events.includes("add a") && old.events.lastIndexOf("add a") > old.events.indexOf("release a")
    );
    assert.deepEqual(old.events.slice(3), ["release a", "add a"]);
    await server.del("a");
    assert.deepEqual(old.events.slice(5), ["del a"]);
    await old.stop();
  });
});
