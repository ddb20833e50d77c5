import assert from "node:assert/strict";
import { Http1Error } from "./errors.ts";
import {
  CHUNKED,
  contentLength,
  errorResponse,
  expectsContinue,
  type Framing,
  keepAlive,
  NO_BODY,
  requestFraming,
  responseFraming,
  UNTIL_CLOSE,
} from "./framing.ts";
import { headerTokens, headerValues, stripHopByHop } from "./fields.ts";
import type { HeaderList, HttpVersion, RequestHead, ResponseHead } from "./head.ts";
import { text } from "./test_util.ts";

const request = (headers: HeaderList, version: HttpVersion = "HTTP/1.1"): RequestHead => ({
  method: "POST",
  target: "/",
  version,
  headers: [["host", "a"], ...headers],
});

const response = (status: number, headers: HeaderList, version: HttpVersion = "HTTP/1.1"): ResponseHead => ({
  version,
  status,
  reason: "",
  headers,
});

/** The framing, or the status of the Http1Error thrown. */
function outcome(decide: () => Framing): Framing | number {
  try {
    return decide();
  } catch (error) {
    if (error instanceof Http1Error) return error.status;
    throw error;
  }
}

Deno.test("requestFraming() follows RFC 9112 §6.3 and refuses every smuggling shape", async (t) => {
  const cases: [string, HeaderList, Framing | number, HttpVersion?][] = [
    ["no framing fields: no body", [], NO_BODY],
    ["Content-Length", [["content-length", "10"]], contentLength(10)],
    ["Content-Length: 0", [["content-length", "0"]], contentLength(0)],
    ["Content-Length with leading zeros", [["content-length", "007"]], contentLength(7)],
    ["Content-Length with OWS", [["content-length", " 5\t"]], contentLength(5)],
    ["repeated identical Content-Length lines", [["content-length", "5"], ["content-length", "5"]], contentLength(5)],
    ["identical Content-Length list", [["content-length", "5, 5"]], contentLength(5)],
    ["chunked", [["transfer-encoding", "chunked"]], CHUNKED],
    ["Chunked in capitals", [["transfer-encoding", "Chunked"]], CHUNKED],
    ["differing Content-Length lines (double CL)", [["content-length", "5"], ["content-length", "6"]], 400],
    ["differing Content-Length list", [["content-length", "5, 6"]], 400],
    ["negative Content-Length", [["content-length", "-1"]], 400],
    ["plus-signed Content-Length", [["content-length", "+5"]], 400],
    ["hexadecimal Content-Length", [["content-length", "0x5"]], 400],
    ["decimal point in Content-Length", [["content-length", "5.0"]], 400],
    ["empty Content-Length", [["content-length", ""]], 400],
    ["trailing comma in Content-Length", [["content-length", "5,"]], 400],
    ["NBSP around Content-Length", [["content-length", "5\xa0"]], 400],
    ["Content-Length beyond 2^53", [["content-length", "9007199254740993"]], 413],
    ["Content-Length and Transfer-Encoding (CL.TE)", [["content-length", "5"], ["transfer-encoding", "chunked"]], 400],
    ["Transfer-Encoding and Content-Length (TE.CL)", [["transfer-encoding", "chunked"], ["content-length", "5"]], 400],
    ["chunked then identity", [["transfer-encoding", "chunked, identity"]], 400],
    ["chunked then identity on two lines", [["transfer-encoding", "chunked"], ["transfer-encoding", "identity"]], 400],
    ["chunked twice", [["transfer-encoding", "chunked, chunked"]], 400],
    ["final coding gzip", [["transfer-encoding", "gzip"]], 400],
    ["xchunked", [["transfer-encoding", "xchunked"]], 501],
    ["identity alone", [["transfer-encoding", "identity"]], 501],
    ["gzip then chunked", [["transfer-encoding", "gzip, chunked"]], 501],
    ["chunked with a parameter", [["transfer-encoding", "chunked;q=1"]], 400],
    ["chunked followed by NBSP", [["transfer-encoding", "chunked\xa0"]], 400],
    ["empty Transfer-Encoding", [["transfer-encoding", ""]], 400],
    ["Transfer-Encoding in HTTP/1.0", [["transfer-encoding", "chunked"]], 400, "HTTP/1.0"],
  ];
  for (const [name, headers, expected, version] of cases) {
    await t.step(name, () => assert.deepEqual(outcome(() => requestFraming(request(headers, version))), expected));
  }
});

