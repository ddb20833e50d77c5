import assert from "node:assert/strict";
import { assertInvalid } from "../../tests/harness/assert.ts";
import {
  decodeHandoffMessage,
  encodeHandoffMessage,
  type HandoffMessage,
  LineSplitter,
  MAX_LINE_BYTES,
  parseHandoffLine,
} from "./handoff.ts";

const ADD = {
  type: "add",
  uid: "Kubernetes//Pod/shop/web-1",
  workload: { name: "web-1", namespace: "shop", serviceAccount: "web" },
  netns: "/var/run/netns/web-1",
};

Deno.test("every handoff message round-trips through one line", async (t) => {
  const msgs: HandoffMessage[] = [
    { type: "hello", version: 1 },
    ADD as HandoffMessage,
    { ...ADD, netns: "/proc/4242/ns/net" } as HandoffMessage,
    { type: "keep", uid: "u1" },
    { type: "del", uid: "u1" },
    { type: "release", uid: "u1" },
    { type: "snapshot-sent" },
    { type: "ack" },
    { type: "nack", reason: "cannot open /var/run/netns/x: no such file" },
  ];
  for (const m of msgs) {
    await t.step(m.type, () => {
      const line = encodeHandoffMessage(m);
      assert.ok(line.endsWith("\n") && !line.slice(0, -1).includes("\n"));
      assert.deepEqual(parseHandoffLine(line.slice(0, -1)), m);
    });
  }
});

Deno.test("decodeHandoffMessage() names the field of a bad message", async (t) => {
  const cases: [unknown, string, RegExp?][] = [
    [{ type: "launch" }, "message.type", /expected one of hello, add/],
    [{}, "message.type"],
    [[], "message"],
    [{ type: "hello" }, "message.version", /required/],
    [{ type: "hello", version: 0 }, "message.version"],
    [{ ...ADD, uid: "" }, "message.uid"],
    [{ ...ADD, workload: undefined }, "message.workload", /expected an object/],
    [{ ...ADD, workload: { ...ADD.workload, namespace: "Shop" } }, "message.workload.namespace"],
    [{ ...ADD, workload: { ...ADD.workload, extra: 1 } }, "message.workload.extra", /not a known field/],
    [{ ...ADD, netns: "/etc/passwd" }, "message.netns", /\/var\/run\/netns\/NAME/],
    [{ ...ADD, netns: "/var/run/netns/../../etc/shadow" }, "message.netns"],
    [{ ...ADD, netns: "/proc/self/ns/net" }, "message.netns"],
    [{ type: "del" }, "message.uid"],
    [{ type: "nack" }, "message.reason"],
    [{ type: "ack", uid: "x" }, "message.uid", /not a known field/],
  ];
  for (const [value, field, message] of cases) {
    await t.step(`${JSON.stringify(value).slice(0, 60)} → ${field}`, () => {
      assertInvalid(() => decodeHandoffMessage(value), field, message);
    });
  }
});

Deno.test("parseHandoffLine() rejects non-JSON and over-long lines", () => {
  assertInvalid(() => parseHandoffLine("{nope"), "message", /not JSON/);
  assertInvalid(
    () => parseHandoffLine(JSON.stringify({ type: "nack", reason: "x".repeat(MAX_LINE_BYTES) })),
    "message",
    /longer than/,
  );
});

Deno.test("LineSplitter yields whole lines across any split and bounds what it buffers", async (t) => {
  const text = encodeHandoffMessage({ type: "hello", version: 1 }) + encodeHandoffMessage(ADD as HandoffMessage) +
    encodeHandoffMessage({ type: "snapshot-sent" });
  const bytes = new TextEncoder().encode(text);
  await t.step("one byte at a time", () => {
    const s = new LineSplitter();
    const lines = [...bytes].flatMap((b) => s.push(Uint8Array.of(b)));
    assert.deepEqual(lines.map((l) => parseHandoffLine(l).type), ["hello", "add", "snapshot-sent"]);
  });
  await t.step("all at once", () => {
    assert.equal(new LineSplitter().push(bytes).length, 3);
  });
  await t.step("a peer that never sends a newline is cut off at the limit", () => {
    const s = new LineSplitter(64);
    assert.deepEqual(s.push(new Uint8Array(64).fill(0x61)), []);
    assertInvalid(() => s.push(Uint8Array.of(0x61)), "message", /longer than 64 bytes/);
  });
  await t.step("a long line inside one chunk is refused", () => {
    const long = new Uint8Array(100).fill(0x61);
    long[99] = 0x0a;
    assertInvalid(() => new LineSplitter(64).push(long), "message", /longer than 64 bytes/);
  });
  await t.step("invalid UTF-8 is refused", () => {
    assertInvalid(() => new LineSplitter().push(Uint8Array.of(0xff, 0xfe, 0x0a)), "message", /UTF-8/);
  });
});
