/** The pure schedule of certificate rotation: renewal time, backoff, and which requests go first. */
import assert from "node:assert/strict";
import {
  afterFailure,
  afterSuccess,
  BACKOFF_MAX_MS,
  BACKOFF_MIN_MS,
  backoffDelay,
  type CertTimes,
  type Entry,
  hasValidCert,
  MAX_IN_FLIGHT,
  nextWakeup,
  pickRequests,
  renewalTime,
} from "./rotation.ts";

const HOUR = 3_600_000;
const NOW = 1_000 * HOUR;

let seq = 0;
function entry(identity: string, over: Partial<Entry<CertTimes>> = {}): Entry<CertTimes> {
  return { identity, priority: "prefetch", dueAt: NOW, failures: 0, inFlight: false, seq: seq++, ...over };
}

const valid: CertTimes = { notBefore: NOW - HOUR, notAfter: NOW + HOUR };
const expired: CertTimes = { notBefore: NOW - 2 * HOUR, notAfter: NOW - HOUR };

Deno.test("renewalTime() is half-way through the certificate's life", async (t) => {
  const cases: [CertTimes, number][] = [
    [{ notBefore: 0, notAfter: 100 }, 50],
    [{ notBefore: NOW, notAfter: NOW + 24 * HOUR }, NOW + 12 * HOUR],
    [{ notBefore: NOW - 2 * 60_000, notAfter: NOW + 24 * HOUR }, NOW - 60_000 + 12 * HOUR],
    [{ notBefore: 1000, notAfter: 2001 }, 1500],
  ];
  for (const [c, want] of cases) {
    await t.step(`${c.notBefore}..${c.notAfter} → ${want}`, () => {
      assert.equal(renewalTime(c), want);
    });
  }
});

Deno.test("backoffDelay() starts at 0.5 s and doubles with each failure, up to 150 s", async (t) => {
  assert.equal(BACKOFF_MIN_MS, 500);
  assert.equal(BACKOFF_MAX_MS, 150_000);
  // random 0.5 is the middle of the ±20 % jitter: the bare schedule.
  const cases: [number, number][] = [
    [1, 500],
    [2, 1_000],
    [3, 2_000],
    [4, 4_000],
    [5, 8_000],
    [9, 128_000],
    [10, 150_000],
    [11, 150_000],
    [50, 150_000],
    [2000, 150_000],
  ];
  for (const [failures, want] of cases) {
    await t.step(`failure ${failures} → ${want} ms`, () => {
      assert.equal(backoffDelay(failures, 0.5), want);
    });
  }
});

Deno.test("backoffDelay() stays within 0.5 s and 150 s whatever the jitter", async (t) => {
  const randoms = [0, 0.01, 0.25, 0.5, 0.75, 0.999999];
  for (const failures of [1, 2, 3, 8, 9, 10, 11, 30, 1100]) {
    await t.step(`failure ${failures}`, () => {
      for (const r of randoms) {
        const d = backoffDelay(failures, r);
        assert.ok(Number.isInteger(d), `${d} is whole milliseconds`);
        assert.ok(d >= BACKOFF_MIN_MS, `failure ${failures}, random ${r}: ${d} < 0.5 s`);
        assert.ok(d <= BACKOFF_MAX_MS, `failure ${failures}, random ${r}: ${d} > 150 s`);
      }
    });
  }
  await t.step("the first retry is about half a second", () => {
    for (const r of randoms) {
      const d = backoffDelay(1, r);
      assert.ok(d >= 500 && d <= 600, `${d}`);
    }
  });
});

Deno.test("backoffDelay() jitters by ±20 % with `random`", async (t) => {
  for (const [failures, base] of [[3, 2_000], [6, 16_000]]) {
    await t.step(`failure ${failures}`, () => {
      assert.equal(backoffDelay(failures, 0), base * 0.8);
      assert.equal(backoffDelay(failures, 0.25), base * 0.9);
      assert.equal(backoffDelay(failures, 0.75), base * 1.1);
      assert.ok(Math.abs(backoffDelay(failures, 0.999999) - base * 1.2) <= 1);
      const spread = new Set([0, 0.2, 0.4, 0.6, 0.8].map((r) => backoffDelay(failures, r)));
      assert.equal(spread.size, 5, "different random, different delay");
    });
  }
});

