/**
 * The rotation manager driven by a fake clock and a fake CA: renewal at half-life, backoff on failure, a
 * still-valid certificate kept and an expired one dropped, at most 8 requests in flight with on-demand ones
 * first, and forget/close. The fake CA hands out plain {notBefore, notAfter} objects.
 */
import assert from "node:assert/strict";
import type { CertTimes } from "./rotation.ts";
import { type Clock, RotationManager, systemClock } from "./rotation_manager.ts";

const SECOND = 1_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const T0 = Date.UTC(2030, 0, 1);

/** Lets every pending promise callback run (a macrotask turn drains the microtask queue). */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** A clock whose time moves only when told; timers fire in order of due time, then of creation. */
class FakeClock implements Clock {
  /** More timers than this firing within one advance() is a busy loop. */
  static readonly STORM = 1_000;
  #now: number;
  #ids = 0;
  #timers: { id: number; at: number; fn: () => void }[] = [];

  constructor(start = T0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimer(fn: () => void, ms: number): unknown {
    const id = ++this.#ids;
    this.#timers.push({ id, at: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimer(id: unknown): void {
    this.#timers = this.#timers.filter((t) => t.id !== id);
  }

  /** Due times of the timers not yet fired. */
  pending(): number[] {
    return this.#timers.map((t) => t.at);
  }

  /** Moves time forward by `ms`, firing the timers due on the way in order, letting promises settle between. */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    let fired = 0;
    for (;;) {
      await settle();
      const next = this.#timers.filter((t) => t.at <= target).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!next) break;
      if (++fired > FakeClock.STORM) {
        throw new Error(`more than ${FakeClock.STORM} timers fired within ${ms} ms: a busy loop`);
      }
      this.clearTimer(next.id);
      this.#now = Math.max(this.#now, next.at);
      next.fn();
    }
    this.#now = target;
    await settle();
  }
}

/** One request to the fake CA, answered by hand. */
interface Call {
  identity: string;
  at: number;
  settled: boolean;
  /** Answers with a certificate valid from now for `lifetime`. */
  succeed(lifetime?: number): CertTimes;
  fail(message?: string): void;
}

/** A CA whose requests stay pending until the test answers them; counts requests in flight. */
class ManualCa {
  readonly calls: Call[] = [];
  inFlight = 0;
  maxInFlight = 0;
  constructor(readonly clock: FakeClock) {}

  fetch = (identity: string): Promise<CertTimes> =>
    new Promise((resolve, reject) => {
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      const done = () => {
        assert.equal(call.settled, false, "a call is answered once");
        call.settled = true;
        this.inFlight--;
      };
      const call: Call = {
        identity,
        at: this.clock.now(),
        settled: false,
        succeed: (lifetime = DAY) => {
          done();
          const cert = { notBefore: this.clock.now(), notAfter: this.clock.now() + lifetime };
          resolve(cert);
          return cert;
        },
        fail: (message = "CA unavailable") => {
          done();
          reject(new Error(message));
        },
      };
      this.calls.push(call);
    });

  pendingCalls(): Call[] {
    return this.calls.filter((c) => !c.settled);
  }
}

/** A CA that answers at once: a 24 h certificate, or the error `answer` returns for that call. */
function autoCa(clock: FakeClock, answer: (identity: string, n: number) => Error | undefined = () => undefined) {
  const calls: { identity: string; at: number }[] = [];
  const issued: CertTimes[] = [];
  return {
    calls,
    issued,
    times: (identity: string) => calls.filter((c) => c.identity === identity).map((c) => c.at),
    fetch: (identity: string): Promise<CertTimes> => {
      const n = calls.filter((c) => c.identity === identity).length;
      calls.push({ identity, at: clock.now() });
      const err = answer(identity, n);
      if (err) return Promise.reject(err);
      const cert = { notBefore: clock.now(), notAfter: clock.now() + DAY };
      issued.push(cert);
      return Promise.resolve(cert);
    },
  };
}

/** What `p` resolves to if it does so before a macrotask turn, else "still waiting". */
async function atOnce<T>(p: Promise<T>): Promise<T | "still waiting"> {
  const turn = settle();
  const got = await Promise.race([p, turn.then(() => "still waiting" as const)]);
  await turn;
  return got;
}

function diffs(times: number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]);
}

