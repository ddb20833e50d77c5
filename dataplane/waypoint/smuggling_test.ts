/**
 * Request smuggling and response splitting across the waypoint's HTTP/2 ⇄ HTTP/1.1 translation (`http1.ts`,
 * `http2.ts`), on loopback as `adapters_test.ts`: a hostile HTTP/2 backend that sends what HTTP/1.1 cannot frame
 * (a body after a HEAD, 204 or 304 answer; a field value with a control byte), and an HTTP/2 client sending field
 * values that HTTP/1.1 cannot carry. What crosses to the other side is read raw, on the client's and the
 * backend's sockets.
 */

import assert from "node:assert/strict";
import net from "node:net";
import { H2Connection } from "../h2/connection.ts";
import { field, type HeaderField } from "../h2/fields.ts";
import type { H2Stream } from "../h2/stream.ts";
import { interopTest, pythonServer, until, waypoint } from "./interop_util.ts";

const encode = (s: string) => new TextEncoder().encode(s);

/** What a hostile backend hides in a body HTTP/1.1 must not carry: a whole second response. */
const INJECTED = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL";

/** An HTTP/2 backend answering each request with `answer`; counts the streams it has open. */
async function h2Backend(answer: (stream: H2Stream) => void) {
  const conns = new Set<H2Connection>();
  let open = 0;
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    const conn = new H2Connection(socket, {
      role: "server",
      onStream: (stream) => {
        open++;
        stream.once("close", () => open--);
        stream.resume();
        answer(stream);
      },
    });
    conns.add(conn);
    conn.closed.then(() => conns.delete(conn));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return open;
    },
    async [Symbol.asyncDispose]() {
      const all = [...conns];
      for (const c of all) c.destroy();
      await Promise.all(all.map((c) => c.closed));
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Writes `request` on one connection and reads until the waypoint closes it (or 3 s pass). */
async function rawHttp1(port: number, request: string): Promise<string> {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => {});
  let text = "";
  socket.on("data", (c: Uint8Array) => text += new TextDecoder("latin1").decode(c));
  socket.write(request);
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    new Promise((r) => socket.once("close", r)),
    new Promise((r) => timer = setTimeout(r, 3_000)),
  ]);
  clearTimeout(timer);
  socket.destroy();
  return text;
}

Deno.test("an HTTP/2 backend's body on a HEAD, 204 or 304 answer never reaches an HTTP/1.1 client", async (t) => {
  await using backend = await h2Backend((stream) => {
    const path = field(stream.requestHeaders, ":path");
    if (path === "/next") {
      stream.respond([[":status", "200"], ["content-length", "4"]]);
      stream.end(encode("next"));
      return;
    }
    // HEADERS without END_STREAM, then DATA: HTTP/2 framing delimits it; HTTP/1.1 has no place for it.
    const status = path!.slice(1);
    stream.respond([[":status", status], ["content-length", String(INJECTED.length)]]);
    stream.end(encode(INJECTED));
  });
  await using wp = await waypoint(backend.port, "http2");
  for (const [method, status] of [["HEAD", "200"], ["GET", "204"], ["GET", "304"]]) {
    await t.step(`${method} answered ${status} with DATA`, async () => {
      // Two requests on one keep-alive connection: the second answer must be the second response on the wire.
      const text = await rawHttp1(
        wp.port,
        `${method} /${status} HTTP/1.1\r\nHost: web\r\n\r\nGET /next HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n`,
      );
      assert.ok(!text.includes("EVIL"), `the backend's body reached the client:\n${JSON.stringify(text)}`);
      assert.equal(text.match(/HTTP\/1\.1 \d{3} /g)?.length, 2, JSON.stringify(text));
      assert.match(text, new RegExp(`^HTTP/1\\.1 ${status} `));
      assert.ok(text.endsWith("\r\n\r\nnext"), JSON.stringify(text));
    });
  }
  await t.step("HEAD answered with DATA, to an HTTP/2 client", async () => {
    const socket = net.connect(wp.port, "127.0.0.1");
    socket.on("error", () => {});
    const client = new H2Connection(socket, { role: "client" });
    try {
      const stream = client.request([[":method", "HEAD"], [":scheme", "http"], [":path", "/200"], [
        ":authority",
        "web",
      ]], {
        endStream: true,
      });
      let data = 0;
      stream.on("data", (c: Uint8Array) => data += c.byteLength);
      assert.equal(field(await stream.response, ":status"), "200");
      await new Promise((r) => stream.once("end", r));
      assert.equal(data, 0, "DATA after a HEAD answer reached the client");
    } finally {
      client.destroy();
      await client.closed;
    }
  });
  // The dropped bodies' streams were reset rather than left open on the endpoint's connection.
  await until(() => backend.open === 0, 2_000);
  assert.equal(backend.open, 0);
});

