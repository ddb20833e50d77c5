/**
 * A `skiff` child process for integration tests: started with `deno run main.ts MODE ...`, its JSON log lines
 * collected for the test to search, stopped by its own pid (SIGTERM, then SIGKILL after 5 s), or killed outright
 * to play a crash.
 */

import { v8FlagsFor } from "../../mesh/v8_flags.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export class SkiffProcess implements AsyncDisposable {
  readonly lines: Record<string, unknown>[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<unknown>;
  #waiters: (() => void)[] = [];
  #exited = false;

  constructor(readonly name: string, args: string[], env: Record<string, string> = {}) {
    // The mode's V8 flags, as the installed launcher passes them (mesh/v8_flags.ts), so tests and benchmarks run
    // what is deployed; a caller that sets DENO_V8_FLAGS (bench/memory.ts, to try others) gets only those.
    const v8 = env.DENO_V8_FLAGS === undefined ? v8FlagsFor(args[0]) : "";
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", ...(v8 ? [`--v8-flags=${v8}`] : []), MAIN, ...args],
      env: { LOG_FORMAT: "json", LOG_LEVEL: "debug", RUST_BACKTRACE: "0", ...env },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#done = Promise.all([this.#read(this.#child.stdout), this.#read(this.#child.stderr)]);
    this.#child.status.then(() => {
      this.#exited = true;
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** The process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Resolves with the exit status. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#child.status;
  }

  /** Waits for a log line satisfying `test` (searching from line `from`). */
  async waitForLog(test: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000, from = 0) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.slice(from).find(test);
      if (found) return found;
      if (Date.now() > deadline || this.#exited) {
        const why = this.#exited ? "exited" : "no such log line";
        throw new Error(`${this.name}: ${why}; last: ${JSON.stringify(this.lines.slice(-8))}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        timer = setTimeout(r, 200);
      });
      clearTimeout(timer);
    }
  }

  /** Kills the process with SIGKILL (a crash) and waits for it. */
  async kill() {
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.#child.status;
    await this.#done;
  }

  async #read(stream: ReadableStream<Uint8Array>) {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const line of parts) {
        try {
          this.lines.push(JSON.parse(line));
        } catch {
          this.lines.push({ msg: line });
        }
      }
      for (const w of this.#waiters.splice(0)) w();
    }
  }

  async [Symbol.asyncDispose]() {
    await terminate(this.#child);
    await this.#done;
  }
}

/** Stops a child the test started: SIGTERM, then SIGKILL if it still runs after `graceMs`. */
export async function terminate(child: Deno.ChildProcess, graceMs = 5000): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, graceMs);
  await child.status;
  clearTimeout(timer);
}