Deno.test("backoffDelay() keeps jittering at the 150 s cap, so retries of many nodes stay spread", () => {
  for (const failures of [10, 30]) {
    assert.equal(backoffDelay(failures, 0), 120_000);
    assert.equal(backoffDelay(failures, 0.25), 135_000);
    assert.equal(backoffDelay(failures, 0.75), 150_000);
  }
});

Deno.test("hasValidCert() holds from notBefore up to, not including, notAfter", async (t) => {
  const cert = { notBefore: 100, notAfter: 200 };
  const cases: [string, Entry<CertTimes>, number, boolean][] = [
    ["no certificate", entry("a"), 150, false],
    ["before notBefore", entry("a", { cert }), 99, false],
    ["at notBefore", entry("a", { cert }), 100, true],
    ["inside", entry("a", { cert }), 150, true],
    ["at notAfter", entry("a", { cert }), 200, false],
    ["after notAfter", entry("a", { cert }), 201, false],
  ];
  for (const [name, e, now, want] of cases) await t.step(name, () => assert.equal(hasValidCert(e, now), want));
});

Deno.test("pickRequests() puts on-demand identities without a valid certificate ahead of prefetch", async (t) => {
  await t.step("on-demand first, even when the prefetch is older and due earlier", () => {
    const prefetch = entry("prefetch", { dueAt: NOW - HOUR });
    const onDemand = entry("on-demand", { priority: "on-demand", dueAt: NOW });
    const picked = pickRequests([prefetch, onDemand], NOW, 1);
    assert.deepEqual(picked.map((e) => e.identity), ["on-demand"]);
  });
  await t.step("an on-demand entry holding a valid certificate waits its turn like a renewal", () => {
    const prefetch = entry("prefetch", { dueAt: NOW - HOUR });
    const renewal = entry("on-demand-renewal", { priority: "on-demand", dueAt: NOW, cert: valid });
    assert.deepEqual(pickRequests([renewal, prefetch], NOW, 1).map((e) => e.identity), ["prefetch"]);
  });
  await t.step("an on-demand entry whose certificate expired goes first", () => {
    const prefetch = entry("prefetch", { dueAt: NOW - HOUR });
    const stale = entry("on-demand-expired", { priority: "on-demand", dueAt: NOW, cert: expired });
    assert.deepEqual(pickRequests([prefetch, stale], NOW, 1).map((e) => e.identity), ["on-demand-expired"]);
  });
  await t.step("then by due time, then by arrival", () => {
    const a = entry("a", { dueAt: NOW - 10 });
    const b = entry("b", { dueAt: NOW - 20 });
    const c = entry("c", { dueAt: NOW - 10 });
    const d = entry("d", { priority: "on-demand", dueAt: NOW });
    assert.deepEqual(pickRequests([c, a, b, d], NOW).map((e) => e.identity), ["d", "b", "a", "c"]);
  });
});

Deno.test(`pickRequests() keeps at most ${MAX_IN_FLIGHT} requests in flight`, async (t) => {
  assert.equal(MAX_IN_FLIGHT, 8);
  const due = (n: number, prefix: string, over: Partial<Entry<CertTimes>> = {}) =>
    Array.from({ length: n }, (_, i) => entry(`${prefix}${i}`, over));
  const cases: { name: string; running: number; waiting: number; max?: number; picked: number }[] = [
    { name: "none running, 20 due", running: 0, waiting: 20, picked: 8 },
    { name: "3 running, 10 due", running: 3, waiting: 10, picked: 5 },
    { name: "7 running, 10 due", running: 7, waiting: 10, picked: 1 },
    { name: "8 running, 10 due", running: 8, waiting: 10, picked: 0 },
    { name: "none running, 3 due", running: 0, waiting: 3, picked: 3 },
    { name: "custom limit 2, 1 running", running: 1, waiting: 5, max: 2, picked: 1 },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const entries = [...due(c.running, "run", { inFlight: true }), ...due(c.waiting, "wait")];
      const picked = pickRequests(entries, NOW, c.max);
      assert.equal(picked.length, c.picked);
      assert.ok(picked.every((e) => !e.inFlight), "nothing already in flight is picked again");
    });
  }
  await t.step("on-demand waiting while all slots are taken is not picked", () => {
    const entries = [...due(8, "run", { inFlight: true }), entry("od", { priority: "on-demand" })];
    assert.deepEqual(pickRequests(entries, NOW), []);
  });
});

