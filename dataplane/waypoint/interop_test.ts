/**
 * The waypoint between clients and backends that are not Skiff's own, on loopback (the in-process tier, as
 * `adapters_test.ts`): gRPC's C core (Debian's python3-grpcio) as client and server, Python's http.server as an
 * HTTP/1.1-only backend, python-hyper's h2 as an HTTP/2 client and backend, and curl. What they see is what a
 * user's application would: gRPC statuses and trailing metadata, trailers-only responses kept trailers-only, each
 * backend spoken to in the protocol its Service port declares, and what the access log records.
 *
 * Skipped locally when python3-grpcio or python3-h2 is missing; failing in CI, where install.sh installs them.
 */

import assert from "node:assert/strict";
import net from "node:net";
import { interopTest, pythonClient, pythonServer, run, until, waypoint } from "./interop_util.ts";

// ---- gRPC: C core client → waypoint → C core server -----------------------------------------------------------

for (const appProtocol of [undefined, "grpc"]) {
  const declared = appProtocol ? `appProtocol ${appProtocol}` : "no appProtocol";
  interopTest(
    `gRPC statuses and trailing metadata reach a grpcio client through the waypoint (${declared})`,
    async () => {
      await using backend = await pythonServer("grpcio_peer.py", ["server"]);
      await using wp = await waypoint(backend.port, appProtocol);
      const results = await pythonClient("grpcio_peer.py", ["client", `127.0.0.1:${wp.port}`]);
      const byCase = Object.fromEntries(results.map((r) => [r.case, r]));
      assert.deepEqual(byCase.unary, { case: "unary", code: "OK", body: "echo:hi", trailers: { "x-trail": "unary" } });
      // Aborted before any message: the server's answer is trailers-only (one HEADERS frame with END_STREAM).
      assert.deepEqual(byCase.fail, {
        case: "fail",
        code: "NOT_FOUND",
        details: "no such thing",
        trailers: { "x-trail": "fail" },
      });
      assert.deepEqual(byCase.stream, {
        case: "stream",
        code: "OK",
        body: ["m0", "m1", "m2"],
        trailers: { "x-trail": "stream" },
      });
      assert.deepEqual(byCase["stream-fail"], {
        case: "stream-fail",
        code: "FAILED_PRECONDITION",
        details: "stopped half way",
        body: ["m0", "m1"],
        trailers: { "x-trail": "stream-fail" },
      });
      assert.equal(byCase.cancel.code, "CANCELLED");

      // What the access log says of each call: gRPC statuses as the server set them; the call the client cancelled
      // (RST_STREAM CANCEL, as a deadline sends) is the downstream's doing (DC), never a 200 the upstream cut short.
      await until(() => wp.access.length >= 5, 3_000);
      const logged = wp.access.map((l) => `${l.path} ${l.response_code} ${l.response_flags} ${l.grpc_status}`);
      assert.deepEqual(logged.sort(), [
        "/t.T/Fail 200 - 5",
        "/t.T/Slow 0 DC undefined",
        "/t.T/Stream 200 - 0",
        "/t.T/StreamFail 200 - 9",
        "/t.T/Unary 200 - 0",
      ]);
    },
  );
}

interopTest(
  "a trailers-only HTTP/2 response leaves the waypoint as one HEADERS frame with END_STREAM (python-h2)",
  async () => {
    await using backend = await pythonServer("h2_peer.py", ["server"]);
    await using wp = await waypoint(backend.port);
    const [r] = await pythonClient("h2_peer.py", ["client", String(wp.port), "GET", "/trailers-only"]);
    assert.equal(r.status, "200");
    assert.deepEqual(r.frames, ["headers+end"]);
  },
);

// ---- each backend in the protocol it declares -----------------------------------------------------------------

