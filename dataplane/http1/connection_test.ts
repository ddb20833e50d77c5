import assert from "node:assert/strict";
import { once } from "node:events";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { Http1Connection } from "./connection.ts";
import { Http1Error } from "./errors.ts";
import { CHUNKED, contentLength, expectsContinue, keepAlive, NO_BODY, responseFraming } from "./framing.ts";
import { headerValue } from "./fields.ts";
import type { RequestHead, ResponseHead } from "./head.ts";
import { bytes, delay, readAll, readToEnd, readUntil, socketPair, text } from "./test_util.ts";

const ok = (headers: [string, string][] = []): ResponseHead => ({
  version: "HTTP/1.1",
  status: 200,
  reason: "OK",
  headers,
});
const post = (target: string, headers: [string, string][] = []): RequestHead => ({
  method: "POST",
  target,
  version: "HTTP/1.1",
  headers: [["host", "backend"], ...headers],
});

/** Byte `i` of a test body: a pattern that catches reordered, repeated or lost chunks. */
const patternByte = (i: number) => (i * 31 + (i >>> 16)) & 0xff;
function pattern(from: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = patternByte(from + i);
  return out;
}

/** Reads a body to its end, checking it against the pattern, and returns its length. */
async function checkPattern(body: AsyncIterable<Uint8Array>): Promise<number> {
  let at = 0;
  for await (const chunk of body) {
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] !== patternByte(at + i)) assert.fail(`body byte ${at + i} differs`);
    }
    at += chunk.length;
  }
  return at;
}

/** Closes a connection while its raw peer ends too, as a well-behaved client would. */
async function closeBoth(conn: Http1Connection, peer: Duplex) {
  const closed = conn.close();
  peer.resume();
  if (!peer.writableEnded) peer.end();
  await closed;
}