Deno.test("prefetch() fetches once, then renews at half-life", async () => {
  const clock = new FakeClock();
  const ca = autoCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    m.prefetch("a");
    await clock.advance(0);
    assert.deepEqual(ca.times("a"), [T0]);
    assert.equal(m.current("a"), ca.issued[0]);
    m.prefetch("a"); // already tracked: no second request
    await clock.advance(12 * HOUR - 1);
    assert.deepEqual(ca.times("a"), [T0], "nothing before half-life");
    await clock.advance(1);
    assert.deepEqual(ca.times("a"), [T0, T0 + 12 * HOUR], "renewed at half-life");
    assert.equal(m.current("a"), ca.issued[1], "the renewed certificate replaces the old one");
    await clock.advance(12 * HOUR);
    assert.deepEqual(ca.times("a"), [T0, T0 + 12 * HOUR, T0 + 24 * HOUR], "and at the new certificate's half-life");
    await clock.advance(36 * HOUR);
    assert.deepEqual(diffs(ca.times("a")), [12 * HOUR, 12 * HOUR, 12 * HOUR, 12 * HOUR, 12 * HOUR]);
    assert.deepEqual(m.identities(), ["a"]);
  } finally {
    m.close();
  }
});

Deno.test("onIssued() hears each certificate obtained, first issue and renewals, never a failure", async () => {
  const clock = new FakeClock();
  const ca = autoCa(clock, (_id, n) => n === 1 ? new Error("CA unavailable") : undefined);
  const heard: [string, CertTimes][] = [];
  const m = new RotationManager({
    clock,
    fetch: ca.fetch,
    random: () => 0.5,
    onIssued: (id, c) => heard.push([id, c]),
  });
  try {
    m.prefetch("a");
    await clock.advance(0);
    assert.deepEqual(heard, [["a", ca.issued[0]]]);
    await clock.advance(12 * HOUR); // the renewal fails: nothing new to hear
    assert.equal(heard.length, 1);
    await clock.advance(HOUR); // the retry succeeds
    assert.deepEqual(heard, [["a", ca.issued[0]], ["a", ca.issued[1]]]);
    assert.equal(m.current("a"), heard[1][1], "heard after it is held");
  } finally {
    m.close();
  }
});

Deno.test("a failed renewal keeps the still-valid certificate and retries with growing delays", async (t) => {
  const cases: { random: number; delays: number[] }[] = [
    { random: 0.5, delays: [500, 1_000, 2_000, 4_000, 8_000, 16_000] },
    { random: 0, delays: [500, 800, 1_600, 3_200, 6_400, 12_800] },
    { random: 0.75, delays: [550, 1_100, 2_200, 4_400, 8_800, 17_600] },
  ];
  for (const c of cases) {
    await t.step(`random ${c.random}: ${c.delays.join(", ")} ms`, async () => {
      const clock = new FakeClock();
      const ca = autoCa(clock, (_, n) => (n === 0 ? undefined : new Error("CA down")));
      const m = new RotationManager({ clock, fetch: ca.fetch, random: () => c.random });
      try {
        m.prefetch("a");
        await clock.advance(0);
        const cert = m.current("a");
        assert.ok(cert);
        await clock.advance(12 * HOUR);
        assert.equal(ca.times("a").length, 2, "the renewal was attempted, and failed");
        assert.equal(m.current("a"), cert, "the still-valid certificate is kept");
        await clock.advance(c.delays.reduce((a, b) => a + b, 0));
        assert.deepEqual(diffs(ca.times("a").slice(1)), c.delays);
        assert.equal(m.current("a"), cert);
        assert.equal(await m.get("a"), cert, "get() still serves it");
      } finally {
        m.close();
      }
    });
  }
  await t.step("retries never wait longer than 150 s", async () => {
    const clock = new FakeClock();
    const ca = autoCa(clock, (_, n) => (n === 0 ? undefined : new Error("CA down")));
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.999 });
    try {
      m.prefetch("a");
      await clock.advance(0);
      await clock.advance(12 * HOUR + 30 * 60_000);
      const gaps = diffs(ca.times("a").slice(1));
      assert.ok(gaps.length > 10);
      assert.ok(gaps.every((g) => g >= 500 && g <= 150_000), `${gaps}`);
      assert.equal(gaps.at(-1), 150_000);
    } finally {
      m.close();
    }
  });
  await t.step("a success after failures resets the backoff", async () => {
    const clock = new FakeClock();
    // Calls 1-3 fail, call 4 succeeds, call 5 (the next renewal) fails again.
    const ca = autoCa(clock, (_, n) => ([1, 2, 3, 5].includes(n) ? new Error("CA down") : undefined));
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      m.prefetch("a");
      await clock.advance(0);
      await clock.advance(12 * HOUR + 3_500);
      assert.equal(ca.times("a").length, 5);
      const renewed = ca.times("a")[4];
      await clock.advance(12 * HOUR + 500);
      assert.deepEqual(ca.times("a").slice(5), [renewed + 12 * HOUR, renewed + 12 * HOUR + 500]);
    } finally {
      m.close();
    }
  });
});