Deno.test("an HTTP/2 backend's field value HTTP/1.1 cannot carry is a 502 for an HTTP/1.1 client", async () => {
  await using backend = await h2Backend((stream) => {
    // Legal in HTTP/2 (only NUL, CR and LF are malformed, RFC 9113 §8.2.1); a control byte HTTP/1.1 refuses.
    stream.respond([[":status", "200"], ["x-split", "a\x01b"], ["content-length", "2"]]);
    stream.write(encode("ok"));
    // The stream is left open: the waypoint must reset it rather than hold it.
  });
  await using wp = await waypoint(backend.port, "http2");
  const text = await rawHttp1(wp.port, "GET /split HTTP/1.1\r\nHost: web\r\n\r\n");
  assert.match(text, /^HTTP\/1\.1 502 /, JSON.stringify(text));
  assert.ok(!text.includes("\x01"), JSON.stringify(text));
  await until(() => backend.open === 0, 2_000);
  assert.equal(backend.open, 0, "the endpoint's stream is still open");
  await until(() => wp.access.length >= 1, 2_000);
  assert.deepEqual(wp.access.map((l) => `${l.response_code} ${l.response_flags}`), ["502 UPE"]);
});

Deno.test("an HTTP/2 client's field value with a control byte is refused with 400 before any backend", async (t) => {
  for (const appProtocol of ["http", "http2"]) {
    await t.step(`backend declared ${appProtocol}`, async () => {
      let received = 0;
      const sockets = new Set<net.Socket>();
      const backend = net.createServer((socket) => {
        sockets.add(socket);
        socket.on("error", () => {});
        socket.on("data", (c: Uint8Array) => received += c.byteLength);
      });
      await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
      try {
        await using wp = await waypoint((backend.address() as net.AddressInfo).port, appProtocol);
        const socket = net.connect(wp.port, "127.0.0.1");
        socket.on("error", () => {});
        const client = new H2Connection(socket, { role: "client" });
        try {
          const fields: HeaderField[] = [
            [":method", "GET"],
            [":scheme", "http"],
            [":path", "/"],
            [":authority", "web"],
            ["x-note", "a\x7fb"],
          ];
          const stream = client.request(fields, { endStream: true });
          stream.resume();
          const head = await stream.response;
          assert.equal(field(head, ":status"), "400");
        } finally {
          client.destroy();
          await client.closed;
        }
        assert.equal(received, 0, "bytes reached the backend");
        await until(() => wp.access.length >= 1, 2_000);
        assert.deepEqual(wp.access.map((l) => `${l.response_code} ${l.response_flags}`), ["400 DPE"]);
      } finally {
        for (const s of sockets) s.destroy();
        await new Promise((resolve) => backend.close(resolve));
      }
    });
  }
});

interopTest(
  "an HTTP/1.1 request's framing fields never break a shared HTTP/2 connection (python-h2 backend)",
  async () => {
    // python-h2 answers an HTTP/2 request it finds malformed with a connection error: every stream on the
    // connection, which the waypoint shares between all clients of the endpoint, would go with it.
    await using backend = await pythonServer("h2_peer.py", ["server"]);
    await using wp = await waypoint(backend.port, "http2");
    // Another client's request, its body half sent, on the shared connection.
    const other = net.connect(wp.port, "127.0.0.1");
    other.on("error", () => {});
    let otherText = "";
    other.on("data", (c: Uint8Array) => otherText += new TextDecoder().decode(c));
    other.write(
      "POST /other HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n",
    );
    await new Promise((r) => setTimeout(r, 200)); // time for its HEADERS and first DATA to reach the backend
    try {
      // RFC 9110 §8.6 lets HTTP/1.1 repeat a Content-Length with one value; HTTP/2 servers refuse either form.
      const listed = await rawHttp1(
        wp.port,
        "POST /listed HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
      );
      const repeated = await rawHttp1(
        wp.port,
        "POST /repeated HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
      );
      // Chunked trailers RFC 9110 lets through that RFC 9113 §8.2.2 makes malformed.
      const trailed = await rawHttp1(
        wp.port,
        "POST /trailed HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
          "5\r\nhello\r\n0\r\nkeep-alive: 5\r\nupgrade: h2c\r\nproxy-connection: x\r\nx-kept: yes\r\n\r\n",
      );
      other.write("0\r\n\r\n");
      await new Promise((r) => other.once("close", r));
      const echoed = (text: string) => {
        assert.match(text, /^HTTP\/1\.1 200 /, JSON.stringify(text));
        return JSON.parse(text.slice(text.indexOf("{"), text.lastIndexOf("}") + 1));
      };
      for (const text of [listed, repeated]) {
        const lengths = echoed(text).headers.filter(([n]: string[]) => n === "content-length");
        assert.deepEqual(lengths, [["content-length", "5"]]);
      }
      assert.deepEqual(echoed(trailed).trailers, { "x-kept": "yes" });
      assert.equal(echoed(otherText).body, "abc", "the other client's request was lost");
    } finally {
      other.destroy();
    }
  },
);