Deno.test("Http1Connection serves two requests pipelined in one write, keeping the second's bytes", async () => {
  await using pair = socketPair();
  const [client, server] = pair;
  const conn = new Http1Connection(server, { role: "server" });
  client.write(bytes(
    "POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
      "GET /two HTTP/1.1\r\nHost: a\r\n\r\n",
  ));
  const first = await conn.readRequest();
  assert.equal(first?.target, "/one");
  assert.equal(text(await readAll(conn.readBody())), "hello");
  conn.writeHead(ok(), contentLength(2));
  conn.bodyWriter(contentLength(2)).end(bytes("ok"));

  const second = await conn.readRequest();
  assert.equal(second?.target, "/two");
  assert.equal((await readAll(conn.readBody())).length, 0);
  conn.writeHead({ ...ok(), status: 204, reason: "No Content" }, NO_BODY);

  const responses = await readUntil(client, (s) => s.includes("204 No Content\r\n\r\n"));
  assert.equal(responses, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n");
  client.end();
  assert.equal(await conn.readRequest(), null);
  await closeBoth(conn, client);
});

Deno.test("Http1Connection parses a head that arrives one byte at a time, after skipped empty lines", async () => {
  await using pair = socketPair();
  const [client, server] = pair;
  const conn = new Http1Connection(server, { role: "server", initial: bytes("\r\n") });
  const reading = conn.readRequest();
  for (const byte of bytes("\r\nGET /slow HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n")) {
    client.write(new Uint8Array([byte]));
    await delay(0);
  }
  const head = await reading;
  assert.deepEqual(head?.headers, [["host", "a"], ["x-a", "b"]]);
  await closeBoth(conn, client);
});

Deno.test("Http1Connection client and server exchange chunked bodies with trailers", async () => {
  await using pair = socketPair();
  const client = new Http1Connection(pair[0], { role: "client" });
  const server = new Http1Connection(pair[1], { role: "server" });

  client.writeHead(post("/up", [["content-length", "999"], ["te", "trailers"]]), CHUNKED);
  const upload = client.bodyWriter(CHUNKED);
  upload.write(bytes("abc"));
  upload.write(bytes(""));
  upload.write(bytes("def"));
  upload.finish([["x-sum", "6"]]);

  const request = await server.readRequest();
  assert.ok(request);
  assert.equal(headerValue(request.headers, "content-length"), undefined, "framing fields follow the framing");
  assert.equal(headerValue(request.headers, "transfer-encoding"), "chunked");
  const body = server.readBody();
  assert.equal(text(await readAll(body)), "abcdef");
  assert.deepEqual(body.trailers, [["x-sum", "6"]]);

  server.writeHead(ok([["content-type", "application/grpc"]]), CHUNKED);
  const download = server.bodyWriter(CHUNKED);
  download.write(bytes("x".repeat(70_000)));
  download.finish([["grpc-status", "0"]]);

  const response = await client.readResponse("POST");
  assert.equal(response.status, 200);
  const responseBody = client.readBody();
  assert.equal((await readAll(responseBody)).length, 70_000);
  assert.deepEqual(responseBody.trailers, [["grpc-status", "0"]]);
  assert.ok(client.reusable && server.reusable);
  await Promise.all([client.close(), server.close()]);
});

Deno.test("Http1Connection refuses smuggling shapes and answers with the error's status", async (t) => {
  const cases: [string, string, number][] = [
    ["CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400],
    ["TE chunked, identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400],
    ["TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501],
    ["double CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400],
    ["space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400],
    ["missing Host", "GET / HTTP/1.1\r\n\r\n", 400],
    ["HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505],
    ["request line over 8 KiB", `GET /${"a".repeat(9000)} HTTP/1.1\r\n`, 414],
    ["head over 64 KiB", `GET / HTTP/1.1\r\nHost: a\r\nX: ${"a".repeat(70_000)}`, 431],
  ];
  for (const [name, raw, status] of cases) {
    await t.step(`${name} → ${status}`, async () => {
      await using pair = socketPair();
      const [client, server] = pair;
      const conn = new Http1Connection(server, { role: "server" });
      client.write(bytes(raw));
      const error = await conn.readRequest().then(() => null, (e) => e);
      assert.ok(error instanceof Http1Error, `expected an Http1Error, got ${error}`);
      assert.equal(error.status, status);
      await assert.rejects(conn.readRequest(), /cannot read another message/);
      const answer = readToEnd(client);
      client.end();
      await conn.sendError(error.status);
      assert.match(await answer, new RegExp(`^HTTP/1.1 ${status} .*\r\nconnection: close\r\n\r\n${status} `, "s"));
    });
  }
  await t.step("malformed chunk → the body fails with 400", async () => {
    await using pair = socketPair();
    const [client, server] = pair;
    const conn = new Http1Connection(server, { role: "server" });
    client.write(
      bytes("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nfffffffffffffffffff\r\n"),
    );
    await conn.readRequest();
    await assert.rejects(readAll(conn.readBody()), { status: 400, code: "MALFORMED" });
    await closeBoth(conn, client);
  });
});

Deno.test("readRequest() ends cleanly, times out idle connections and refuses stalled heads", async (t) => {
  await t.step("peer closes before a request: null", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server" });
    pair[0].end(bytes("\r\n"));
    assert.equal(await conn.readRequest(), null);
    await closeBoth(conn, pair[0]);
  });
  await t.step("idle timeout with no byte: null", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server", idleTimeoutMs: 30 });
    assert.equal(await conn.readRequest(), null);
    await closeBoth(conn, pair[0]);
  });
  await t.step("idle timeout inside a head: 408", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server", idleTimeoutMs: 30 });
    pair[0].write(bytes("GET / HTTP/1.1\r\nHo"));
    await assert.rejects(conn.readRequest(), { status: 408, code: "TIMEOUT" });
    await closeBoth(conn, pair[0]);
  });
  await t.step("peer closes inside a head: CLOSED", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server" });
    pair[0].end(bytes("GET / HTTP/1.1\r\n"));
    await assert.rejects(conn.readRequest(), { code: "CLOSED" });
    await closeBoth(conn, pair[0]);
  });
  await t.step("peer resets while idle: null", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server" });
    const reading = conn.readRequest();
    pair[0].destroy();
    assert.equal(await reading, null);
  });
});

Deno.test("Http1Connection streams a 20 MB body with backpressure, without buffering it", async () => {
  await using pair = socketPair();
  const [client, server] = pair;
  const conn = new Http1Connection(server, { role: "server" });
  const size = 20 * 1024 * 1024;
  client.write(bytes(`PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`));
  let sent = 0;
  const produce = (async () => {
    while (sent < size) {
      const n = Math.min(64 * 1024, size - sent);
      const more = client.write(pattern(sent, n));
      sent += n;
      if (!more) await once(client, "drain");
    }
  })();
  await conn.readRequest();
  const body = conn.readBody();
  await delay(100);
  // The consumer has not read: the producer must be stuck after a few chunks (duplex buffers plus the body's).
  assert.ok(sent <= 512 * 1024, `producer sent ${sent} bytes while the body was not read`);
  assert.ok(body.readableLength <= 128 * 1024, `body buffered ${body.readableLength} bytes`);
  assert.equal(await checkPattern(body), size);
  await produce;
  await closeBoth(conn, client);
});

Deno.test("Http1Connection chunk-encodes a 20 MB upload and the writer waits for the reader", async () => {
  await using pair = socketPair();
  const client = new Http1Connection(pair[0], { role: "client" });
  const server = new Http1Connection(pair[1], { role: "server" });
  const size = 20 * 1024 * 1024;
  client.writeHead(post("/big"), CHUNKED);
  const writer = client.bodyWriter(CHUNKED);
  const produce = (async () => {
    for (let at = 0; at < size; at += 100_000) {
      if (!writer.write(pattern(at, Math.min(100_000, size - at)))) await once(writer, "drain");
    }
    writer.finish([["x-size", String(size)]]);
    await once(writer, "finish");
  })();
  await server.readRequest();
  const body = server.readBody();
  await delay(100);
  assert.ok(writer.bytesWritten <= 1024 * 1024, `writer accepted ${writer.bytesWritten} bytes while nothing was read`);
  assert.equal(await checkPattern(body), size);
  assert.deepEqual(body.trailers, [["x-size", String(size)]]);
  await produce;
  await Promise.all([client.close(), server.close()]);
});

Deno.test("Http1BodyWriter enforces Content-Length and destroys the connection on a mismatch", async (t) => {
  const cases: [string, (w: import("./body.ts").Http1BodyWriter) => void, number][] = [
    ["writing past the length", (w) => w.write(bytes("abcd")), 3],
    ["ending short of the length", (w) => w.end(bytes("ab")), 3],
    ["writing to a bodiless message", (w) => w.write(bytes("a")), -1],
  ];
  for (const [name, misuse, length] of cases) {
    await t.step(name, async () => {
      await using pair = socketPair();
      const conn = new Http1Connection(pair[1], { role: "server" });
      const framing = length < 0 ? NO_BODY : contentLength(length);
      conn.writeHead(ok(), framing);
      const writer = conn.bodyWriter(framing);
      misuse(writer);
      await new Promise((resolve) => writer.on("close", resolve));
      assert.equal((writer.errored as Http1Error | null)?.code, "LENGTH_MISMATCH");
      assert.ok(pair[1].destroyed, "the connection was not destroyed");
      assert.ok(!conn.reusable);
    });
  }
});

Deno.test("writeHead() sends a head and a small body in one write, and a lone head without waiting", async () => {
  await using pair = socketPair();
  const [client, server] = pair;
  const writes: string[] = [];
  const write = server.write.bind(server) as (chunk: Uint8Array) => boolean;
  server.write = ((chunk: Uint8Array) => (writes.push(text(chunk)), write(chunk))) as typeof server.write;
  client.resume();
  const conn = new Http1Connection(server, { role: "server" });

  conn.writeHead(ok(), contentLength(5));
  conn.bodyWriter(contentLength(5)).end(bytes("hello"));
  assert.deepEqual(writes, ["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]);

  conn.writeHead(ok(), CHUNKED);
  const writer = conn.bodyWriter(CHUNKED);
  await delay(0); // a streaming response: its head must not wait for the first body bytes
  assert.equal(writes[1], "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
  writer.write(bytes("data"));
  writer.end();
  await once(writer, "finish");
  assert.deepEqual(writes.slice(2), ["4\r\ndata\r\n", "0\r\n\r\n"]);
  await closeBoth(conn, client);
});

Deno.test("readResponse() frames HEAD, 204 and 304 responses without a body and keeps reading after them", async () => {
  await using pair = socketPair();
  const [raw, upstream] = pair;
  const conn = new Http1Connection(upstream, { role: "client" });
  raw.write(bytes(
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" +
      "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n" +
      "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
  ));
  for (const [method, status] of [["HEAD", 200], ["GET", 204], ["GET", 304]] as const) {
    const head = await conn.readResponse(method);
    assert.equal(head.status, status);
    assert.equal((await readAll(conn.readBody())).length, 0);
  }
  await conn.readResponse("GET");
  assert.equal(text(await readAll(conn.readBody())), "ok");
  await closeBoth(conn, raw);
});

Deno.test("writeHead() keeps the Content-Length of a response to HEAD", async () => {
  await using pair = socketPair();
  const conn = new Http1Connection(pair[1], { role: "server" });
  const got = readUntil(pair[0], (s) => s.endsWith("\r\n\r\n"));
  const head = ok([["content-length", "100"]]);
  conn.writeHead(head, responseFraming(head, "HEAD"));
  assert.equal(await got, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n");
  await closeBoth(conn, pair[0]);
});

Deno.test("Expect: 100-continue: the server sends 100, the client sees it as an interim response", async () => {
  await using pair = socketPair();
  const client = new Http1Connection(pair[0], { role: "client" });
  const server = new Http1Connection(pair[1], { role: "server" });
  client.writeHead(post("/upload", [["expect", "100-continue"]]), contentLength(5));
  const interims: number[] = [];
  const response = client.readResponse("POST", {
    onInterim: (head) => {
      interims.push(head.status);
      client.bodyWriter(contentLength(5)).end(bytes("hello"));
    },
  });
  const request = await server.readRequest();
  assert.ok(request && expectsContinue(request));
  server.writeHead({ version: "HTTP/1.1", status: 100, reason: "Continue", headers: [] }, NO_BODY);
  assert.equal(text(await readAll(server.readBody())), "hello");
  server.writeHead(ok(), contentLength(0));
  assert.equal((await response).status, 200);
  assert.deepEqual(interims, [100]);
  await Promise.all([client.close(), server.close()]);
});

Deno.test("detach() hands back the duplex with the bytes read past an upgrade's head", async () => {
  await using pair = socketPair();
  const client = new Http1Connection(pair[0], { role: "client" });
  const server = new Http1Connection(pair[1], { role: "server" });
  const upgrade = {
    ...post("/chat"),
    method: "GET",
    headers: [["host", "a"], ["connection", "upgrade"], ["upgrade", "ws"]],
  };
  client.writeHead(upgrade as RequestHead, NO_BODY);
  const { socket: clientSide } = client; // the client sends its first frame before the 101, in the same flight
  clientSide.write(bytes("EARLY"));

  const request = await server.readRequest();
  assert.equal(headerValue(request!.headers, "upgrade"), "ws");
  server.writeHead(
    { version: "HTTP/1.1", status: 101, reason: "Switching Protocols", headers: [["upgrade", "ws"]] },
    NO_BODY,
  );
  const tunnelled = server.detach();
  tunnelled.socket.write(bytes("FROM-SERVER"));
  let serverGot = text(tunnelled.head);
  if (!serverGot.includes("EARLY")) serverGot += await readUntil(tunnelled.socket, (s) => s.includes("EARLY"));
  assert.equal(serverGot, "EARLY");

  const response = await client.readResponse("GET");
  assert.equal(response.status, 101);
  const back = client.detach();
  let clientGot = text(back.head);
  if (clientGot !== "FROM-SERVER") clientGot += await readUntil(back.socket, (s) => s.includes("FROM-SERVER"));
  assert.equal(clientGot, "FROM-SERVER");
  await assert.rejects(client.readResponse("GET"), /detached/);
});

Deno.test("readBody() reads a response until close, and fails a body cut short", async (t) => {
  await t.step("until close", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "client" });
    pair[0].end(bytes("HTTP/1.0 200 OK\r\n\r\nstreamed until the end"));
    const head = await conn.readResponse("GET");
    assert.equal(keepAlive(head, responseFraming(head, "GET")), false);
    assert.equal(text(await readAll(conn.readBody())), "streamed until the end");
    await closeBoth(conn, pair[0]);
  });
  await t.step("Content-Length cut short → 502 CLOSED", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "client" });
    pair[0].end(bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"));
    await conn.readResponse("GET");
    await assert.rejects(readAll(conn.readBody()), { status: 502, code: "CLOSED" });
    assert.ok(!conn.reusable);
    await closeBoth(conn, pair[0]);
  });
  await t.step("no response at all → 502 CLOSED", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "client" });
    pair[0].end();
    await assert.rejects(conn.readResponse("GET"), { status: 502, code: "CLOSED" });
    await closeBoth(conn, pair[0]);
  });
  await t.step("malformed response → 502", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "client" });
    pair[0].write(bytes("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    await assert.rejects(conn.readResponse("GET"), { status: 502, code: "MALFORMED" });
    await closeBoth(conn, pair[0]);
  });
});