interopTest(
  "an HTTP/2 client reaches an HTTP/1.1-only backend declared appProtocol http (curl, http.server)",
  async () => {
    await using backend = await pythonServer("h1_backend.py");
    await using wp = await waypoint(backend.port, "http");
    const url = `http://127.0.0.1:${wp.port}/hello?x=1`;
    const get = await run("curl", [
      "-sS",
      "--http2-prior-knowledge",
      "--max-time",
      "5",
      "-o",
      "-",
      "-w",
      "\n%{http_code} %{http_version}",
      url,
    ]);
    const [body, status] = get.stdout.split("\n");
    assert.equal(status, "200 2", `curl: ${get.stdout} ${get.stderr}`);
    const seen = JSON.parse(body);
    assert.equal(seen.version, "HTTP/1.1");
    assert.equal(seen.path, "/hello?x=1");
    // :authority became Host, once; no HTTP/2 pseudo-header or connection-specific field went to the backend.
    assert.deepEqual(seen.headers.filter(([n]: string[]) => n === "host"), [["host", `127.0.0.1:${wp.port}`]]);
    assert.equal(seen.headers.some(([n]: string[]) => n.startsWith(":") || n === "te" || n === "connection"), false);

    // A body without content-length goes chunked, and its trailers (HTTP/2 trailers) become the chunked trailer
    // section; the backend's chunked trailers come back as HTTP/2 trailers.
    const [post] = await pythonClient("h2_peer.py", [
      "client",
      String(wp.port),
      "POST",
      "/upload",
      "payload",
      "x-sum=7",
    ]);
    assert.equal(post.status, "200");
    const echoed = JSON.parse(post.body as string);
    assert.equal(echoed.body, "payload");
    assert.deepEqual(echoed.trailers, { "x-sum": "7" });
    assert.deepEqual(post.trailers, { "x-checksum": String((post.body as string).length) });
    assert.deepEqual((post.frames as string[]).slice(-1), ["trailers+end"]);
  },
);

interopTest("an HTTP/1.1 client reaches an HTTP/2 backend declared appProtocol http2 (curl, python-h2)", async () => {
  await using backend = await pythonServer("h2_peer.py", ["server"]);
  await using wp = await waypoint(backend.port, "http2");
  const url = `http://127.0.0.1:${wp.port}/hello`;
  const get = await run("curl", [
    "-sS",
    "--http1.1",
    "--max-time",
    "5",
    "-o",
    "-",
    "-w",
    "\n%{http_code} %{http_version}",
    url,
  ]);
  const [body, status] = get.stdout.split("\n");
  assert.equal(status, "200 1.1", `curl: ${get.stdout} ${get.stderr}`);
  const seen = JSON.parse(body);
  const pseudo = Object.fromEntries(seen.headers.filter(([n]: string[]) => n.startsWith(":")));
  // Host became :authority; the backend saw a well-formed HTTP/2 request.
  assert.deepEqual(pseudo, {
    ":method": "GET",
    ":scheme": "http",
    ":path": "/hello",
    ":authority": `127.0.0.1:${wp.port}`,
  });

  // A chunked upload with a trailer section and Expect: 100-continue; the HTTP/2 trailers come back as chunked
  // trailers (curl prints them among the headers with -i --raw).
  const post = await run("curl", [
    "-sS",
    "--http1.1",
    "--max-time",
    "5",
    "-i",
    "-H",
    "transfer-encoding: chunked",
    "-H",
    "expect: 100-continue",
    "--data-binary",
    "chunked body",
    url,
  ]);
  assert.match(post.stdout, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /, post.stdout);
  assert.match(post.stdout, /"body": "chunked body"/);
  assert.match(post.stdout, /x-checksum: \d+/i, "the backend's trailers reach the HTTP/1.1 client");
});

interopTest("an HTTP/1.1 client that closes before its answer is recorded DC with response code 0", async () => {
  await using backend = await pythonServer("h1_backend.py");
  await using wp = await waypoint(backend.port);
  const socket = net.connect(wp.port, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  socket.write("GET /slow HTTP/1.1\r\nhost: web\r\n\r\n");
  await new Promise((r) => setTimeout(r, 200));
  socket.destroy();
  await until(() => wp.access.length >= 1, 3_000);
  assert.deepEqual(wp.access.map((l) => `${l.path} ${l.response_code} ${l.response_flags}`), ["/slow 0 DC"]);
});
