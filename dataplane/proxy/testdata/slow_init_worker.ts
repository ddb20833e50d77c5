/**
 * A worker for workers_test.ts whose init serves before it ends, as ztunnel's does (it opens each pod's listeners
 * in turn): it waits, up to `waitMs`, for `want` messages to reach it, then reports how many did.
 *
 * @module
 */

import { postToMain, serveAsWorker } from "../workers.ts";

let seen = 0;
serveAsWorker({
  messagesDuringInit: true,
  async init(i, body) {
    const b = body as { want: number; waitMs: number };
    postToMain({ started: i });
    for (const until = Date.now() + b.waitMs; seen < b.want && Date.now() < until;) {
      await new Promise((r) => setTimeout(r, 10));
    }
    postToMain({ initDone: i, seenDuringInit: seen });
  },
  message() {
    seen++;
  },
});
