import assert from "node:assert/strict";
import {
  ConfigError,
  describeOptions,
  formatDuration,
  loggable,
  option,
  parseDuration,
  parsers,
  readConfig,
  UsageError,
} from "./config.ts";

const SPEC = {
  port: option({ flag: "port", env: "SKIFF_PORT", help: "listen port", parser: parsers.int(1, 65535), default: 15000 }),
  ttl: option({
    flag: "ttl",
    env: "SKIFF_TTL",
    help: "certificate lifetime",
    parser: parsers.duration(),
    default: 86_400_000,
  }),
  mode: option({
    flag: "mode",
    env: "SKIFF_MODE",
    help: "mode",
    parser: parsers.oneOf(["a", "b"] as const),
    default: "a",
  }),
  verbose: option({
    flag: "verbose",
    env: "SKIFF_VERBOSE",
    help: "more output",
    parser: parsers.bool(),
    default: false,
  }),
  name: option({ flag: "name", help: "a name without env var", parser: parsers.string() }),
  token: option({ flag: "token", env: "SKIFF_TOKEN", help: "secret token", parser: parsers.string(), secret: true }),
};

function read(argv: string[], env: Record<string, string | undefined> = {}, positionals = { max: 0 }) {
  return readConfig("skiff test", SPEC, argv, env, positionals);
}

/** Runs `fn`, which must throw an instance of `type`; returns the error. */
function thrown<E extends Error>(fn: () => unknown, type: new (...args: never[]) => E): E {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof type, `expected a ${type.name}, got ${caught}`);
  return caught;
}

Deno.test("readConfig() takes a flag over its env var", () => {
  const { values } = read(["--port", "8080"], { SKIFF_PORT: "9090" });
  assert.equal(values.port, 8080);
});

Deno.test("readConfig() uses the env var when no flag is given", () => {
  const { values } = read([], { SKIFF_PORT: "9090", SKIFF_TTL: "1h", SKIFF_MODE: "b", SKIFF_VERBOSE: "1" });
  assert.equal(values.port, 9090);
  assert.equal(values.ttl, 3_600_000);
  assert.equal(values.mode, "b");
  assert.equal(values.verbose, true);
});

Deno.test("readConfig() uses the default when neither flag nor env var is given", () => {
  const { values, positionals, help } = read([]);
  assert.deepEqual(values, {
    port: 15000,
    ttl: 86_400_000,
    mode: "a",
    verbose: false,
    name: undefined,
    token: undefined,
  });
  assert.deepEqual(positionals, []);
  assert.equal(help, false);
});

Deno.test("readConfig() treats an empty env var as unset", () => {
  assert.equal(read([], { SKIFF_PORT: "" }).values.port, 15000);
});

Deno.test("readConfig() reads --flag=value and --flag value alike", async (t) => {
  const cases: [string, string[]][] = [
    ["--flag=value", ["--port=8080", "--mode=b", "--name=x=y"]],
    ["--flag value", ["--port", "8080", "--mode", "b", "--name", "x=y"]],
  ];
  for (const [name, argv] of cases) {
    await t.step(name, () => {
      const { values } = read(argv);
      assert.equal(values.port, 8080);
      assert.equal(values.mode, "b");
      assert.equal(values.name, "x=y", "only the first '=' separates name and value");
    });
  }
});

Deno.test("readConfig() takes a value that starts with '-' after a flag that needs one", () => {
  assert.equal(read(["--name", "-x"]).values.name, "-x");
});

Deno.test("readConfig() reads a boolean switch", async (t) => {
  const cases: [string, string[], Record<string, string>, boolean][] = [
    ["alone", ["--verbose"], {}, true],
    ["=true", ["--verbose=true"], {}, true],
    ["=false", ["--verbose=false"], {}, false],
    ["=0 beats env var 1", ["--verbose=0"], { SKIFF_VERBOSE: "1" }, false],
    ["absent, env var false", [], { SKIFF_VERBOSE: "false" }, false],
    ["absent", [], {}, false],
  ];
  for (const [name, argv, env, want] of cases) {
    await t.step(name, () => assert.equal(read(argv, env).values.verbose, want));
  }
  await t.step("does not swallow the next argument", () => {
    const { values, positionals } = read(["--verbose", "extra"], {}, { max: 1 });
    assert.equal(values.verbose, true);
    assert.deepEqual(positionals, ["extra"]);
  });
});

