import assert from "node:assert/strict";
import { ReceiveBuffer } from "./buffer.ts";
import { bytes, text } from "./test_util.ts";

Deno.test("ReceiveBuffer appends without touching bytes consumed and handed out before", () => {
  const buffer = new ReceiveBuffer();
  const first = bytes("abc");
  buffer.append(first);
  assert.equal(buffer.bytes, first, "a lone chunk is kept as is, not copied");
  buffer.append(bytes("def"));
  const handedOut = buffer.bytes.subarray(0, 4);
  buffer.consume(4);
  for (let i = 0; i < 1000; i++) buffer.append(bytes("x"));
  assert.equal(text(handedOut), "abcd");
  assert.equal(text(buffer.bytes), "ef" + "x".repeat(1000));
  assert.equal(text(buffer.clear()), "ef" + "x".repeat(1000));
  assert.equal(buffer.length, 0);
});
