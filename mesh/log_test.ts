import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { formatPlain, LogConfigError, readLogSettings } from "./log.ts";

Deno.test("readLogSettings() defaults to info, plain on a terminal and json otherwise", () => {
  assert.deepEqual(readLogSettings({}, true), { level: "info", format: "plain" });
  assert.deepEqual(readLogSettings({}, false), { level: "info", format: "json" });
});

Deno.test("readLogSettings() treats an empty variable as unset, as the rest of the config does", () => {
  assert.deepEqual(readLogSettings({ LOG_LEVEL: "", LOG_FORMAT: "" }, false), { level: "info", format: "json" });
  assert.deepEqual(readLogSettings({ LOG_LEVEL: "", LOG_FORMAT: "" }, true), { level: "info", format: "plain" });
});

Deno.test("readLogSettings() reads every level and format, in any case", async (t) => {
  for (const level of ["trace", "debug", "info", "warn", "error", "fatal", "silent"]) {
    await t.step(level, () => {
      assert.equal(readLogSettings({ LOG_LEVEL: level }, false).level, level);
      assert.equal(readLogSettings({ LOG_LEVEL: level.toUpperCase() }, false).level, level);
    });
  }
  await t.step("json on a terminal", () => assert.equal(readLogSettings({ LOG_FORMAT: "json" }, true).format, "json"));
  await t.step(
    "PLAIN off a terminal",
    () => assert.equal(readLogSettings({ LOG_FORMAT: "PLAIN" }, false).format, "plain"),
  );
});

Deno.test("readLogSettings() names the variable and the value it cannot use", async (t) => {
  const cases: [string, Record<string, string>, string][] = [
    ["unknown level", { LOG_LEVEL: "bogus" }, 'Cannot use env var LOG_LEVEL="bogus": expected one of trace, debug'],
    ["numeric level", { LOG_LEVEL: "30" }, 'Cannot use env var LOG_LEVEL="30"'],
    ["unknown format", { LOG_FORMAT: "xml" }, 'Cannot use env var LOG_FORMAT="xml": expected one of json, plain'],
    ["bad format with a good level", { LOG_LEVEL: "debug", LOG_FORMAT: "text" }, 'LOG_FORMAT="text"'],
  ];
  for (const [name, env, message] of cases) {
    await t.step(name, () => {
      let caught: unknown;
      try {
        readLogSettings(env, false);
      } catch (err) {
        caught = err;
      }
      assert.ok(caught instanceof LogConfigError, `expected a LogConfigError, got ${caught}`);
      assert.equal(caught.code, "LOG_CONFIG");
      assert.ok(caught.message.includes(message), caught.message);
    });
  }
});

Deno.test("formatPlain() renders time, LEVEL, component: msg and key=value fields", async (t) => {
  const line = (rec: Record<string, unknown>) => formatPlain(JSON.stringify(rec));
  const cases: [string, Record<string, unknown>, string][] = [
    [
      "fields",
      { level: 30, time: 0, pid: 1, hostname: "h", component: "ca", msg: "issued", serial: "ab", n: 3 },
      "1970-01-01T00:00:00.000Z INFO  ca: issued serial=ab n=3\n",
    ],
    [
      "quoted values",
      { level: 40, time: 0, component: "ztunnel", msg: "slow", peer: "a b", obj: { x: 1 }, ok: true },
      '1970-01-01T00:00:00.000Z WARN  ztunnel: slow peer="a b" obj={"x":1} ok=true\n',
    ],
    [
      "error",
      { level: 50, time: 0, component: "control", msg: "failed" },
      "1970-01-01T00:00:00.000Z ERROR control: failed\n",
    ],
    ["no component", { level: 20, time: 0, msg: "m" }, "1970-01-01T00:00:00.000Z DEBUG skiff: m\n"],
    ["unknown level", { level: 35, time: 0, component: "c", msg: "m" }, "1970-01-01T00:00:00.000Z 35    c: m\n"],
  ];
  for (const [name, rec, want] of cases) {
    await t.step(name, () => assert.equal(line(rec), want));
  }
  await t.step("a line that is not JSON passes through", () => assert.equal(formatPlain("not json\n"), "not json\n"));
});

const LOG_TS = new URL("./log.ts", import.meta.url).href;
const MESH_DIR = fileURLToPath(new URL(".", import.meta.url));

/**
 * Runs `body` as a script that imports log.ts, with `env` set, and returns its exit code and output. The script
 * lives beside this file so that deno.json's import map resolves log.ts's bare "pino".
 */
