/**
 * inNetns() with threads (root only): a worker thread's first switch happens while the main thread is switched into
 * a pod, as when a two-thread ztunnel enrols a pod on both threads at once or dials while a worker starts; the
 * worker must come back to its own namespace, not to the pod the main thread is visiting.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = Deno.uid() === 0;

async function ip(...args: string[]) {
  const out = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

Deno.test({
  name: "inNetns() in a worker returns to the worker's namespace while the main thread is in a pod's [root]",
  ignore: !ROOT,
  fn: async () => {
    const names = [`sk-nsthr-a-${Deno.pid}`, `sk-nsthr-b-${Deno.pid}`];
    try {
      for (const n of names) await ip("netns", "add", n);
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-all",
          fileURLToPath(new URL("./testdata/netns_threads.ts", import.meta.url)),
          ...names.map((n) => `/var/run/netns/${n}`),
        ],
        env: { RUST_BACKTRACE: "0" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const { host, visited, inside, after } = JSON.parse(new TextDecoder().decode(out.stdout));
      assert.notEqual(visited, host, "the main thread was in the first pod meanwhile");
      assert.notEqual(inside, host, "the worker was in the second pod");
      assert.equal(after, host, "and came back to its own namespace, not to the pod the main thread was in");
    } finally {
      for (const n of names) await ip("netns", "del", n).catch(() => {});
    }
  },
});
