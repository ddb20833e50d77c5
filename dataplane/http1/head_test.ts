import assert from "node:assert/strict";
import { Http1Error } from "./errors.ts";
import {
  DEFAULT_LIMITS,
  encodeHead,
  latin1,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
  SectionScanner,
} from "./head.ts";
import { requestFraming } from "./framing.ts";
import { bytes, text } from "./test_util.ts";

/** Scans and parses a complete request head the way Http1Connection does, framing check included. */
function parseRequest(raw: string): RequestHead {
  const buf = bytes(raw);
  const scanner = new SectionScanner(DEFAULT_LIMITS, true, true);
  const end = scanner.scan(buf);
  if (end < 0) throw new Error(`incomplete head: ${JSON.stringify(raw.slice(0, 80))}`);
  const head = parseRequestHead(latin1(buf, scanner.start, end));
  requestFraming(head);
  return head;
}

function parseResponse(raw: string): ResponseHead {
  const buf = bytes(raw);
  const end = new SectionScanner(DEFAULT_LIMITS, true).scan(buf);
  if (end < 0) throw new Error("incomplete head");
  return parseResponseHead(latin1(buf, 0, end));
}

/** The status a request is refused with, or "ok". */
function verdict(raw: string): number | "ok" {
  try {
    parseRequest(raw);
    return "ok";
  } catch (error) {
    if (error instanceof Http1Error) return error.status;
    throw error;
  }
}

Deno.test("parseRequestHead() keeps order, repeats and opaque bytes, lowercases names, trims OWS", () => {
  const head = parseRequest(
    "POST /a?b=c HTTP/1.1\r\nHost: example.com:8080\r\nX-Multi: one\r\nx-multi:two\r\n" +
      "X-Spaces: \t padded value \t\r\nX-Latin1: caf\xe9 \x80\xff\r\nEmpty:\r\n\r\n",
  );
  assert.deepEqual(head, {
    method: "POST",
    target: "/a?b=c",
    version: "HTTP/1.1",
    headers: [
      ["host", "example.com:8080"],
      ["x-multi", "one"],
      ["x-multi", "two"],
      ["x-spaces", "padded value"],
      ["x-latin1", "caf\xe9 \x80\xff"],
      ["empty", ""],
    ],
  });
  // What was parsed serialises back to the same bytes (values are opaque octets).
  const again = text(encodeHead(head, null, []));
  assert.equal(parseRequest(again).headers[4][1], "caf\xe9 \x80\xff");
});