Deno.test("readConfig() reports help and positionals", () => {
  assert.equal(read(["--help"]).help, true);
  assert.equal(read(["-h"]).help, true);
  const { positionals } = read(["a", "--port", "1", "--", "--not-a-flag"], {}, { max: 2 });
  assert.deepEqual(positionals, ["a", "--not-a-flag"]);
});

Deno.test("readConfig() throws a UsageError for a flag or argument it does not take", async (t) => {
  const cases: [string, string[], RegExp][] = [
    ["unknown flag", ["--bogus"], /^skiff test: unknown flag --bogus$/],
    ["unknown flag with a value", ["--bogus=secret"], /^skiff test: unknown flag --bogus$/],
    ["single-dash flag", ["-p"], /unknown flag -p/],
    ["flag without its value", ["--port"], /^skiff test: flag --port needs a value \(an integer from 1 to 65535\)$/],
    ["unexpected positional", ["extra"], /^skiff test: unexpected argument "extra"$/],
    ["second positional over the limit", ["--port", "1", "one", "two"], /unexpected argument "two"/],
  ];
  for (const [name, argv, message] of cases) {
    await t.step(name, () => {
      const err = thrown(() => read(argv, {}, { max: name.startsWith("second") ? 1 : 0 }), UsageError);
      assert.match(err.message, message);
      assert.equal(err.code, "USAGE");
    });
  }
  await t.step("an unknown flag's value is never shown", () => {
    assert.doesNotMatch(thrown(() => read(["--bogus=secret"]), UsageError).message, /secret/);
  });
});

Deno.test("readConfig() throws a ConfigError naming the variable or flag and the value", async (t) => {
  const cases: [string, string[], Record<string, string>, string][] = [
    [
      "env int",
      [],
      { SKIFF_PORT: "abc" },
      'Cannot parse env var SKIFF_PORT="abc": expected an integer from 1 to 65535',
    ],
    [
      "env int out of range",
      [],
      { SKIFF_PORT: "70000" },
      'Cannot parse env var SKIFF_PORT="70000": expected an integer',
    ],
    ["env duration", [], { SKIFF_TTL: "abc" }, 'Cannot parse env var SKIFF_TTL="abc": expected a duration such as 24h'],
    ["env oneOf", [], { SKIFF_MODE: "c" }, 'Cannot parse env var SKIFF_MODE="c": expected one of a, b'],
    ["env bool", [], { SKIFF_VERBOSE: "yes" }, 'Cannot parse env var SKIFF_VERBOSE="yes": expected true or false'],
    ["flag int", ["--port=abc"], {}, 'Cannot parse flag --port="abc": expected an integer from 1 to 65535'],
    ["flag int after a space", ["--port", "1.5"], {}, 'Cannot parse flag --port="1.5": expected an integer'],
    ["flag duration", ["--ttl", "10"], {}, 'Cannot parse flag --ttl="10": expected a duration'],
    ["flag bool", ["--verbose=maybe"], {}, 'Cannot parse flag --verbose="maybe": expected true or false'],
    ["flag empty string", ["--name="], {}, 'Cannot parse flag --name="": expected a non-empty string'],
    ["bad flag beats a good env var", ["--port=0"], { SKIFF_PORT: "80" }, 'Cannot parse flag --port="0"'],
  ];
  for (const [name, argv, env, message] of cases) {
    await t.step(name, () => {
      const err = thrown(() => read(argv, env), ConfigError);
      assert.ok(err.message.startsWith(message), err.message);
      assert.equal(err.code, "CONFIG");
    });
  }
});