Deno.test("when the certificate expires while renewals fail, current() returns undefined (fail closed)", async () => {
  const clock = new FakeClock();
  const ca = autoCa(clock, (_, n) => (n === 0 ? undefined : new Error("CA down")));
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    m.prefetch("a");
    await clock.advance(0);
    const cert = m.current("a");
    assert.ok(cert);
    await clock.advance(DAY - 1);
    assert.equal(m.current("a"), cert, "valid up to its last millisecond");
    await clock.advance(1);
    assert.equal(m.current("a"), undefined, "expired: nothing is served");
    await clock.advance(HOUR);
    assert.equal(m.current("a"), undefined);
    assert.deepEqual(m.identities(), ["a"], "still tracked");
    const attempts = ca.calls.length;
    await clock.advance(150 * SECOND);
    assert.ok(ca.calls.length > attempts, "and still retried");
    await assert.rejects(m.get("a"), /CA down/, "a caller gets the CA's error, not the expired certificate");
  } finally {
    m.close();
  }
});

Deno.test("a certificate that is already expired when it arrives counts as a failure", async () => {
  const clock = new FakeClock();
  const m = new RotationManager({
    clock,
    fetch: () => Promise.resolve({ notBefore: clock.now() - DAY, notAfter: clock.now() }),
    random: () => 0.5,
  });
  try {
    await assert.rejects(m.get("a"), /already expired/);
    assert.equal(m.current("a"), undefined);
  } finally {
    m.close();
  }
});

Deno.test("at most 8 fetches are in flight when 20 identities are prefetched at once", async () => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    for (let i = 0; i < 20; i++) m.prefetch(`id${i}`);
    await clock.advance(0);
    assert.equal(ca.calls.length, 8);
    assert.deepEqual(ca.calls.map((c) => c.identity), ["id0", "id1", "id2", "id3", "id4", "id5", "id6", "id7"]);
    // Time passing does not start more while every slot is taken (nor spin: FakeClock reports a busy loop).
    await clock.advance(10 * SECOND);
    assert.equal(ca.calls.length, 8);
    ca.calls[0].succeed();
    await clock.advance(0);
    assert.equal(ca.calls.length, 9, "a freed slot is used at once");
    assert.equal(ca.calls[8].identity, "id8");
    assert.equal(ca.inFlight, 8);
    while (ca.pendingCalls().length > 0) {
      ca.pendingCalls()[0].succeed();
      await clock.advance(0);
      assert.ok(ca.inFlight <= 8, `${ca.inFlight} in flight`);
    }
    assert.equal(ca.maxInFlight, 8);
    assert.equal(ca.calls.length, 20, "each identity fetched once");
    assert.equal(new Set(ca.calls.map((c) => c.identity)).size, 20);
    for (let i = 0; i < 20; i++) assert.ok(m.current(`id${i}`), `id${i} has a certificate`);
  } finally {
    m.close();
  }
});

Deno.test("while every slot is taken the manager arms no zero-delay timer", async () => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, maxInFlight: 2 });
  try {
    for (const id of ["a", "b", "c"]) m.prefetch(id);
    await clock.advance(0);
    assert.equal(ca.calls.length, 2);
    assert.deepEqual(clock.pending().filter((at) => at <= clock.now()), [], "no timer due now: nothing could start");
    ca.calls[0].succeed();
    await clock.advance(0);
    assert.equal(ca.calls.length, 3, "the request that ended started the waiting one");
  } finally {
    m.close();
  }
});