async function runScript(body: string, env: Record<string, string>) {
  const script = await Deno.makeTempFile({ dir: MESH_DIR, prefix: "log_probe_", suffix: ".ts" });
  try {
    await Deno.writeTextFile(script, `import { exitProcess, logger } from ${JSON.stringify(LOG_TS)};\n${body}\n`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1", LOG_LEVEL: "info", LOG_FORMAT: "json", ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    await Deno.remove(script);
  }
}

const LINES = 20_000;
const LOG_MANY = `const log = logger("probe");
for (let i = 0; i < ${LINES}; i++) log.info({ i }, "line");
exitProcess(0);`;

Deno.test("exitProcess() delivers every buffered JSON log line to stderr before exiting", async () => {
  const { code, stderr } = await runScript(LOG_MANY, { LOG_FORMAT: "json" });
  assert.equal(code, 0, stderr.slice(-2000));
  const lines = stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, LINES);
  lines.forEach((l, i) => {
    assert.ok(l.includes('"component":"probe"'), `line ${i}: ${l}`);
    const rec = JSON.parse(l);
    assert.equal(rec.i, i, `line ${i} is in order`);
    assert.equal(rec.level, 30);
    assert.equal(rec.msg, "line");
  });
});

Deno.test("exitProcess() delivers every buffered plain log line to stderr before exiting", async () => {
  const { code, stderr } = await runScript(LOG_MANY, { LOG_FORMAT: "plain" });
  assert.equal(code, 0, stderr.slice(-2000));
  const lines = stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, LINES);
  lines.forEach((l, i) => assert.match(l, new RegExp(`^\\S+ INFO  probe: line i=${i}$`), `line ${i}`));
});

Deno.test("a process that ends through process.exit still flushes its log lines", async () => {
  const body = `import process from "node:process";
const log = logger("probe");
for (let i = 0; i < ${LINES}; i++) log.info({ i }, "line");
process.exit(3);`;
  const { code, stderr } = await runScript(body, {});
  assert.equal(code, 3, stderr.slice(-2000));
  assert.equal(stderr.split("\n").filter((l) => l.includes('"component":"probe"')).length, LINES);
});

Deno.test("LOG_LEVEL below a line's level drops it, and the child logger's component is on every line", async () => {
  const body = `const a = logger("alpha");
const b = logger("beta");
a.debug("hidden");
a.warn({ k: "v" }, "shown");
b.error("also shown");
exitProcess(0);`;
  const { code, stderr } = await runScript(body, { LOG_LEVEL: "warn" });
  assert.equal(code, 0, stderr);
  const recs = stderr.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
  assert.deepEqual(recs.map((r) => [r.component, r.level, r.msg]), [["alpha", 40, "shown"], [
    "beta",
    50,
    "also shown",
  ]]);
  assert.equal(recs[0].k, "v");
});

Deno.test("a bad LOG_LEVEL makes the first logger() fail, naming LOG_LEVEL and the value", async () => {
  const { code, stderr } = await runScript(`logger("probe").info("never");\nexitProcess(0);`, { LOG_LEVEL: "bogus" });
  assert.notEqual(code, 0);
  assert.ok(stderr.includes('LOG_LEVEL="bogus"'), stderr);
  assert.ok(!stderr.includes("never"), stderr);
});

Deno.test("a bad LOG_FORMAT makes the first logger() fail, naming LOG_FORMAT and the value", async () => {
  const { code, stderr } = await runScript(`logger("probe").info("never");\nexitProcess(0);`, { LOG_FORMAT: "xml" });
  assert.notEqual(code, 0);
  assert.ok(stderr.includes('LOG_FORMAT="xml"'), stderr);
});

Deno.test("logFromThreads(): two threads logging bursts into one pipe write whole lines, each with its thread", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", fileURLToPath(new URL("./testdata/log_threads.ts", import.meta.url)), "whole"],
    env: { LOG_FORMAT: "json", RUST_BACKTRACE: "0" },
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0);
  const lines = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l !== "");
  const byThread = [0, 0];
  let broken = 0;
  for (const line of lines) {
    let rec;
    try {
      rec = JSON.parse(line);
    } catch {
      broken++;
      continue;
    }
    assert.equal(rec.worker, rec.thread, "each line carries its own thread's field");
    assert.equal(rec.i, byThread[rec.thread], "in order");
    assert.equal(rec.odd === true, rec.i % 2 === 1, "with its own fields and no other line's");
    byThread[rec.thread]++;
  }
  assert.equal(broken, 0, "no line was cut by another thread's");
  assert.deepEqual(byThread, [2_000, 2_000]);
});
