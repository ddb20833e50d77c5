import assert from "node:assert/strict";
import { FLOOD_LIMITS, FloodGuard } from "./flood.ts";

Deno.test("FloodGuard flags rapid reset at half of 500 streams, and beyond 500 at half of all", () => {
  const early = new FloodGuard(0);
  for (let i = 0; i < 249; i++) assert.equal(early.peerStreamClosed(true), null);
  assert.match(early.peerStreamClosed(true) ?? "", /250 of 250 streams reset early/);

  const mixed = new FloodGuard(0);
  // 600 streams, 40% reset early: a busy but honest client.
  for (let i = 0; i < 600; i++) assert.equal(mixed.peerStreamClosed(i % 5 < 2), null, `stream ${i}`);
  // Then only resets: flagged once they are half of everything closed.
  // 2 × (240 + n) ≥ 600 + n first holds at n = 120.
  let n = 0;
  while (mixed.peerStreamClosed(true) === null) n++;
  assert.equal(n + 1, 120);
});

Deno.test("FloodGuard allows one empty frame in a row, not two", () => {
  const g = new FloodGuard(0);
  assert.equal(g.frame(true), null);
  assert.equal(g.frame(false), null);
  assert.equal(g.frame(true), null);
  assert.equal(g.frame(true), "empty frames");
});

Deno.test("FloodGuard counts reply-demanding frames per 10 s window", () => {
  const g = new FloodGuard(0);
  for (let i = 0; i < FLOOD_LIMITS.replyFramesPerWindow; i++) assert.equal(g.replyDemanded("PING", 5), null);
  assert.equal(g.replyDemanded("PING", 5), "PING frames");
  const later = new FloodGuard(0);
  for (let i = 0; i < 1000; i++) later.replyDemanded("PING", 1);
  assert.equal(later.replyDemanded("PING", 10_002), null, "a new window starts fresh");
});

Deno.test("FloodGuard ties WINDOW_UPDATE and PRIORITY budgets to the work done", () => {
  const g = new FloodGuard(0);
  for (let i = 0; i < 5; i++) assert.equal(g.windowUpdate(), null);
  assert.equal(g.windowUpdate(), "WINDOW_UPDATE frames");
  const busy = new FloodGuard(0);
  busy.streamOpened();
  for (let i = 0; i < 10; i++) busy.dataFrameSent();
  for (let i = 0; i < 5 + 2 * (1 + 100); i++) assert.equal(busy.windowUpdate(), null);
  assert.equal(busy.windowUpdate(), "WINDOW_UPDATE frames");
  const p = new FloodGuard(0);
  p.streamOpened();
  for (let i = 0; i < 200; i++) assert.equal(p.priority(), null);
  assert.equal(p.priority(), "PRIORITY frames");
});

Deno.test("FloodGuard bounds frames queued to the socket: 10,000 of any kind, 1,000 control", async (t) => {
  const cases: [string, (g: FloodGuard) => string | null, RegExp][] = [
    ["frames", (g) => {
      for (let i = 0; i < FLOOD_LIMITS.queuedFrames; i++) assert.equal(g.frameQueued(false), null, `frame ${i}`);
      return g.frameQueued(false);
    }, /^10001 frames queued/],
    ["control frames", (g) => {
      for (let i = 0; i < FLOOD_LIMITS.queuedControlFrames; i++) assert.equal(g.frameQueued(true), null);
      return g.frameQueued(true);
    }, /^1001 control frames queued/],
    ["frames the socket took no longer count", (g) => {
      for (let i = 0; i < 50_000; i++) {
        assert.equal(g.frameQueued(i % 2 === 0), null, `frame ${i}`);
        g.frameSent(i % 2 === 0);
      }
      assert.equal(g.queued, 0);
      for (let i = 0; i < 999; i++) g.frameQueued(false);
      for (let i = 0; i < 1000; i++) assert.equal(g.frameQueued(true), null);
      return g.frameQueued(true);
    }, /^1001 control frames queued/],
    ["control frames count towards the total", (g) => {
      for (let i = 0; i < 9_500; i++) g.frameQueued(false);
      for (let i = 0; i < 500; i++) assert.equal(g.frameQueued(true), null);
      return g.frameQueued(true);
    }, /^10001 frames queued/],
  ];
  for (const [name, run, want] of cases) {
    await t.step(name, () => assert.match(run(new FloodGuard(0)) ?? "null", want));
  }
});