Deno.test("an on-demand get() for a new identity is fetched before queued prefetches when a slot frees", async () => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    for (let i = 0; i < 20; i++) m.prefetch(`id${i}`);
    await clock.advance(0);
    const got = m.get("urgent");
    await clock.advance(0);
    assert.equal(ca.calls.length, 8, "no slot for it yet");
    ca.calls[3].succeed();
    await clock.advance(0);
    assert.equal(ca.calls.length, 9);
    assert.equal(ca.calls[8].identity, "urgent", "the on-demand request goes ahead of 12 queued prefetches");
    const cert = ca.calls[8].succeed();
    assert.equal(await got, cert);
    ca.calls[0].succeed();
    await clock.advance(0);
    assert.equal(ca.calls[9].identity, "id8", "then the queued prefetches, oldest first");
  } finally {
    m.close();
  }
});

Deno.test("get() resolves at once with a valid certificate it holds, without asking the CA", async (t) => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    m.prefetch("a");
    await clock.advance(0);
    const cert = ca.calls[0].succeed();
    await clock.advance(0);
    await t.step("right after it was obtained", async () => {
      const got = await atOnce(m.get("a"));
      assert.equal(got, cert);
      assert.equal(ca.calls.length, 1);
    });
    await t.step("while its renewal is in flight", async () => {
      await clock.advance(12 * HOUR);
      assert.equal(ca.calls.length, 2, "renewal started");
      const got = await atOnce(m.get("a"));
      assert.equal(got, cert);
      assert.equal(ca.calls.length, 2);
    });
  } finally {
    m.close();
  }
});

Deno.test("get() for an identity not held asks the CA, and rejects when that request fails", async (t) => {
  await t.step("resolves with the certificate obtained", async () => {
    const clock = new FakeClock();
    const ca = new ManualCa(clock);
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      const a = m.get("a");
      const b = m.get("a");
      await clock.advance(0);
      assert.equal(ca.calls.length, 1, "one request for both callers");
      const cert = ca.calls[0].succeed();
      assert.equal(await a, cert);
      assert.equal(await b, cert);
      assert.equal(m.current("a"), cert);
    } finally {
      m.close();
    }
  });
  await t.step("rejects with the CA's error, and the manager keeps retrying", async () => {
    const clock = new FakeClock();
    const ca = autoCa(clock, () => new Error("denied"));
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      await assert.rejects(m.get("a"), /denied/);
      await clock.advance(1_500);
      assert.deepEqual(ca.times("a"), [T0, T0 + 500, T0 + 1_500]);
    } finally {
      m.close();
    }
  });
});

Deno.test("forget() drops the certificate, rejects waiters and stops renewals", async (t) => {
  await t.step("a held certificate is dropped and no longer renewed", async () => {
    const clock = new FakeClock();
    const ca = autoCa(clock);
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      m.prefetch("a");
      m.prefetch("b");
      await clock.advance(0);
      assert.ok(m.current("a"));
      m.forget("a");
      assert.equal(m.current("a"), undefined);
      assert.deepEqual(m.identities(), ["b"]);
      await clock.advance(2 * DAY);
      assert.deepEqual(ca.times("a"), [T0], "no renewal after forget()");
      assert.equal(ca.times("b").length, 5, "the other identity is still renewed");
    } finally {
      m.close();
    }
  });
  await t.step("waiters are rejected, and the answer that arrives later is ignored", async () => {
    const clock = new FakeClock();
    const ca = new ManualCa(clock);
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      const waiting = m.get("a");
      await clock.advance(0);
      assert.equal(ca.calls.length, 1);
      m.forget("a");
      await assert.rejects(waiting, /forgotten/);
      ca.calls[0].succeed();
      await clock.advance(0);
      assert.equal(m.current("a"), undefined);
      assert.deepEqual(m.identities(), []);
      await clock.advance(2 * DAY);
      assert.equal(ca.calls.length, 1);
    } finally {
      m.close();
    }
  });
  await t.step("retries after failures stop", async () => {
    const clock = new FakeClock();
    const ca = autoCa(clock, () => new Error("CA down"));
    const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
    try {
      m.prefetch("a");
      await clock.advance(600);
      assert.equal(ca.calls.length, 2);
      m.forget("a");
      await clock.advance(HOUR);
      assert.equal(ca.calls.length, 2);
      assert.deepEqual(clock.pending(), [], "no timer left");
    } finally {
      m.close();
    }
  });
});

