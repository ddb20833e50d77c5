import assert from "node:assert/strict";
import { connectionPair } from "../../tests/harness/h2peer.ts";
import type { H2Stream } from "../h2/stream.ts";
import { Http1Connection } from "./connection.ts";
import { CHUNKED, contentLength, keepAlive } from "./framing.ts";
import { readAll, text } from "./test_util.ts";

/** A server in the waypoint's position: HTTP/1.1 spoken over each HBONE CONNECT stream it accepts. */
async function serveHttp1(stream: H2Stream) {
  stream.respond([[":status", "200"]]);
  const conn = new Http1Connection(stream, { role: "server" });
  for (;;) {
    const request = await conn.readRequest();
    if (request === null) break;
    const body = conn.readBody();
    const size = (await readAll(body)).length;
    const reply = new TextEncoder().encode(`${request.method} ${request.target} ${size} ${body.trailers.length}`);
    conn.writeHead({ version: "HTTP/1.1", status: 200, reason: "OK", headers: [] }, contentLength(reply.length));
    conn.bodyWriter(contentLength(reply.length)).end(reply);
    if (!keepAlive(request)) break;
  }
  await conn.close();
}

Deno.test("Http1Connection speaks HTTP/1.1 over an HBONE CONNECT stream, keep-alive and large bodies included", async () => {
  const served: Promise<void>[] = [];
  await using pair = await connectionPair({ onStream: (stream) => served.push(serveHttp1(stream)) });
  const stream = pair.client.request([[":method", "CONNECT"], [":authority", "10.0.1.2:8080"]]);
  await stream.response;
  const conn = new Http1Connection(stream, { role: "client" });
  const size = 6 * 1024 * 1024; // beyond the 4 MiB stream window
  const requests = [
    { target: "/small", body: new Uint8Array(0) },
    { target: "/large", body: new Uint8Array(size).fill(0x61) },
    { target: "/last", body: new Uint8Array(3) },
  ];
  for (const { target, body } of requests) {
    conn.writeHead({ method: "POST", target, version: "HTTP/1.1", headers: [["host", "svc"]] }, CHUNKED);
    const writer = conn.bodyWriter(CHUNKED);
    for (let at = 0; at < body.length; at += 256 * 1024) writer.write(body.subarray(at, at + 256 * 1024));
    writer.finish([["x-trailer", "1"]]);
    const response = await conn.readResponse("POST");
    assert.equal(response.status, 200);
    assert.equal(text(await readAll(conn.readBody())), `POST ${target} ${body.length} 1`);
  }
  await conn.close();
  await Promise.all(served);
});
