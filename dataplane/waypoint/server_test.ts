import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { classify, sniff } from "./server.ts";

const bytes = (s: string) => new TextEncoder().encode(s);
const PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/** Everything `s` holds now and until it ends, as text. */
async function drain(s: PassThrough): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const c of s) chunks.push(c);
  return new TextDecoder().decode(Buffer.concat(chunks));
}

Deno.test("classify() tells HTTP/2, HTTP/1 and TCP apart, or asks for more bytes", async (t) => {
  const cases: [name: string, input: Uint8Array, want: ReturnType<typeof classify>][] = [
    ["nothing yet", bytes(""), undefined],
    ["the whole HTTP/2 preface", bytes(PREFACE), "http2"],
    ["the preface and a SETTINGS frame", bytes(`${PREFACE}\x00\x00\x00\x04\x00\x00\x00\x00\x00`), "http2"],
    ["part of the preface", bytes("PRI * HTTP/2.0\r\n"), undefined],
    ["only P", bytes("P"), undefined],
    ["a PRI request line that is not the preface", bytes("PRI * HTTP/1.1\r\n"), "http1"],
    ["GET request line", bytes("GET / HTTP/1.1\r\n"), "http1"],
    ["POST, which shares P with the preface", bytes("POST /x HTTP/1.1\r\n"), "http1"],
    ["a method and its space only", bytes("DELETE "), "http1"],
    ["a method without its space yet", bytes("GET"), undefined],
    ["a method with a hyphen", bytes("VERSION-CONTROL /r HTTP/1.1\r\n"), "http1"],
    ["a method with an underscore", bytes("MY_METHOD / HTTP/1.1\r\n"), "http1"],
    ["a method cut after its hyphen", bytes("M-"), undefined],
    ["a leading hyphen", bytes("-ERR x"), "tcp"],
    ["a TLS ClientHello", new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), "tcp"],
    ["a leading space", bytes(" GET / HTTP/1.1\r\n"), "tcp"],
    ["a lowercase method", bytes("get / HTTP/1.1\r\n"), "tcp"],
    ["a Redis command", bytes("*1\r\n$4\r\nPING\r\n"), "tcp"],
    ["21 capitals without a space", bytes("ABCDEFGHIJKLMNOPQRSTU"), "tcp"],
    ["20 capitals without a space", bytes("ABCDEFGHIJKLMNOPQRST"), undefined],
  ];
  for (const [name, input, want] of cases) {
    await t.step(`${name} → ${want}`, () => assert.equal(classify(input), want));
  }
});

Deno.test("sniff() tells the protocol and puts the bytes it read back", async (t) => {
  const cases: [name: string, chunks: string[], want: string][] = [
    ["an HTTP/1 request in one write", ["GET / HTTP/1.1\r\nhost: web\r\n\r\n"], "http1"],
    ["an HTTP/1 request line split over writes", ["GE", "T / HTTP/1.1\r\n", "host: web\r\n\r\n"], "http1"],
    ["the HTTP/2 preface split over writes", ["PRI * HTTP/2.0\r\n", "\r\nSM\r\n\r\n"], "http2"],
    ["binary bytes", ["\x16\x03\x01\x02\x00"], "tcp"],
  ];
  for (const [name, chunks, want] of cases) {
    await t.step(name, async () => {
      const s = new PassThrough();
      const kind = sniff(s, 5_000);
      for (const c of chunks) {
        s.write(bytes(c));
        await new Promise((r) => setTimeout(r, 1));
      }
      assert.equal(await kind, want);
      s.end();
      assert.equal(await drain(s), chunks.join(""));
    });
  }
});

Deno.test("sniff() takes a silent client as TCP after the timeout and loses nothing sent later", async () => {
  const s = new PassThrough();
  assert.equal(await sniff(s, 10), "tcp");
  s.end(bytes("hello from a server-first protocol"));
  assert.equal(await drain(s), "hello from a server-first protocol");
});

Deno.test("sniff() takes a partial method as TCP after the timeout and keeps it", async () => {
  const s = new PassThrough();
  const kind = sniff(s, 20);
  s.write(bytes("HELO"));
  assert.equal(await kind, "tcp");
  s.end(bytes(" there\r\n"));
  assert.equal(await drain(s), "HELO there\r\n");
});

Deno.test("sniff() takes a stream that ends before any byte as TCP", async () => {
  const s = new PassThrough();
  const kind = sniff(s, 5_000);
  s.end();
  assert.equal(await kind, "tcp");
  assert.equal(await drain(s), "");
});

Deno.test("sniff() takes a stream that ends after a partial method as TCP and keeps its bytes", async () => {
  // A client that writes a few bytes and half-closes (`printf PING | nc`): EOF arrives before a decision.
  const s = new PassThrough();
  const errors: Error[] = [];
  s.on("error", (e) => errors.push(e));
  const kind = sniff(s, 5_000);
  s.end(bytes("PING"));
  assert.equal(await kind, "tcp");
  assert.deepEqual(errors.map((e) => e.message), []);
  assert.equal(await drain(s), "PING");
});

Deno.test("sniff() lets go of a stream destroyed before any byte, without waiting for its timeout", async () => {
  // A tunnel reset (RST_STREAM) before its first bytes: it never ends, it closes.
  const s = new PassThrough();
  const kind = sniff(s, 60_000);
  s.destroy();
  assert.equal(await kind, "tcp");
});
