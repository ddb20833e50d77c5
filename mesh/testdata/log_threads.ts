/**
 * For log_test.ts: the main thread and one Worker each log `LINES` long lines to stderr at once, as a proxy's
 * threads do under load. With `whole` both call {@link logFromThreads} first (each thread then writes each
 * line whole); without it, each keeps its buffered destination.
 *
 * @module
 */

import { exitProcess, flushLogsAsync, logFromThreads, logger } from "../log.ts";

const LINES = 2_000;
const PAD = "x".repeat(1_500);
const whole = Deno.args.includes("whole");

function burst(thread: number): void {
  if (whole) logFromThreads({ worker: thread });
  const log = logger("burst");
  for (let i = 0; i < LINES; i++) log.info({ thread, i, pad: PAD, ...(i % 2 ? { odd: true } : {}) }, "line");
}

const self = globalThis as unknown as { postMessage?: (m: unknown) => void; name?: string };
if (self.name === "log-burst") {
  burst(1);
  await flushLogsAsync(); // as a worker does before the pool ends it (dataplane/proxy/workers.ts)
  self.postMessage!("done");
} else {
  const worker = new Worker(import.meta.url, { type: "module", name: "log-burst" });
  const done = new Promise((resolve) => worker.onmessage = resolve);
  burst(0);
  await done;
  worker.terminate();
  exitProcess(0);
}
