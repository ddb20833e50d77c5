/**
 * For netns_linux_test.ts, run with `deno run` (whose JavaScript main thread is the process's first thread, as
 * in `skiff ztunnel`; `deno test` runs tests on another): a Worker switches into namespace B for the first time
 * while the main thread is switched into namespace A, then says which namespace its thread is in afterwards.
 * Prints `{ host, visited, inside, after }` as JSON.
 *
 * @module
 */

import { inNetns, loadNetnsSupport } from "../netns_linux.ts";

const [a, b] = Deno.args;
const self = globalThis as unknown as {
  name?: string;
  onmessage: (e: MessageEvent<SharedArrayBuffer>) => void;
  postMessage(m: unknown): void;
};
loadNetnsSupport();
const here = () => Deno.readLinkSync("/proc/thread-self/ns/net");

if (self.name === "netns-worker") {
  self.onmessage = (e) => {
    const inside = inNetns(b, here);
    const after = here();
    const flag = new Int32Array(e.data);
    Atomics.store(flag, 0, 1); // the main thread may leave its namespace now
    Atomics.notify(flag, 0);
    self.postMessage({ inside, after });
  };
} else {
  const worker = new Worker(import.meta.url, { type: "module", name: "netns-worker" });
  const answer = new Promise<{ inside: string; after: string }>((resolve) => worker.onmessage = (e) => resolve(e.data));
  const host = here();
  const flag = new SharedArrayBuffer(4);
  const visited = inNetns(a, () => {
    worker.postMessage(flag);
    Atomics.wait(new Int32Array(flag), 0, 0, 20_000); // stay switched until the worker came back
    return here();
  });
  console.log(JSON.stringify({ host, visited, ...await answer }));
  worker.terminate();
}
