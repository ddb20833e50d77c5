/**
 * Test apps in pods: the scripts of `tests/apps/` run as processes inside a pod's network namespace
 * (`ip netns exec`, which execs, so the pid is the app's), and one-shot commands (curl, the gRPC client) run
 * there to completion.
 */

import type { Pod } from "./netns.ts";
import { terminate } from "./process.ts";

const APPS = new URL("../apps/", import.meta.url).pathname;

/** A long-running app in a pod, stopped by its pid on dispose. */
export class AppProcess implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly output: string[] = [];

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
  }

  /** Starts `tests/apps/SCRIPT` in `pod` and waits for its `listening` line. */
  static async start(pod: Pick<Pod, "netns">, script: string, args: string[]): Promise<AppProcess> {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", pod.netns, Deno.execPath(), "run", "--allow-all", `${APPS}${script}`, ...args],
      env: { RUST_BACKTRACE: "0", DENO_NO_UPDATE_CHECK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const app = new AppProcess(child);
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const stderr = new Response(child.stderr).text();
    let seen = "";
    const deadline = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 30_000);
    for (;;) {
      const { value, done } = await lines.read();
      if (done) {
        clearTimeout(deadline);
        await child.status;
        throw new Error(`${script} in ${pod.netns} exited before listening: ${seen} ${await stderr}`);
      }
      seen += value;
      if (seen.includes("listening")) break;
    }
    clearTimeout(deadline);
    app.output.push(seen);
    (async () => {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) break;
        app.output.push(value);
      }
    })();
    stderr.then((t) => t && app.output.push(t));
    return app;
  }

  async [Symbol.asyncDispose]() {
    await terminate(this.#child);
  }
}

/** Runs `cmd` inside `pod` to completion; returns its exit code and output. */
export async function runIn(pod: Pick<Pod, "netns">, cmd: string[], timeoutMs = 60_000) {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", pod.netns, ...cmd],
    env: { RUST_BACKTRACE: "0", DENO_NO_UPDATE_CHECK: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs a script of `tests/apps/` inside `pod` to completion. */
export function runApp(pod: Pick<Pod, "netns">, script: string, args: string[], timeoutMs = 60_000) {
  return runIn(pod, [Deno.execPath(), "run", "--allow-all", `${APPS}${script}`, ...args], timeoutMs);
}