/** An HTTP/1.1 backend that records each request's raw bytes (to the end of a chunked body) and answers 200. */
async function recordingBackend() {
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    let text = "";
    socket.on("data", (c: Uint8Array) => {
      text += new TextDecoder("latin1").decode(c);
      if (!/\r\n0\r\n(?:[^\r]+\r\n)*\r\n$/.test(text)) return;
      requests.push(text);
      text = "";
      socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

Deno.test("a client's x-forwarded-client-cert trailer never reaches the backend", async (t) => {
  const forged = "By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/prod/sa/admin";
  await using backend = await recordingBackend();
  await using wp = await waypoint(backend.port, "http");
  await t.step("from an HTTP/2 client, in its trailers", async () => {
    const socket = net.connect(wp.port, "127.0.0.1");
    socket.on("error", () => {});
    const client = new H2Connection(socket, { role: "client" });
    try {
      const stream = client.request([[":method", "POST"], [":scheme", "http"], [":path", "/h2"], [
        ":authority",
        "web",
      ]]);
      stream.resume();
      stream.write(encode("abc"));
      stream.endWithTrailers([["x-forwarded-client-cert", forged], ["x-kept", "yes"]]);
      assert.equal(field(await stream.response, ":status"), "200");
    } finally {
      client.destroy();
      await client.closed;
    }
  });
  await t.step("from an HTTP/1.1 client, in its chunked trailer section", async () => {
    const text = await rawHttp1(
      wp.port,
      "POST /h1 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
        `3\r\nabc\r\n0\r\nX-Forwarded-Client-Cert: ${forged}\r\nx-kept: yes\r\n\r\n`,
    );
    assert.match(text, /^HTTP\/1\.1 200 /, JSON.stringify(text));
  });
  assert.equal(backend.requests.length, 2);
  for (const request of backend.requests) {
    assert.ok(!request.includes("prod/sa/admin"), `a forged XFCC reached the backend:\n${request}`);
    assert.match(request, /\r\nx-kept: yes\r\n\r\n$/);
  }
});

Deno.test("an HTTP/2 client's trailers HTTP/1.1 cannot carry are dropped one by one, the others delivered", async () => {
  await using backend = await recordingBackend();
  await using wp = await waypoint(backend.port, "http");
  const socket = net.connect(wp.port, "127.0.0.1");
  socket.on("error", () => {});
  const client = new H2Connection(socket, { role: "client" });
  try {
    const stream = client.request([[":method", "POST"], [":scheme", "http"], [":path", "/t"], [":authority", "web"]]);
    stream.resume();
    stream.write(encode("abc"));
    stream.endWithTrailers([
      ["content-length", "99"], // would reframe the message for a server that merges trailers
      ["host", "admin.internal"], // would reroute it
      ["x-control", "a\x01b"], // legal in HTTP/2, not in HTTP/1.1
      ["x-kept", "yes"],
    ]);
    assert.equal(field(await stream.response, ":status"), "200");
  } finally {
    client.destroy();
    await client.closed;
  }
  assert.equal(backend.requests.length, 1);
  assert.match(backend.requests[0], /\r\n0\r\nx-kept: yes\r\n\r\n$/, JSON.stringify(backend.requests[0]));
});
