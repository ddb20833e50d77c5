/**
 * The handoff client against a scripted node agent (a unix listener the test drives, so that malformed and
 * out-of-order messages can be sent); tests/handoff_test.ts runs it against the real agent's server.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { HandoffMessage, PodInfo } from "../../mesh/protocol/handoff.ts";
import { AgentConn } from "../../tests/harness/agent.ts";
import { type PodHandler, runHandoffClient } from "./handoff_client.ts";

const WEB: PodInfo = { name: "web-1", namespace: "shop", serviceAccount: "web" };
const add = (uid: string, netns = `/var/run/netns/${uid}`) =>
  ({ type: "add", uid, workload: WEB, netns }) as HandoffMessage;

/** A recording pod handler; `failAdd` makes add() throw for that uid. */
function recorder(failAdd = new Set<string>()) {
  const events: string[] = [];
  const handler: PodHandler = {
    add: (uid, w, netns) => {
      if (failAdd.has(uid)) return Promise.reject(new Error(`cannot open ${netns}`));
      events.push(`add ${uid} ${w.namespace}/${w.serviceAccount}`);
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
      events.push(`reconcile ${[...keep].sort().join(",")}`);
      return Promise.resolve();
    },
  };
  return { events, handler };
}

async function withAgent(
  fn: (
    ctx: { listener: Deno.UnixListener; path: string; start: (h: PodHandler) => { ready: Promise<void> } },
  ) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-handoff-" });
  const path = join(dir, "ztunnel.sock");
  const listener = Deno.listen({ transport: "unix", path });
  const ac = new AbortController();
  let client: Promise<void> | undefined;
  try {
    await fn({
      listener,
      path,
      start: (handler) => {
        let ready!: () => void;
        const p = new Promise<void>((r) => (ready = r));
        client = runHandoffClient({ socketPath: path, handler, signal: ac.signal, onReady: ready });
        return { ready: p };
      },
    });
  } finally {
    ac.abort();
    await client;
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("handoff client: hello, snapshot with reconcile, then add, release and del, each acked", async () => {
  await withAgent(async ({ listener, start }) => {
    const { events, handler } = recorder();
    const { ready } = start(handler);
    const agent = new AgentConn(await listener.accept());
    try {
      assert.deepEqual(await agent.receive(), { type: "hello", version: 1 });
      assert.deepEqual(await agent.send(add("a")), { type: "ack" });
      assert.deepEqual(await agent.send({ type: "keep", uid: "b" }), { type: "ack" });
      assert.deepEqual(await agent.send({ type: "snapshot-sent" }), { type: "ack" });
      await ready;
      assert.deepEqual(await agent.send(add("c")), { type: "ack" });
      assert.deepEqual(await agent.send({ type: "del", uid: "a" }), { type: "ack" });
      assert.deepEqual(await agent.send({ type: "release", uid: "c" }), { type: "ack" });
      assert.deepEqual(events, ["add a shop/web", "reconcile a,b", "add c shop/web", "del a", "release c"]);
    } finally {
      agent.close();
    }
  });
});

Deno.test("handoff client: refusals are nacks with a reason, and the connection carries on", async (t) => {
  await withAgent(async ({ listener, start }) => {
    const { events, handler } = recorder(new Set(["broken"]));
    start(handler);
    const agent = new AgentConn(await listener.accept());
    try {
      await agent.receive();
      const nack = async (msg: HandoffMessage | string, reason: RegExp) => {
        const r = await agent.send(msg);
        assert.equal(r.type, "nack");
        assert.match(r.type === "nack" ? r.reason : "", reason);
      };
      await t.step("a handler failure", () => nack(add("broken"), /cannot open \/var\/run\/netns\/broken/));
      await t.step(
        "a malformed message names its field",
        () => nack(`{"type":"add","uid":"x"}\n`, /message\.workload/),
      );
      await t.step("not JSON", () => nack("hello there\n", /not JSON/));
      await t.step("an ack from the agent", () => nack({ type: "ack" }, /unexpected ack/));
      await t.step("keep after the snapshot", async () => {
        assert.deepEqual(await agent.send({ type: "snapshot-sent" }), { type: "ack" });
        await nack({ type: "keep", uid: "a" }, /only valid in a snapshot/);
      });
      await t.step("a second snapshot-sent", () => nack({ type: "snapshot-sent" }, /already received/));
      assert.deepEqual(await agent.send(add("ok")), { type: "ack" }, "still serving after refusals");
      assert.deepEqual(events, ["reconcile ", "add ok shop/web"], "a failed add is not in the snapshot");
    } finally {
      agent.close();
    }
  });
});

Deno.test("handoff client: reconnects when the agent goes away and takes a fresh snapshot", async () => {
  await withAgent(async ({ listener, start }) => {
    const { events, handler } = recorder();
    start(handler);
    const first = new AgentConn(await listener.accept());
    await first.receive();
    assert.deepEqual(await first.send(add("a")), { type: "ack" });
    first.close();
    const second = new AgentConn(await listener.accept());
    try {
      assert.deepEqual(await second.receive(), { type: "hello", version: 1 }, "a new hello on the new connection");
      assert.deepEqual(await second.send({ type: "snapshot-sent" }), { type: "ack" });
      assert.deepEqual(events, ["add a shop/web", "reconcile "], "a pod not in the new snapshot is dropped");
    } finally {
      second.close();
    }
  });
});