Deno.test("pickRequests() skips entries that are not yet due", () => {
  const entries = [
    entry("later", { dueAt: NOW + 1 }),
    entry("now", { dueAt: NOW }),
    entry("much-later", { dueAt: NOW + HOUR, priority: "on-demand" }),
    entry("earlier", { dueAt: NOW - 1 }),
  ];
  assert.deepEqual(pickRequests(entries, NOW).map((e) => e.identity), ["earlier", "now"]);
  assert.deepEqual(pickRequests(entries, NOW - 2), []);
});

Deno.test("nextWakeup() is the earliest due time of the entries not in flight", () => {
  assert.equal(nextWakeup([]), undefined);
  assert.equal(
    nextWakeup([entry("a", { dueAt: 5, inFlight: true }), entry("b", { dueAt: 9 }), entry("c", { dueAt: 7 })]),
    7,
  );
  assert.equal(nextWakeup([entry("a", { dueAt: 5, inFlight: true })]), undefined);
});

Deno.test("afterSuccess() renews a certificate already past half-life half-way through what is left, not at once", async (t) => {
  await t.step("backdated leaf cut short by an expiring CA: 10 minutes left", () => {
    const cert = { notBefore: NOW - 20 * 60_000, notAfter: NOW + 10 * 60_000 };
    assert.equal(afterSuccess(entry("a"), cert, NOW).dueAt, NOW + 5 * 60_000);
  });
  await t.step("a second left: never sooner than the minimum backoff", () => {
    const cert = { notBefore: NOW - 60_000, notAfter: NOW + 1000 };
    assert.equal(afterSuccess(entry("a"), cert, NOW).dueAt, NOW + BACKOFF_MIN_MS);
  });
});

Deno.test("afterSuccess() keeps the new certificate, resets failures and renews at its half-life", () => {
  const cert = { notBefore: NOW, notAfter: NOW + 24 * HOUR };
  const e = afterSuccess(entry("a", { priority: "on-demand", failures: 4, inFlight: true }), cert, NOW);
  assert.equal(e.cert, cert);
  assert.equal(e.failures, 0);
  assert.equal(e.inFlight, false);
  assert.equal(e.dueAt, NOW + 12 * HOUR);
  assert.equal(e.priority, "prefetch", "once served, an on-demand identity is kept renewed like a prefetch");
});

Deno.test("afterFailure() retries after the backoff and keeps the certificate only while it is valid", async (t) => {
  await t.step("a valid certificate is kept", () => {
    const e = afterFailure(entry("a", { cert: valid, failures: 2, inFlight: true }), NOW, 0.5);
    assert.equal(e.cert, valid);
    assert.equal(e.failures, 3);
    assert.equal(e.inFlight, false);
    assert.equal(e.dueAt, NOW + 2_000);
  });
  await t.step("an expired certificate is dropped", () => {
    const e = afterFailure(entry("a", { cert: expired, inFlight: true }), NOW, 0.5);
    assert.equal(e.cert, undefined);
    assert.equal(e.failures, 1);
    assert.equal(e.dueAt, NOW + 500);
  });
  await t.step("the jitter comes from `random`", () => {
    const a = afterFailure(entry("a", { failures: 4 }), NOW, 0);
    const b = afterFailure(entry("a", { failures: 4 }), NOW, 0.99);
    assert.notEqual(a.dueAt, b.dueAt);
  });
});
