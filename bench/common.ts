/**
 * What several benchmarks need alike: a process's memory as /proc tells it, and waiting for a readiness URL.
 *
 * @module
 */

/**
 * A process's resident set now (`VmRSS`), at its peak so far (`VmHWM`), and the part of it that is the process's
 * own (`RssAnon`: heaps, stacks; the rest, `RssFile`, is mostly the Deno executable's pages, shared by every Deno
 * process on the machine and reclaimable), in MiB.
 */
export function memoryOf(pid: number): { rss: number; peak: number; anon: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024, anon: kb("RssAnon") / 1024 };
}

/** A process's resident set now, in MiB. */
export function rssMiB(pid: number): number {
  return memoryOf(pid).rss;
}

/** Resolves once `url` answers 200; throws after `timeoutMs`, naming `what`. */
export async function until200(what: string, url: string, timeoutMs = 30_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs;;) {
    const status = await fetch(url).then(async (r) => (await r.body?.cancel(), r.status), () => 0);
    if (status === 200) return;
    if (Date.now() > deadline) throw new Error(`${what} is not ready after ${timeoutMs / 1000} s (${url}: ${status})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