Deno.test("an idle client connection notices the server closing, even after a backpressured body", async () => {
  await using pair = socketPair();
  const conn = new Http1Connection(pair[1], { role: "client" });
  const size = 300_000;
  pair[0].write(bytes(`HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`));
  pair[0].write(pattern(0, size));
  await conn.readResponse("GET");
  const body = conn.readBody();
  await delay(20); // the body fills up and the duplex is paused
  assert.equal(await checkPattern(body), size);
  assert.equal(conn.reusable, true);
  pair[0].end();
  await delay(20);
  assert.equal(conn.reusable, false);
  await closeBoth(conn, pair[0]);
});

Deno.test("a client connection that holds bytes past its response is not reusable (no response desync in a pool)", async () => {
  await using pair = socketPair();
  const conn = new Http1Connection(pair[1], { role: "client" });
  // A backend that miscounts its Content-Length: the extra bytes would be the next request's "response".
  pair[0].write(
    bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"),
  );
  await conn.readResponse("GET");
  assert.equal(await text(await readAll(conn.readBody())), "hello");
  assert.equal(conn.reusable, false);
  await closeBoth(conn, pair[0]);
});

Deno.test("maxBodyBytes refuses a large Content-Length up front and a large chunked body as it streams", async (t) => {
  await t.step("Content-Length → 413 at readRequest()", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server", maxBodyBytes: 10 });
    pair[0].write(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"));
    await assert.rejects(conn.readRequest(), { status: 413, code: "TOO_LARGE" });
    await closeBoth(conn, pair[0]);
  });
  await t.step("chunked → 413 from the body", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server", maxBodyBytes: 10 });
    pair[0].write(
      bytes("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n"),
    );
    await conn.readRequest();
    await assert.rejects(readAll(conn.readBody()), { status: 413 });
    await closeBoth(conn, pair[0]);
  });
  await t.step("within the limit", async () => {
    await using pair = socketPair();
    const conn = new Http1Connection(pair[1], { role: "server", maxBodyBytes: 10 });
    pair[0].write(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"));
    await conn.readRequest();
    assert.equal(text(await readAll(conn.readBody())), "0123456789");
    await closeBoth(conn, pair[0]);
  });
});