Deno.test("readConfig() redacts a secret's value in errors", async (t) => {
  const spec = {
    token: option({ flag: "token", env: "SKIFF_TOKEN", help: "t", parser: parsers.int(1, 9), secret: true }),
  };
  await t.step("env var value", () => {
    const err = thrown(() => readConfig("skiff test", spec, [], { SKIFF_TOKEN: "hunter2" }), ConfigError);
    assert.equal(err.message, "Cannot parse env var SKIFF_TOKEN=<redacted>: expected an integer from 1 to 9");
  });
  await t.step("flag value", () => {
    const err = thrown(() => readConfig("skiff test", spec, ["--token=hunter2"], {}), ConfigError);
    assert.equal(err.message, "Cannot parse flag --token=<redacted>: expected an integer from 1 to 9");
  });
  await t.step("empty flag value", () => {
    const err = thrown(() => read(["--token="]), ConfigError);
    assert.equal(err.message, "Cannot parse flag --token=<redacted>: expected a non-empty string");
  });
});

Deno.test("loggable() replaces secret values and keeps the rest", () => {
  const { values } = read(["--token", "hunter2", "--port", "8080"]);
  const logged = loggable(SPEC, values);
  assert.equal(logged.token, "<redacted>");
  assert.equal(logged.port, 8080);
  assert.equal(logged.mode, "a");
  assert.ok(!JSON.stringify(logged).includes("hunter2"));
  assert.equal(loggable(SPEC, read([]).values).token, undefined, "an unset secret stays unset");
});

Deno.test("readConfig() names the flag and the env var of a missing required option", () => {
  const spec = {
    dir: option({ flag: "dir", env: "SKIFF_DIR", help: "d", parser: parsers.string(), required: true }),
  };
  const err = thrown(() => readConfig("skiff ca init", spec, [], {}), ConfigError);
  assert.equal(err.message, "skiff ca init: missing required flag --dir (or env var SKIFF_DIR)");
  assert.equal(readConfig("skiff ca init", spec, [], { SKIFF_DIR: "/x" }).values.dir, "/x");
  assert.equal(readConfig("skiff ca init", spec, ["--dir", "/y"], {}).values.dir, "/y");
  assert.equal(readConfig("skiff ca init", spec, ["--help"], {}).help, true, "--help needs no required option");
  const noEnv = { dir: option({ flag: "dir", help: "d", parser: parsers.string(), required: true }) };
  assert.equal(
    thrown(() => readConfig("skiff x", noEnv, [], {}), ConfigError).message,
    "skiff x: missing required flag --dir",
  );
});

Deno.test("parseDuration() reads Go-style durations into milliseconds", async (t) => {
  const cases: [string, number | undefined][] = [
    ["1h30m", 5_400_000],
    ["500ms", 500],
    ["90d", 90 * 86_400_000],
    ["24h", 86_400_000],
    ["90s", 90_000],
    ["1m30s", 90_000],
    ["1.5h", 5_400_000],
    ["0", 0],
    ["0s", 0],
    ["10", undefined],
    ["", undefined],
    ["abc", undefined],
    ["1h30", undefined],
    ["h", undefined],
    ["-1s", undefined],
    ["1H", undefined],
    [" 1h", undefined],
    ["1h ", undefined],
    ["1w", undefined],
  ];
  for (const [text, want] of cases) {
    await t.step(JSON.stringify(text), () => assert.equal(parseDuration(text), want));
  }
});

Deno.test("formatDuration() writes the largest whole unit, and parseDuration() reads it back", async (t) => {
  const cases: [number, string][] = [
    [0, "0"],
    [1, "1ms"],
    [1500, "1500ms"],
    [90_000, "90s"],
    [60_000, "1m"],
    [5_400_000, "90m"],
    [3_600_000, "1h"],
    [90 * 86_400_000, "2160h"],
  ];
  for (const [ms, text] of cases) {
    await t.step(text, () => {
      assert.equal(formatDuration(ms), text);
      assert.equal(parseDuration(text), ms);
    });
  }
});

Deno.test("describeOptions() lists each flag with its help, default and env var", () => {
  const text = describeOptions(SPEC);
  const lines = text.split("\n");
  assert.equal(lines.length, Object.keys(SPEC).length);
  assert.match(lines[0], /^ {2}--port VALUE +listen port \(default 15000\) \[env SKIFF_PORT\]$/);
  assert.match(lines[3], /^ {2}--verbose +more output \[env SKIFF_VERBOSE\]$/);
  assert.match(lines[4], /^ {2}--name VALUE +a name without env var$/);
});