Deno.test("responseFraming() knows the bodiless responses and reads the rest until close", async (t) => {
  const cases: [string, string, ResponseHead, Framing | number][] = [
    ["HEAD with Content-Length", "HEAD", response(200, [["content-length", "100"]]), NO_BODY],
    ["HEAD with chunked", "HEAD", response(200, [["transfer-encoding", "chunked"]]), NO_BODY],
    ["204 with Content-Length", "GET", response(204, [["content-length", "5"]]), NO_BODY],
    ["304 with Content-Length", "GET", response(304, [["content-length", "5"]]), NO_BODY],
    ["100 Continue", "POST", response(100, []), NO_BODY],
    ["101 Switching Protocols", "GET", response(101, [["upgrade", "websocket"]]), NO_BODY],
    ["2xx to CONNECT", "CONNECT", response(200, [["content-length", "5"]]), NO_BODY],
    ["407 to CONNECT", "CONNECT", response(407, [["content-length", "5"]]), contentLength(5)],
    ["Content-Length", "GET", response(200, [["content-length", "5"]]), contentLength(5)],
    ["chunked", "GET", response(200, [["transfer-encoding", "chunked"]]), CHUNKED],
    ["neither: until close", "GET", response(200, []), UNTIL_CLOSE],
    ["HTTP/1.0 without length", "GET", response(200, [], "HTTP/1.0"), UNTIL_CLOSE],
    ["CL and TE", "GET", response(200, [["content-length", "5"], ["transfer-encoding", "chunked"]]), 400],
    ["gzip only", "GET", response(200, [["transfer-encoding", "gzip"]]), 501],
    ["TE in HTTP/1.0", "GET", response(200, [["transfer-encoding", "chunked"]], "HTTP/1.0"), 400],
    ["differing CL", "GET", response(200, [["content-length", "1"], ["content-length", "2"]]), 400],
  ];
  for (const [name, method, head, expected] of cases) {
    await t.step(name, () => assert.deepEqual(outcome(() => responseFraming(head, method)), expected));
  }
});

Deno.test("keepAlive() follows RFC 9112 §9.3", async (t) => {
  const cases: [string, RequestHead | ResponseHead, Framing | undefined, boolean][] = [
    ["HTTP/1.1 by default", request([]), undefined, true],
    ["Connection: close", request([["connection", "close"]]), undefined, false],
    ["close among other tokens", request([["connection", "keep-alive, Close"]]), undefined, false],
    ["HTTP/1.0 by default", request([], "HTTP/1.0"), undefined, false],
    ["HTTP/1.0 with keep-alive", request([["connection", "Keep-Alive"]], "HTTP/1.0"), undefined, true],
    ["response delimited by close", response(200, []), UNTIL_CLOSE, false],
    ["response with length", response(200, [["content-length", "1"]]), contentLength(1), true],
  ];
  for (const [name, head, framing, expected] of cases) {
    await t.step(name, () => assert.equal(keepAlive(head, framing), expected));
  }
});

Deno.test("expectsContinue() only in HTTP/1.1", () => {
  assert.equal(expectsContinue(request([["expect", "100-Continue"]])), true);
  assert.equal(expectsContinue(request([["expect", "100-continue"]], "HTTP/1.0")), false);
  assert.equal(expectsContinue(request([])), false);
});

Deno.test("stripHopByHop() removes connection fields and the ones Connection nominates", async (t) => {
  const headers: HeaderList = [
    ["host", "a"],
    ["connection", "keep-alive, X-Secret, Upgrade, host, content-length"],
    ["keep-alive", "timeout=5"],
    ["proxy-connection", "keep-alive"],
    ["te", "trailers"],
    ["transfer-encoding", "chunked"],
    ["upgrade", "websocket"],
    ["trailer", "x-checksum"],
    ["x-secret", "1"],
    ["content-length", "3"],
    ["x-kept", "1"],
  ];
  await t.step("plain", () => {
    assert.deepEqual(stripHopByHop(headers), [["host", "a"], ["content-length", "3"], ["x-kept", "1"]]);
  });
  await t.step("keeping Upgrade announces it in Connection", () => {
    assert.deepEqual(stripHopByHop(headers, { keepUpgrade: true }), [
      ["host", "a"],
      ["upgrade", "websocket"],
      ["content-length", "3"],
      ["x-kept", "1"],
      ["connection", "upgrade"],
    ]);
  });
});

Deno.test("headerValues() and headerTokens() read repeated and list fields", () => {
  const headers: HeaderList = [["a", "1"], ["b", "x"], ["a", " Two ,, three\t"]];
  assert.deepEqual(headerValues(headers, "a"), ["1", " Two ,, three\t"]);
  assert.deepEqual(headerTokens(headers, "a"), ["1", "two", "three"]);
  assert.deepEqual(headerValues(headers, "c"), []);
});

Deno.test("errorResponse() is a complete response that closes the connection", () => {
  assert.equal(
    text(errorResponse(431)),
    "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 36\r\n" +
      "connection: close\r\n\r\n431 Request Header Fields Too Large\n",
  );
});