Deno.test("a body abandoned before its end makes the connection unusable", async () => {
  await using pair = socketPair();
  const conn = new Http1Connection(pair[1], { role: "server" });
  pair[0].write(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial"));
  await conn.readRequest();
  conn.readBody().destroy();
  assert.equal(conn.reusable, false);
  await assert.rejects(conn.readRequest(), /abandoned/);
  const answer = readToEnd(pair[0]);
  pair[0].end();
  await conn.sendError(413);
  assert.match(await answer, /^HTTP\/1.1 413 Content Too Large\r\n/);
});

Deno.test("Http1Connection keeps a TCP connection alive across requests on loopback", async () => {
  const server = net.createServer(async (socket) => {
    const conn = new Http1Connection(socket, { role: "server" });
    for (;;) {
      const request = await conn.readRequest();
      if (request === null) break;
      const body = await readAll(conn.readBody());
      const reply = bytes(`${request.target} got ${body.length}`);
      conn.writeHead(ok(), contentLength(reply.length));
      conn.bodyWriter(contentLength(reply.length)).end(reply);
      if (!keepAlive(request)) break;
    }
    await conn.close();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const socket = net.connect(port, "127.0.0.1");
  await once(socket, "connect");
  const client = new Http1Connection(socket, { role: "client" });
  for (const [i, size] of [[1, 0], [2, 300_000], [3, 7]]) {
    const last = i === 3;
    client.writeHead(post(`/r${i}`, last ? [["connection", "close"]] : []), contentLength(size));
    client.bodyWriter(contentLength(size)).end(pattern(0, size));
    await client.readResponse("POST");
    assert.equal(text(await readAll(client.readBody())), `/r${i} got ${size}`);
  }
  await client.close();
  server.close();
  await once(server, "close");
});

Deno.test("Http1Connection keeps one idle timer per connection, and each head still gets its whole timeout", async (t) => {
  /** Serves `n` GETs sent one after another on one connection; returns the timers armed with `idleTimeoutMs`. */
  const serve = async (n: number, idleTimeoutMs: number, pause = 0) => {
    const armed: number[] = [];
    const original = globalThis.setTimeout;
    globalThis.setTimeout = ((fn: () => void, ms?: number) => {
      if (ms !== undefined && ms > 0 && ms <= idleTimeoutMs) armed.push(ms);
      return original(fn, ms);
    }) as typeof setTimeout;
    await using pair = socketPair();
    const [client, server] = pair;
    const conn = new Http1Connection(server, { role: "server", idleTimeoutMs });
    try {
      for (let i = 0; i < n; i++) {
        const reading = conn.readRequest();
        if (pause > 0) await delay(pause);
        client.write(bytes(`GET /${i} HTTP/1.1\r\nHost: a\r\n\r\n`));
        assert.equal((await reading)?.target, `/${i}`);
        conn.writeHead(ok(), contentLength(2));
        conn.bodyWriter(contentLength(2)).end(bytes("ok"));
        client.resume(); // readUntil() leaves it paused
        await readUntil(client, (s) => s.endsWith("ok"));
      }
    } finally {
      globalThis.setTimeout = original;
    }
    client.end();
    assert.equal(await conn.readRequest(), null);
    await closeBoth(conn, client);
    return armed.length;
  };

  await t.step("ten requests inside the timeout: one timer armed, not ten", async () => {
    assert.equal(await serve(10, 60_000), 1);
  });
  await t.step("heads that each come after most of the timeout: none refused, the timer re-armed", async () => {
    // 300 ms for each head; each comes 200 ms after its read starts, so the first timer fires in the middle of the
    // second head's wait, and must wait on rather than time it out (serve() fails on a 408).
    await serve(3, 300, 200);
  });
});
