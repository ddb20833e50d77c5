/**
 * The worker pool with real Deno Workers (testdata/pool_worker.ts): order of messages and calls, asks answered
 * while a call runs, and each way a worker dies (an uncaught error, closing itself, hanging, an init that fails)
 * ending in a log line and a restart with the state of the moment.
 */
import assert from "node:assert/strict";
import pino from "pino";
import { until } from "../../tests/harness/assert.ts";
import { WorkerPool } from "./workers.ts";

const MODULE = new URL("./testdata/pool_worker.ts", import.meta.url);

function capture() {
  const lines: Record<string, unknown>[] = [];
  return { log: pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s)) }), lines };
}

function pool(count: number, init: (i: number) => unknown = () => ({ order: [] }), callTimeoutMs?: number) {
  const { log, lines } = capture();
  const started: number[] = [];
  const p = new WorkerPool({
    module: MODULE,
    count,
    role: "test",
    log,
    init,
    onMessage: (i, body) => {
      if ((body as { started?: number }).started !== undefined) started.push(i);
    },
    heartbeatMs: 100,
    deadAfterMs: 600,
    callTimeoutMs,
  });
  return { p, lines, started };
}

Deno.test("workers start with their init, take messages in order, run calls one at a time and answer asks at once", async () => {
  const { p, started } = pool(2);
  try {
    await until("both workers started", () => started.length === 2, 20_000);
    assert.deepEqual(started.sort(), [1, 2]);
    for (let i = 0; i < 5; i++) p.broadcast({ note: i });
    const slow = p.callAll({ sleepMs: 300, label: "slow" });
    const asked = await p.askAll({});
    assert.deepEqual(
      (asked as { index: number; seen: number }[]).sort((a, b) => a.index - b.index),
      [{ index: 1, seen: 5 }, { index: 2, seen: 5 }],
      "messages before the ask were delivered; the ask did not wait for the slow call",
    );
    await slow;
    await until("both statuses", () => p.statuses().length === 2, 5_000);
  } finally {
    p.close();
  }
});

for (const die of ["throw", "close", "hang"] as const) {
  Deno.test(`a worker that dies (${die}) is logged and started again with the state of the moment`, async () => {
    let generation = 0;
    const { p, lines, started } = pool(1, () => ({ order: [`gen-${generation++}`] }));
    try {
      await until("the worker started", () => started.length === 1, 20_000);
      p.broadcast({ die });
      await until("the worker restarted", () => started.length === 2, 20_000);
      assert.equal(p.restarts, 1);
      const died = lines.filter((l) => String(l.msg).includes("worker died"));
      assert.equal(died.length, 1, JSON.stringify(lines));
      assert.equal(died[0].worker, 1);
      assert.match(String(died[0].reason), die === "throw" ? /uncaught error/ : /no answer for/);
      assert.equal(generation, 2, "the restarted worker got a fresh init");
      const asked = await p.askAll({});
      assert.deepEqual(asked, [{ index: 1, seen: 0 }], "the new worker answers");
    } finally {
      p.close();
    }
  });
}

Deno.test("a worker whose init fails is restarted with growing delays, not in a loop", async () => {
  const { p, lines } = pool(1, () => ({ failInit: true, order: [] }));
  try {
    await until("three restarts", () => p.restarts >= 3, 20_000);
    const delays = lines.filter((l) => String(l.msg).includes("worker died")).map((l) => l.restartInMs as number);
    assert.match(String(lines[0].reason), /init failed: cannot listen/);
    assert.deepEqual(delays.slice(0, 3), [100, 200, 400]);
  } finally {
    p.close();
  }
});

Deno.test("calls to a worker that dies meanwhile end instead of waiting forever", async () => {
  const { p, started } = pool(1);
  try {
    await until("the worker started", () => started.length === 1, 20_000);
    const call = p.callAll({ sleepMs: 60_000, label: "never" });
    p.broadcast({ die: "throw" });
    await call;
    assert.equal(p.restarts, 1);
  } finally {
    p.close();
  }
});

Deno.test("a call that throws in a worker rejects callAll with the worker named, after every worker answered", async () => {
  const { p, started } = pool(2);
  try {
    await until("both workers started", () => started.length === 2, 20_000);
    await assert.rejects(
      p.callAll({ sleepMs: 10, label: "add", fail: "cannot listen in the pod" }),
      /test worker \d: cannot listen in the pod; test worker \d: cannot listen in the pod/,
    );
    await p.callAll({ sleepMs: 10, label: "fine" });
  } finally {
    p.close();
  }
});

Deno.test("messagesDuringInit: a message sent while init still runs is handled then, not after it", async () => {
  // ztunnel's worker opens each pod's listeners in turn in its init, and serves each as soon as it listens: a
  // config message (a DENY) held back until the last pod listens left the first ones deciding on the old config.
  const { log } = capture();
  const events: { started?: number; seenDuringInit?: number }[] = [];
  const p = new WorkerPool({
    module: new URL("./testdata/slow_init_worker.ts", import.meta.url),
    count: 1,
    role: "test",
    log,
    init: () => ({ want: 3, waitMs: 5_000 }),
    onMessage: (_, body) => events.push(body as (typeof events)[number]),
  });
  try {
    await until("the worker began its init", () => events.some((e) => e.started !== undefined), 20_000);
    for (let i = 0; i < 3; i++) p.broadcast({ note: i });
    await until("the worker ended its init", () => events.some((e) => e.seenDuringInit !== undefined), 20_000);
    assert.equal(events.find((e) => e.seenDuringInit !== undefined)?.seenDuringInit, 3);
  } finally {
    p.close();
  }
});

Deno.test("a worker that answers pings but leaves a call hanging is taken for dead and restarted", async () => {
  const { p, lines, started } = pool(1, undefined, 800);
  try {
    await until("the worker started", () => started.length === 1, 20_000);
    await p.callAll({ sleepMs: 60_000, label: "stuck" }); // settles when the worker is ended, not in 60 s
    assert.equal(p.restarts, 1);
    const died = lines.find((l) => String(l.msg).includes("worker died"));
    assert.match(String(died?.reason), /a call went unanswered for \d+ ms/);
    await until("the worker restarted", () => started.length === 2, 20_000);
  } finally {
    p.close();
  }
});
