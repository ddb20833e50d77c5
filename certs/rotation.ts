/**
 * When to ask the CA for which identity: the pure half of the rotation manager, after ztunnel's
 * `identity/manager.rs`. A certificate is renewed at half its lifetime; a failed request is retried with
 * per-identity exponential backoff from 0.5 s to 150 s with ±20 % jitter; at most 8 requests are in flight;
 * identities someone is waiting for (on demand, no valid certificate) go before prefetch and renewals. A
 * still-valid certificate is kept when a renewal fails, and dropped once it expires (fail closed).
 *
 * Everything here is a function of its inputs (time and randomness passed in), so the schedule is tested
 * with a fake clock; `rotation_manager.ts` is the thin shell that runs it.
 *
 * @module
 */

/** The validity of a certificate, in epoch milliseconds. */
export interface CertTimes {
  notBefore: number;
  notAfter: number;
}

/** First retry delay after a failure. */
export const BACKOFF_MIN_MS = 500;
/** Longest retry delay. */
export const BACKOFF_MAX_MS = 150_000;
/** Most CA requests in flight at once. */
export const MAX_IN_FLIGHT = 8;

/** Why an identity is tracked: someone waits for it, or it is fetched ahead of need. */
export type Priority = "on-demand" | "prefetch";

/** What the schedule knows about one identity. */
export interface Entry<C extends CertTimes> {
  identity: string;
  priority: Priority;
  /** The newest certificate obtained, while still valid. */
  cert?: C;
  /** When the next request is due (epoch ms). */
  dueAt: number;
  /** Consecutive failures since the last success. */
  failures: number;
  inFlight: boolean;
  /** Order of arrival, for a stable queue. */
  seq: number;
}

/** When a certificate should be renewed: half-way through its life. */
export function renewalTime(c: CertTimes): number {
  return c.notBefore + Math.floor((c.notAfter - c.notBefore) / 2);
}

/** Delay before retry number `failures` (≥ 1), `random` in [0, 1): 0.5 s doubling, ±20 %, within 0.5–150 s. */
export function backoffDelay(failures: number, random: number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, failures - 1));
  const jittered = base * (0.8 + 0.4 * random);
  return Math.round(Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, jittered)));
}

/** Whether the entry holds a certificate valid at `now`. */
export function hasValidCert(e: Entry<CertTimes>, now: number): boolean {
  return e.cert !== undefined && now >= e.cert.notBefore && now < e.cert.notAfter;
}

/**
 * The identities to request now, in order: due, not in flight, on-demand before prefetch, then by due time
 * and arrival; no more than leaves `maxInFlight` requests running.
 */
export function pickRequests<C extends CertTimes>(
  entries: Iterable<Entry<C>>,
  now: number,
  maxInFlight = MAX_IN_FLIGHT,
): Entry<C>[] {
  const all = [...entries];
  const running = all.filter((e) => e.inFlight).length;
  const room = Math.max(0, maxInFlight - running);
  if (room === 0) return [];
  const rank = (e: Entry<C>) => (e.priority === "on-demand" && !hasValidCert(e, now) ? 0 : 1);
  return all
    .filter((e) => !e.inFlight && e.dueAt <= now)
    .sort((a, b) => rank(a) - rank(b) || a.dueAt - b.dueAt || a.seq - b.seq)
    .slice(0, room);
}

/** When the schedule next has work: the earliest due time of an entry not in flight. */
export function nextWakeup(entries: Iterable<Entry<CertTimes>>): number | undefined {
  let next: number | undefined;
  for (const e of entries) if (!e.inFlight && (next === undefined || e.dueAt < next)) next = e.dueAt;
  return next;
}

/**
 * The entry after a successful request at `now`: the new certificate, renewed at its half-life. A
 * certificate already past half-life when it arrives (the CA caps leaves at its own expiry, so near that
 * expiry they come short) is renewed half-way through what is left of it, and never sooner than
 * {@link BACKOFF_MIN_MS}, so a CA about to expire is not asked again in a tight loop.
 */
export function afterSuccess<C extends CertTimes>(e: Entry<C>, cert: C, now: number): Entry<C> {
  const halfLife = renewalTime(cert);
  const dueAt = halfLife > now ? halfLife : now + Math.max(BACKOFF_MIN_MS, Math.floor((cert.notAfter - now) / 2));
  return { ...e, cert, failures: 0, inFlight: false, dueAt, priority: "prefetch" };
}

/** The entry after a failed request: retry after the backoff; the old certificate kept while valid. */
export function afterFailure<C extends CertTimes>(e: Entry<C>, now: number, random: number): Entry<C> {
  const failures = e.failures + 1;
  const next: Entry<C> = { ...e, failures, inFlight: false, dueAt: now + backoffDelay(failures, random) };
  if (!hasValidCert(e, now)) delete next.cert;
  return next;
}
