import assert from "node:assert/strict";
import { ChunkedDecoder, encodeChunk, encodeLastChunk } from "./chunked.ts";
import { Http1Error } from "./errors.ts";
import { DEFAULT_LIMITS, type HeaderList } from "./head.ts";
import { bytes, text } from "./test_util.ts";

/** Decodes `raw` fed `piece` bytes at a time (input grows until a step makes progress, as the connection does). */
function decode(raw: string, piece = raw.length): { body: string; trailers: HeaderList; rest: string } {
  const decoder = new ChunkedDecoder(DEFAULT_LIMITS);
  const all = bytes(raw);
  let body = "";
  let start = 0;
  let available = Math.min(piece, all.length);
  while (!decoder.done) {
    const consumed = decoder.step(all.subarray(start, available));
    if (decoder.data) body += text(decoder.data);
    start += consumed;
    if (consumed === 0) {
      if (available === all.length) throw new Error("input ended before the last chunk");
      available = Math.min(available + piece, all.length);
    }
  }
  return { body, trailers: decoder.trailers, rest: raw.slice(start) };
}

Deno.test("ChunkedDecoder decodes chunks, extensions and trailers, in one piece or byte by byte", async (t) => {
  const raw = '5\r\nhello\r\n1;name=value;q="x y"\r\n,\r\n0006\r\n world\r\n' +
    "0\r\nX-Checksum: abc\r\nx-other:  1 \r\n\r\nNEXT";
  for (const piece of [raw.length, 1, 2, 7]) {
    await t.step(`${piece} bytes at a time`, () => {
      assert.deepEqual(decode(raw, piece), {
        body: "hello, world",
        trailers: [["x-checksum", "abc"], ["x-other", "1"]],
        rest: "NEXT",
      });
    });
  }
  await t.step("uppercase hex and no trailers", () => {
    assert.deepEqual(decode(`A\r\n${"x".repeat(10)}\r\n0\r\n\r\n`), { body: "x".repeat(10), trailers: [], rest: "" });
  });
  await t.step("drops framing and routing fields from trailers", () => {
    const got = decode("0\r\nContent-Length: 5\r\nHost: evil\r\nTransfer-Encoding: chunked\r\nX-Ok: 1\r\n\r\n");
    assert.deepEqual(got.trailers, [["x-ok", "1"]]);
  });
});

Deno.test("ChunkedDecoder refuses malformed chunks", async (t) => {
  const cases: [string, string][] = [
    ["non-hex size", "g\r\nx\r\n0\r\n\r\n"],
    ["negative size", "-1\r\nx\r\n0\r\n\r\n"],
    ["0x prefix", "0x1\r\nx\r\n0\r\n\r\n"],
    ["plus sign", "+1\r\nx\r\n0\r\n\r\n"],
    ["empty size line", "\r\nx\r\n0\r\n\r\n"],
    ["size overflowing 2^53", "fffffffffffffffff\r\nx\r\n0\r\n\r\n"],
    ["size overflowing 2^64 to a small number", "10000000000000001\r\nx\r\n0\r\n\r\n"],
    ["space after the size without extension", "1 \r\nx\r\n0\r\n\r\n"],
    ["garbage after the size", "1x\r\nx\r\n0\r\n\r\n"],
    ["control byte in an extension", "1;a=\x01\r\nx\r\n0\r\n\r\n"],
    ["bare LF after the size", "1\nx\r\n0\r\n\r\n"],
    ["data not followed by CRLF", "1\r\nxy\r\n0\r\n\r\n"],
    ["data followed by bare LF", "1\r\nx\n0\r\n\r\n"],
    ["data followed by CR and garbage", "1\r\nx\rz0\r\n\r\n"],
    ["size line longer than 4 KiB", `1;${"a".repeat(5000)}\r\nx\r\n0\r\n\r\n`],
    ["bare LF ending the trailers", "0\r\nX: 1\r\n\n"],
    ["obs-fold in the trailers", "0\r\nX: 1\r\n 2\r\n\r\n"],
    ["NUL in a trailer", "0\r\nX: \0\r\n\r\n"],
  ];
  for (const [name, raw] of cases) {
    await t.step(name, () => {
      for (const piece of [raw.length, 1]) assert.throws(() => decode(raw, piece), { status: 400 });
    });
  }
  await t.step("too many trailer fields → 431", () => {
    assert.throws(
      () => decode(`0\r\n${"X: 1\r\n".repeat(101)}\r\n`),
      (e) => e instanceof Http1Error && e.status === 431,
    );
  });
});

Deno.test("encodeChunk() and encodeLastChunk() round-trip through the decoder", () => {
  const head = bytes("HEAD");
  const wire = text(encodeChunk(bytes("x".repeat(300)), head)) + text(encodeChunk(bytes("!"))) +
    text(encodeLastChunk([["x-sum", "9"]]));
  assert.ok(wire.startsWith("HEAD12c\r\n"));
  assert.deepEqual(decode(wire.slice(4)), { body: "x".repeat(300) + "!", trailers: [["x-sum", "9"]], rest: "" });
  assert.equal(text(encodeLastChunk([])), "0\r\n\r\n");
});