Deno.test("a request for a forgotten identity holds its slot until it ends", async () => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  try {
    for (let i = 0; i < 8; i++) m.prefetch(`id${i}`);
    await clock.advance(0);
    assert.equal(ca.calls.length, 8);
    m.forget("id0");
    m.prefetch("next");
    await clock.advance(0);
    assert.equal(ca.calls.length, 8, "id0's request is still running at the CA");
    assert.equal(ca.maxInFlight, 8);
    ca.calls[0].fail();
    await clock.advance(0);
    assert.equal(ca.calls.length, 9);
    assert.equal(ca.calls[8].identity, "next");
  } finally {
    m.close();
  }
});

Deno.test("a fetch that throws synchronously is retried with backoff, one request per identity at a time", async () => {
  const clock = new FakeClock();
  const calls: { identity: string; at: number }[] = [];
  const m = new RotationManager<CertTimes>({
    clock,
    random: () => 0.5,
    fetch: (identity) => {
      calls.push({ identity, at: clock.now() });
      throw new Error("no connection");
    },
  });
  try {
    m.prefetch("a");
    m.prefetch("b");
    await clock.advance(1_500);
    for (const id of ["a", "b"]) {
      assert.deepEqual(calls.filter((c) => c.identity === id).map((c) => c.at), [T0, T0 + 500, T0 + 1_500], id);
    }
  } finally {
    m.close();
  }
});

Deno.test("a CA near its own expiry, whose leaves arrive past half-life, is not asked in a tight loop", async () => {
  const clock = new FakeClock();
  // As CertificateAuthority.sign() does when its signer expires in a minute: backdated two minutes and
  // capped at the signer's expiry, so the leaf is past half-life the moment it arrives.
  const signerExpiry = T0 + 60_000;
  const calls: number[] = [];
  const fetch = (): Promise<CertTimes> => {
    calls.push(clock.now());
    return Promise.resolve({ notBefore: clock.now() - 2 * 60_000, notAfter: signerExpiry });
  };
  const m = new RotationManager({ clock, fetch, random: () => 0.5 });
  try {
    m.prefetch("a");
    await clock.advance(0);
    assert.deepEqual(calls, [T0]);
    await clock.advance(30_000 - 1);
    assert.deepEqual(calls, [T0], "the next request waits half of what is left");
    await clock.advance(1);
    assert.deepEqual(calls, [T0, T0 + 30_000]);
    await clock.advance(30_000);
    // Halving what is left, never under 0.5 s: a handful of requests in that minute, not thousands.
    assert.ok(calls.length < 12, `${calls.length} requests`);
    assert.ok(diffs(calls).every((d) => d >= 500), "never closer than the minimum backoff");
  } finally {
    m.close();
  }
});

Deno.test("close() rejects waiters, stops all work and refuses new requests", async () => {
  const clock = new FakeClock();
  const ca = new ManualCa(clock);
  const m = new RotationManager({ clock, fetch: ca.fetch, random: () => 0.5 });
  m.prefetch("a");
  m.prefetch("held");
  const waiting = m.get("b");
  await clock.advance(0);
  ca.calls[1].succeed();
  await clock.advance(0);
  assert.equal(clock.pending().length, 1, "the renewal of the certificate held is scheduled");
  m.close();
  assert.deepEqual(clock.pending(), [], "close() cancels the scheduled wake-up");
  assert.equal(m.current("held"), undefined);
  await assert.rejects(waiting);
  await assert.rejects(m.get("c"), /closed/);
  m.prefetch("d");
  assert.deepEqual(m.identities(), [], "nothing is tracked after close()");
  for (const c of ca.pendingCalls()) c.succeed();
  await clock.advance(2 * DAY);
  assert.equal(ca.calls.length, 3, "nothing fetched after close()");
  assert.deepEqual(clock.pending(), []);
});

Deno.test("systemClock does not fire a timer set beyond setTimeout's 32-bit limit at once", async () => {
  // setTimeout fires after 1 ms for delays above 2^31-1 ms (24.8 days), and a renewal at half-life of a
  // 90-day certificate is 45 days away. A timer 30 days away must not have fired when a 20 ms one has.
  let fired = false;
  const id = systemClock.setTimer(() => fired = true, 30 * DAY);
  try {
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(fired, false);
  } finally {
    systemClock.clearTimer(id);
  }
});
