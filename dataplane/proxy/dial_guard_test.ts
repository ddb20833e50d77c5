import assert from "node:assert/strict";
import { DIAL_LIMITS, DialGuard } from "./dial_guard.ts";

const A = "spiffe://cluster.local/ns/default/sa/a";
const B = "spiffe://cluster.local/ns/default/sa/b";

/** Starts `n` dials for `who` at `now`; asserts each is admitted. */
function dial(g: DialGuard, who: string, n: number, now = 0) {
  for (let i = 0; i < n; i++) assert.equal(g.admit(who, now), null, `dial ${i} for ${who}`);
}

/** Settles `n` dials for `who`. */
function settle(g: DialGuard, who: string, n: number, cancelled: boolean, now = 0) {
  for (let i = 0; i < n; i++) g.settled(who, cancelled, now);
}

Deno.test("DialGuard bounds what one identity makes us dial", async (t) => {
  const cases: [string, (g: DialGuard) => string | null, RegExp | null][] = [
    ["1,024 dials pending at once, not 1,025", (g) => {
      dial(g, A, DIAL_LIMITS.pendingPerIdentity);
      return g.admit(A, 0);
    }, /^1024 dials pending$/],
    ["pending dials of one identity do not limit another", (g) => {
      dial(g, A, DIAL_LIMITS.pendingPerIdentity);
      return g.admit(B, 0);
    }, null],
    ["a settled dial frees its slot", (g) => {
      dial(g, A, DIAL_LIMITS.pendingPerIdentity);
      settle(g, A, 1, false);
      return g.admit(A, 0);
    }, null],
    ["100 cancelled of 100 dials in the window: refused", (g) => {
      dial(g, A, 100);
      settle(g, A, 100, true);
      return g.admit(A, 5_000);
    }, /^100 of 100 dials in 10 s cancelled by the client before an answer$/],
    ["99 cancelled: still served", (g) => {
      dial(g, A, 99);
      settle(g, A, 99, true);
      return g.admit(A, 0);
    }, null],
    ["a busy client cancelling under half is served however many it cancels", (g) => {
      for (let i = 0; i < 50; i++) {
        dial(g, A, 100);
        settle(g, A, 51, false);
        settle(g, A, 49, true);
      }
      return g.admit(A, 0);
    }, null],
    ["then half: refused", (g) => {
      for (let i = 0; i < 2; i++) {
        dial(g, A, 100);
        settle(g, A, 50, false);
        settle(g, A, 50, true);
      }
      return g.admit(A, 0);
    }, /^100 of 200 dials/],
    ["a refused identity starts afresh in the next window", (g) => {
      dial(g, A, 100);
      settle(g, A, 100, true);
      assert.match(g.admit(A, 9_999) ?? "", /cancelled/);
      return g.admit(A, DIAL_LIMITS.windowMs);
    }, null],
    ["one identity's cancels do not refuse another", (g) => {
      dial(g, A, 100);
      settle(g, A, 100, true);
      return g.admit(B, 0);
    }, null],
  ];
  for (const [name, run, want] of cases) {
    await t.step(name, () => {
      const got = run(new DialGuard());
      if (want === null) assert.equal(got, null);
      else assert.match(got ?? "null", want);
    });
  }
});

Deno.test("DialGuard forgets identities whose window is over and refuses a settle it never admitted", () => {
  const g = new DialGuard();
  dial(g, A, 1);
  settle(g, A, 1, true, DIAL_LIMITS.windowMs);
  assert.equal(g.size, 0, "nothing pending and the window over: forgotten");
  for (let i = 0; i < 1024; i++) dial(g, `spiffe://cluster.local/ns/default/sa/p${i}`, 1);
  for (let i = 0; i < 1024; i++) g.settled(`spiffe://cluster.local/ns/default/sa/p${i}`, false, 1);
  dial(g, B, 1, DIAL_LIMITS.windowMs + 1);
  assert.equal(g.size, 1, "the 1,025th identity swept the idle ones");
  assert.throws(() => g.settled(A, false, 0), /^Error: BUG: a dial settled for .*a that was not admitted$/);
});

Deno.test("DialGuard(threads) takes its thread's share of each limit, so the threads together keep the node's bound", async (t) => {
  for (const threads of [1, 2, 3]) {
    await t.step(`${threads} thread(s)`, () => {
      const guards = Array.from({ length: threads }, () => new DialGuard(threads));
      let pending = 0;
      for (const g of guards) while (g.admit(A, 0) === null) pending++;
      assert.ok(pending >= DIAL_LIMITS.pendingPerIdentity, `${pending} pending dials allowed`);
      assert.ok(pending < DIAL_LIMITS.pendingPerIdentity + threads, `${pending}: the node-wide bound, rounded up`);
      let cancelled = 0;
      for (const g of guards) {
        for (; g.admit(B, 0) === null; cancelled++) g.settled(B, true, 0);
      }
      assert.ok(cancelled < DIAL_LIMITS.cancelledPerWindow + threads, `${cancelled} cancelled dials before refusing`);
    });
  }
});
