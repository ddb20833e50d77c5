import assert from "node:assert/strict";
import { contentLength, type HeaderField, requestProblem, responseProblem, trailersProblem } from "./fields.ts";

const connect: HeaderField[] = [[":method", "CONNECT"], [":authority", "10.0.1.2:8080"]];
const get: HeaderField[] = [[":method", "GET"], [":scheme", "https"], [":path", "/x"], [":authority", "a"]];

Deno.test("requestProblem() accepts well-formed CONNECT and GET requests", () => {
  assert.equal(requestProblem([...connect, ["forwarded", 'for="10.0.1.3:5555"'], ["te", "trailers"]]), null);
  assert.equal(requestProblem(get), null);
  assert.equal(requestProblem([[":method", "OPTIONS"], [":scheme", "http"], [":path", "*"]]), null);
});

Deno.test("requestProblem() names what makes a request malformed (RFC 9113 §8.2, §8.3, §8.5)", async (t) => {
  const cases: [string, HeaderField[], RegExp][] = [
    ["CONNECT with :path", [...connect, [":path", "/"]], /CONNECT with :scheme or :path/],
    ["CONNECT with :scheme", [[":method", "CONNECT"], [":scheme", "https"], [":authority", "a:1"]], /CONNECT/],
    ["CONNECT without :authority", [[":method", "CONNECT"]], /without :authority/],
    ["extended CONNECT", [...connect, [":protocol", "websocket"]], /":protocol" is not allowed/],
    ["no :method", [[":scheme", "https"], [":path", "/"]], /:method/],
    ["no :path", [[":method", "GET"], [":scheme", "https"]], /missing :path/],
    ["relative :path", [[":method", "GET"], [":scheme", "https"], [":path", "x"]], /:path "x"/],
    ["repeated pseudo", [...connect, [":authority", "b:1"]], /repeated/],
    ["pseudo after regular", [[":method", "CONNECT"], ["x", "1"], [":authority", "a:1"]], /after a regular/],
    ["response pseudo", [...connect, [":status", "200"]], /":status" is not allowed/],
    ["uppercase name", [...connect, ["X-Foo", "1"]], /not a lowercase token/],
    ["space in name", [...connect, ["x foo", "1"]], /not a lowercase token/],
    ["empty name", [...connect, ["", "1"]], /not a lowercase token/],
    ["CRLF in value", [...connect, ["x", "a\r\nevil: 1"]], /NUL, CR or LF/],
    ["NUL in value", [...connect, ["x", "a\0b"]], /NUL, CR or LF/],
    ["leading space", [...connect, ["x", " a"]], /whitespace/],
    ["trailing tab", [...connect, ["x", "a\t"]], /whitespace/],
    ["connection", [...connect, ["connection", "close"]], /connection-specific/],
    ["transfer-encoding", [...connect, ["transfer-encoding", "chunked"]], /connection-specific/],
    ["upgrade", [...connect, ["upgrade", "h2c"]], /connection-specific/],
    ["te gzip", [...connect, ["te", "gzip"]], /only "trailers"/],
  ];
  for (const [name, fields, pattern] of cases) {
    await t.step(name, () => assert.match(requestProblem(fields) ?? "accepted", pattern));
  }
});

Deno.test("responseProblem() and trailersProblem() check their own sections", () => {
  assert.equal(responseProblem([[":status", "200"], ["baggage", "k8s.namespace.name=a"]]), null);
  assert.match(responseProblem([["x", "1"]]) ?? "", /:status/);
  assert.match(responseProblem([[":status", "20"]]) ?? "", /:status/);
  assert.match(responseProblem([[":status", "200"], [":path", "/"]]) ?? "", /not allowed/);
  assert.equal(trailersProblem([["grpc-status", "0"]]), null);
  assert.match(trailersProblem([[":status", "200"]]) ?? "", /not allowed/);
});

Deno.test("contentLength() reads one decimal value and refuses anything else", () => {
  assert.equal(contentLength([["content-length", "42"]]), 42);
  assert.equal(contentLength([["content-length", "7"], ["content-length", "7"]]), 7);
  assert.equal(contentLength([["x", "1"]]), undefined);
  for (const bad of ["-1", "1.5", "0x10", "", " 5", "1e3", "9".repeat(16)]) {
    assert.equal(contentLength([["content-length", bad]]), "invalid", bad);
  }
  assert.equal(contentLength([["content-length", "7"], ["content-length", "8"]]), "invalid");
});