Deno.test("parseRequestHead() accepts the request-target forms and HTTP/1.0 without Host", () => {
  assert.equal(parseRequest("CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n").target, "10.0.0.1:443");
  assert.equal(parseRequest("CONNECT [::1]:80 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").target, "[::1]:80");
  assert.equal(parseRequest("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target, "*");
  assert.equal(parseRequest("GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n").target, "http://a/b");
  assert.equal(parseRequest("GET / HTTP/1.0\r\n\r\n").version, "HTTP/1.0");
  assert.equal(parseRequest("GET / HTTP/1.1\r\nHost:\r\n\r\n").headers[0][1], "", "an empty Host is valid");
});

Deno.test("SectionScanner skips empty lines before a request line and resumes across partial input", () => {
  const raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
  const scanner = new SectionScanner(DEFAULT_LIMITS, true, true);
  const all = bytes(raw);
  for (let n = 1; n < all.length; n++) {
    const end = scanner.scan(all.subarray(0, n));
    if (end >= 0) {
      assert.equal(n, raw.indexOf("NEXT"));
      assert.equal(end, raw.indexOf("NEXT"));
      assert.equal(scanner.start, 4);
      return;
    }
  }
  assert.fail("head never completed");
});

Deno.test("parseRequestHead() refuses what parsers could read differently", async (t) => {
  const ok = "GET / HTTP/1.1\r\nHost: a\r\n";
  const cases: [string, string, number][] = [
    ["whitespace before colon", ok + "X-A : b\r\n\r\n", 400],
    ["tab before colon", ok + "Transfer-Encoding\t: chunked\r\n\r\n", 400],
    ["obs-fold", ok + "X-A: b\r\n c\r\n\r\n", 400],
    ["obs-fold with tab", ok + "X-A: b\r\n\tc\r\n\r\n", 400],
    ["bare LF everywhere", "GET / HTTP/1.1\nHost: a\n\n", 400],
    ["bare LF after a field", ok + "X-A: b\n\r\n", 400],
    ["bare LF ending the head", ok + "X-A: b\r\n\n\r\n", 400],
    ["bare CR in a value", ok + "X-A: b\rc\r\n\r\n", 400],
    ["NUL in a value", ok + "X-A: b\0c\r\n\r\n", 400],
    ["DEL in a value", ok + "X-A: b\x7fc\r\n\r\n", 400],
    ["vertical tab in a value", ok + "X-A: b\x0bc\r\n\r\n", 400],
    ["field line without colon", ok + "X-A b\r\n\r\n", 400],
    ["empty field name", ok + ": b\r\n\r\n", 400],
    ["non-token field name", ok + "X(A): b\r\n\r\n", 400],
    ["latin1 in a field name", ok + "X-\xe9: b\r\n\r\n", 400],
    ["missing Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400],
    ["two Host fields", ok + "Host: b\r\n\r\n", 400],
    ["two Host fields in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400],
    ["Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400],
    ["Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400],
    ["Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400],
    ["two spaces after the method", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["space after the version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400],
    ["space inside the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["tab as separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["no version", "GET /\r\nHost: a\r\n\r\n", 400],
    ["lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400],
    ["HTTP/1", "GET / HTTP/1\r\nHost: a\r\n\r\n", 400],
    ["HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505],
    ["HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505],
    ["non-token method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["control byte in the target", "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["non-ASCII byte in the target", "GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["relative target", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["asterisk with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["CONNECT without a port", "CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["CONNECT to a path", "CONNECT /a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ["request line over 8 KiB", `GET /${"a".repeat(8 * 1024)} HTTP/1.1\r\nHost: a\r\n\r\n`, 414],
    ["head over 64 KiB", ok + `X-A: ${"a".repeat(64 * 1024)}\r\n\r\n`, 431],
    ["101 fields", ok + "X-A: b\r\n".repeat(100) + "\r\n", 431],
  ];
  for (const [name, raw, status] of cases) {
    await t.step(`${name} → ${status}`, () => assert.equal(verdict(raw), status));
  }
  await t.step("100 fields → accepted", () => assert.equal(verdict(ok + "X-A: b\r\n".repeat(99) + "\r\n"), "ok"));
});

Deno.test("SectionScanner refuses an oversized head before it is complete", () => {
  const scanner = new SectionScanner(DEFAULT_LIMITS, true, true);
  assert.equal(scanner.scan(bytes(`GET /${"a".repeat(8000)}`)), -1);
  assert.throws(() => scanner.scan(bytes(`GET /${"a".repeat(9000)}`)), { status: 414 });
  const fields = new SectionScanner(DEFAULT_LIMITS, true, true);
  assert.throws(() => fields.scan(bytes(`GET / HTTP/1.1\r\nX: ${"a".repeat(70 * 1024)}`)), { status: 431 });
});

Deno.test("parseResponseHead() reads status lines, with or without a reason", async (t) => {
  await t.step("with reason", () => {
    const head = parseResponse("HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n");
    assert.deepEqual(head, {
      version: "HTTP/1.1",
      status: 404,
      reason: "Not Found Here",
      headers: [["content-length", "0"]],
    });
  });
  await t.step("empty reason", () => assert.equal(parseResponse("HTTP/1.0 200 \r\n\r\n").reason, ""));
  await t.step(
    "no SP before the missing reason",
    () => assert.equal(parseResponse("HTTP/1.1 204\r\n\r\n").status, 204),
  );
  const refused: [string, string][] = [
    ["two-digit status", "HTTP/1.1 20 OK\r\n\r\n"],
    ["status 600", "HTTP/1.1 600 X\r\n\r\n"],
    ["letters in status", "HTTP/1.1 2x0 OK\r\n\r\n"],
    ["status glued to reason", "HTTP/1.1 200OK\r\n\r\n"],
    ["control byte in reason", "HTTP/1.1 200 O\x01K\r\n\r\n"],
    ["bare LF", "HTTP/1.1 200 OK\n\n"],
    ["obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"],
    ["empty status line", "\r\nHTTP/1.1 200 OK\r\n\r\n"],
  ];
  for (const [name, raw] of refused) {
    await t.step(`refuses ${name}`, () => assert.throws(() => parseResponse(raw), Http1Error));
  }
});

Deno.test("encodeHead() refuses anything that would not parse back the same", async (t) => {
  const request = (headers: [string, string][], target = "/"): RequestHead => ({
    method: "GET",
    target,
    version: "HTTP/1.1",
    headers,
  });
  const cases: [string, () => unknown][] = [
    ["CRLF in a value", () => encodeHead(request([["x-a", "b\r\nx-injected: 1"]]), null, [])],
    ["LF in a value", () => encodeHead(request([["x-a", "b\nc"]]), null, [])],
    ["NUL in a value", () => encodeHead(request([["x-a", "b\0"]]), null, [])],
    ["a character above 0xff", () => encodeHead(request([["x-a", "\u20ac"]]), null, [])],
    ["a colon in a name", () => encodeHead(request([["x-a:", "b"]]), null, [])],
    ["a space in a name", () => encodeHead(request([["x a", "b"]]), null, [])],
    ["a space in the target", () => encodeHead(request([], "/a b"), null, [])],
    ["CRLF in the target", () => encodeHead(request([], "/\r\n"), null, [])],
    [
      "CRLF in a reason",
      () => encodeHead({ version: "HTTP/1.1", status: 200, reason: "OK\r\n", headers: [] }, null, []),
    ],
    ["status 1000", () => encodeHead({ version: "HTTP/1.1", status: 1000, reason: "", headers: [] }, null, [])],
  ];
  for (const [name, encode] of cases) {
    await t.step(name, () => assert.throws(encode, Http1Error));
  }
});

Deno.test("encodeHead() writes the start line, kept fields, then the extra ones", () => {
  const head: ResponseHead = {
    version: "HTTP/1.1",
    status: 200,
    reason: "OK",
    headers: [["content-length", "5"], ["x-a", "b"], ["transfer-encoding", "chunked"]],
  };
  const out = encodeHead(head, (n) => n === "content-length" || n === "transfer-encoding", [["content-length", "7"]]);
  assert.equal(text(out), "HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 7\r\n\r\n");
});
