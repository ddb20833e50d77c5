/**
 * A worker for workers_test.ts: it echoes, counts, and dies on demand in each way a real worker can (an uncaught
 * error, closing itself, hanging, a failing init).
 *
 * @module
 */

import { postToMain, serveAsWorker } from "../workers.ts";

let index = 0;
let seen = 0;
serveAsWorker({
  init(i, body) {
    index = i;
    const b = body as { failInit?: boolean; order: string[] };
    if (b.failInit) throw new Error("cannot listen: address in use");
    postToMain({ started: i, state: b.order });
  },
  message(body) {
    const b = body as { die?: string; note?: string };
    if (b.die === "throw") {
      setTimeout(() => {
        throw new Error("a bug outside every handler");
      });
    } else if (b.die === "close") self.close();
    else if (b.die === "hang") { for (;;) { /* a worker stuck in a loop answers no ping */ } }
    else seen++;
  },
  ask: () => ({ index, seen }),
  async call(body) {
    const b = body as { sleepMs: number; label: string; fail?: string };
    await new Promise((r) => setTimeout(r, b.sleepMs));
    if (b.fail) throw new Error(b.fail);
    return `${index}:${b.label}`;
  },
  status: () => ({ index, seen }),
});
