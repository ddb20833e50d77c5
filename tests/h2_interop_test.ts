/**
 * HTTP/2 interop: our `dataplane/h2` against the implementations Debian ships — nghttp2's `nghttp` and `h2load`
 * (nghttp2-client) and python-hyper's `h2` (python3-h2). The unit tests check our codec against our own peer; here
 * independent implementations judge the framing, HPACK, flow control and CONNECT handling. Skipped locally when a
 * tool is missing, failing in CI (install.sh installs them).
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { H2Connection } from "../dataplane/h2/connection.ts";
import type { H2Stream } from "../dataplane/h2/stream.ts";
import { field } from "../dataplane/h2/fields.ts";
import { readAll } from "./harness/h2peer.ts";

const IN_CI = Deno.env.get("CI") === "true";
/** Debian's interpreter: the pyenv shim first on PATH has no `h2`. */
const PYTHON = "/usr/bin/python3";

function installed(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

const TOOLS = {
  nghttp: installed("nghttp", ["--version"]),
  h2load: installed("h2load", ["--version"]),
  openssl: installed("openssl", ["version"]),
  "python3-h2": installed(PYTHON, ["-c", "import h2"]),
};

/**
 * A test that needs `tools`: skipped locally when one is missing, failing in CI where it may not be skipped.
 * `ignore: true` marks a test that shows a known bug in `dataplane/h2`, until it is fixed.
 */
function interopTest(
  name: string,
  tools: (keyof typeof TOOLS)[],
  fn: () => Promise<void>,
  options = { ignore: false },
) {
  const missing = tools.filter((tool) => !TOOLS[tool]);
  Deno.test({
    name,
    ignore: options.ignore || (missing.length > 0 && !IN_CI),
    fn: async () => {
      if (missing.length > 0) {
        throw new Error(
          `Cannot run the HTTP/2 interop test: ${missing.join(", ")} not installed (install.sh; CI=true)`,
        );
      }
      await fn();
    },
  });
}

// ---- bytes ---------------------------------------------------------------------------------------------------------

/** `(i * 31 + seed) & 255`: repeats every 256 bytes, so Python builds the same bytes cheaply. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 255;
  return out;
}

/**
 * `n` bytes whose high nibble is `tag` (2..7, so printable ASCII) and whose low nibble follows an LCG seeded with
 * `tag`. nghttp prints concurrent bodies to stdout interleaved frame by frame (its -O is "not implemented yet"):
 * the tag takes each byte back to its stream, and the pseudo-random low nibbles make a lost, repeated or reordered
 * chunk show.
 */
function taggedBody(n: number, tag: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = tag;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = (tag << 4) | (x >>> 28);
  }
  return out;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) out.set(c, (at += c.byteLength) - c.byteLength);
  return out;
}

function assertSameBytes(got: Uint8Array, want: Uint8Array, what: string) {
  assert.equal(got.byteLength, want.byteLength, `${what}: length`);
  const at = got.findIndex((b, i) => b !== want[i]);
  assert.equal(at, -1, `${what}: first difference at byte ${at}`);
}

// ---- our server ----------------------------------------------------------------------------------------------------

/**
 * GET /tagged/{n}-{tag} answers `taggedBody(n, tag)` with a content-length (nghttp2 checks the DATA adds up to it);
 * POST reads the whole body and answers with its length and SHA-256; CONNECT answers 200 and echoes as a tunnel,
 * half-close included; anything else gets a short fixed body.
 */
async function handle(stream: H2Stream) {
  const method = field(stream.requestHeaders, ":method");
  if (method === "CONNECT") {
    stream.respond([[":status", "200"]]);
    stream.pipe(stream);
    return;
  }
  let body: Uint8Array;
  if (method === "POST") {
    const received = await readAll(stream);
    body = new TextEncoder().encode(`received ${received.byteLength} bytes, sha256 ${await sha256(received)}\n`);
  } else {
    const match = /^\/tagged\/(\d+)-(\d)$/.exec(field(stream.requestHeaders, ":path") ?? "");
    body = match ? taggedBody(Number(match[1]), Number(match[2])) : new TextEncoder().encode("hello from skiff\n");
  }
  stream.respond([
    [":status", "200"],
    ["content-type", "application/octet-stream"],
    ["content-length", String(body.byteLength)],
    ["server", "skiff-h2-interop-test"],
  ]);
  stream.end(body);
}

interface TestServer extends AsyncDisposable {
  port: number;
  connections: H2Connection[];
  /** The most streams one connection had open at once. */
  peakStreams: number;
  /** "protocol ALPN" of each TLS connection. */
  tls: string[];
}

/** Our H2Connection as a server on 127.0.0.1, over TCP or, given `tlsOptions`, over TLS. */
async function serve(tlsOptions?: tls.TlsOptions): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const result: TestServer = {
    port: 0,
    connections: [],
    peakStreams: 0,
    tls: [],
    async [Symbol.asyncDispose]() {
      for (const connection of result.connections) connection.destroy();
      for (const socket of sockets) socket.destroy();
      await Promise.all([new Promise((resolve) => server.close(resolve)), ...result.connections.map((c) => c.closed)]);
    },
  };
  const accept = (socket: net.Socket) => {
    sockets.add(socket);
    if (socket instanceof tls.TLSSocket) result.tls.push(`${socket.getProtocol()} ${socket.alpnProtocol}`);
    socket.once("close", () => sockets.delete(socket));
    const connection: H2Connection = new H2Connection(socket, {
      role: "server",
      onStream: (stream) => {
        result.peakStreams = Math.max(result.peakStreams, connection.activeStreams);
        handle(stream).catch((error) => stream.destroy(error));
      },
    });
    result.connections.push(connection);
  };
  const server = tlsOptions ? tls.createServer(tlsOptions, accept) : net.createServer(accept);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  result.port = (server.address() as net.AddressInfo).port;
  return result;
}

// ---- child processes -----------------------------------------------------------------------------------------------

interface Output {
  code: number;
  /** Stdout as bytes: nghttp prints response bodies there. */
  bytes: Uint8Array;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** A child process whose output is collected as it comes; killed after `timeoutMs` or on dispose if still running. */
class Child implements AsyncDisposable {
  readonly done: Promise<Output>;
  #child: Deno.ChildProcess;
  #exited = false;
  #stdout: Uint8Array[] = [];
  #wake: (() => void)[] = [];

  constructor(cmd: string, args: string[], options: { cwd?: string; timeoutMs?: number } = {}) {
    this.#child = new Deno.Command(cmd, { args, cwd: options.cwd, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
    let timedOut = false;
    const timer = setTimeout(() => (timedOut = true, this.#kill()), options.timeoutMs ?? 30_000);
    const stderr: Uint8Array[] = [];
    const collect = async (stream: ReadableStream<Uint8Array>, chunks: Uint8Array[]) => {
      for await (const chunk of stream) chunks.push(chunk), this.#wake.splice(0).forEach((w) => w());
    };
    this.done = Promise.all([
      this.#child.status.finally(() => (this.#exited = true, clearTimeout(timer))),
      collect(this.#child.stdout, this.#stdout),
      collect(this.#child.stderr, stderr),
    ]).then(([status]) => {
      const bytes = concat(this.#stdout);
      const text = new TextDecoder().decode(bytes);
      return { code: status.code, bytes, stdout: text, stderr: new TextDecoder().decode(concat(stderr)), timedOut };
    });
    this.done.finally(() => this.#wake.splice(0).forEach((w) => w()));
  }

  /** The first line of stdout, once written; throws with stderr if the process ends without one. */
  async firstLine(): Promise<string> {
    for (;;) {
      const text = new TextDecoder().decode(concat(this.#stdout));
      if (text.includes("\n")) return text.slice(0, text.indexOf("\n"));
      if (this.#exited) throw new Error(`the process exited before printing a line: ${(await this.done).stderr}`);
      await new Promise<void>((resolve) => this.#wake.push(resolve));
    }
  }

  #kill() {
    if (this.#exited) return;
    try {
      this.#child.kill("SIGKILL");
    } catch { /* it exited meanwhile */ }
  }

  async [Symbol.asyncDispose]() {
    this.#kill();
    await this.done;
  }
}

/** Runs a command to its end; asserts it exited 0 in time, with its output in the message when not. */
async function run(cmd: string, args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Promise<Output> {
  await using child = new Child(cmd, args, options);
  const out = await child.done;
  const command = [cmd, ...args.map((a) => a.includes("\n") ? "<script>" : a)].join(" ");
  const context = `${command}\n--- stdout\n${out.stdout.slice(-4000)}\n--- stderr\n${out.stderr}`;
  assert.ok(!out.timedOut, `timed out: ${context}`);
  assert.equal(out.code, 0, `exit code ${out.code}: ${context}`);
  return out;
}

/** Rejects when `promise` has not settled within `ms`, so a hang fails the test with a reason. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function tempDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "skiff-h2-interop-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

// ---- nghttp and h2load against our server --------------------------------------------------------------------------

/** [size, tag] of the bodies nghttp fetches at once: several times its 64 KiB stream window, odd sizes, one byte. */
const BODIES = [[1024 * 1024, 2], [1024 * 1024 + 7, 3], [3_000_000, 4], [65_536, 5], [1, 6]] as const;

/** Takes nghttp's interleaved stdout apart again by each body's tag and checks every body is byte-exact. */
function assertTaggedBodies(stdout: Uint8Array, bodies: readonly (readonly [number, number])[]) {
  for (const [n, tag] of bodies) {
    assertSameBytes(stdout.filter((b) => b >> 4 === tag), taggedBody(n, tag), `body ${n}-${tag}`);
  }
  const total = bodies.reduce((sum, [n]) => sum + n, 0);
  assert.equal(stdout.byteLength, total, "nghttp printed nothing but the bodies");
}

interopTest("our HTTP/2 server serves nghttp's concurrent GETs over h2c, byte-exact", ["nghttp"], async () => {
  await using server = await serve();
  const urls = BODIES.map(([n, tag]) => `http://127.0.0.1:${server.port}/tagged/${n}-${tag}`);
  // A 64 KiB window per stream (-w 16) in a 16 MiB connection window (-W 24): our sender must honour the stream's
  // own window and wait for nghttp's WINDOW_UPDATEs.
  const out = await run("nghttp", ["-w", "16", "-W", "24", "-t", "20", ...urls]);
  assertTaggedBodies(out.bytes, BODIES);
  assert.equal(server.connections.length, 1, "one connection carried every request");
  assert.ok(server.peakStreams > 1, `streams were concurrent (peak ${server.peakStreams})`);
});

interopTest("our HTTP/2 server reads nghttp's concurrent uploads beyond its windows over h2c", ["nghttp"], async () => {
  await using server = await serve();
  await using dir = await tempDir();
  // 3 × 6 MiB: more than our 4 MiB stream window each, and together more than our 16 MiB connection window.
  const upload = taggedBody(6 * 1024 * 1024 + 3, 2);
  await Deno.writeFile(`${dir.path}/upload`, upload);
  const urls = ["a", "b", "c"].map((name) => `http://127.0.0.1:${server.port}/upload/${name}`);
  const out = await run("nghttp", ["-v", "-t", "20", "-d", `${dir.path}/upload`, ...urls]);
  const answers = out.stdout.match(/^received \d+ bytes, sha256 [0-9a-f]{64}$/gm);
  const want = `received ${upload.byteLength} bytes, sha256 ${await sha256(upload)}`;
  assert.deepEqual(answers, [want, want, want]);
  // nghttp parsed the SETTINGS and the connection-window increment we open with, and nothing went wrong.
  assert.match(out.stdout, /recv SETTINGS frame <[^>]*>\s+\(niv=5\)/);
  assert.match(out.stdout, /recv SETTINGS frame <length=0, flags=0x01, stream_id=0>\s+; ACK/, "we ACK its SETTINGS");
  assert.match(out.stdout, /\[SETTINGS_MAX_CONCURRENT_STREAMS\(0x03\):200\]/);
  assert.match(out.stdout, /\[SETTINGS_INITIAL_WINDOW_SIZE\(0x04\):4194304\]/);
  assert.match(out.stdout, /\[SETTINGS_MAX_FRAME_SIZE\(0x05\):1048576\]/);
  assert.match(
    out.stdout,
    /recv WINDOW_UPDATE frame <length=4, flags=0x00, stream_id=0>\s+\(window_size_increment=16711681\)/,
  );
  assert.match(out.stdout, /recv WINDOW_UPDATE frame <length=4, flags=0x00, stream_id=[1-9]\d*>/, "stream credit");
  assert.doesNotMatch(out.stdout, /RST_STREAM|error_code=(?!NO_ERROR)/);
  assert.equal(server.connections.length, 1);
});

interopTest("our HTTP/2 server serves nghttp over TLS 1.3 with ALPN h2", ["nghttp", "openssl"], async () => {
  await using dir = await tempDir();
  await run("openssl", [
    ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost"],
    ...["-days", "1", "-keyout", `${dir.path}/key.pem`, "-out", `${dir.path}/cert.pem`],
  ]);
  await using server = await serve({
    key: await Deno.readTextFile(`${dir.path}/key.pem`),
    cert: await Deno.readTextFile(`${dir.path}/cert.pem`),
    ALPNProtocols: ["h2"],
    minVersion: "TLSv1.3",
  });
  const bodies = BODIES.slice(0, 3);
  const urls = bodies.map(([n, tag]) => `https://127.0.0.1:${server.port}/tagged/${n}-${tag}`);
  assertTaggedBodies((await run("nghttp", ["-w", "16", "-W", "24", "-t", "20", ...urls])).bytes, bodies);
  // The negotiation itself, as nghttp saw it (-n: bodies discarded, only the log).
  const out = await run("nghttp", ["-v", "-n", "-t", "20", `https://127.0.0.1:${server.port}/`]);
  assert.match(out.stdout, /The negotiated protocol: h2/);
  assert.match(out.stdout, /recv SETTINGS frame <[^>]*>\s+\(niv=5\)/);
  assert.deepEqual(server.tls, ["TLSv1.3 h2", "TLSv1.3 h2"]);
});

interopTest("our HTTP/2 server answers h2load's 2000 requests, 50 concurrent per connection", ["h2load"], async () => {
  await using server = await serve();
  const args = ["-n", "2000", "-c", "4", "-m", "50", `http://127.0.0.1:${server.port}/`];
  const out = await run("h2load", args, { timeoutMs: 60_000 });
  assert.match(out.stdout, /requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored/);
  assert.match(out.stdout, /status codes: 2000 2xx/);
  // h2load's requests lean on HPACK's dynamic table, and so do our responses: after the first, each is a handful of
  // bytes (95 % saved). Static-table names with Huffman literals alone would save about half.
  const savings = Number(/headers \(space savings ([\d.]+)%\)/.exec(out.stdout)?.[1]);
  assert.ok(savings > 80, `HPACK space savings on our responses: ${savings}%`);
  assert.equal(server.connections.length, 4);
});

// ---- python-h2 -----------------------------------------------------------------------------------------------------

/** Beyond our 4 MiB stream window, so our receiving side must send WINDOW_UPDATEs for the tunnel to finish. */
const TUNNEL_BYTES = 5 * 1024 * 1024 + 5;

/** Shared by both scripts: the pattern, and sending what the windows allow. */
const PY_COMMON = `
import hashlib, json, socket, sys
import h2.config, h2.connection, h2.events

def pattern(n, seed):
    block = bytes((i * 31 + seed) & 255 for i in range(256))
    return (block * (n // 256 + 1))[:n]

def send_window(conn, sid, buf):
    """Queues as much of buf as the stream and connection windows allow; returns what is left."""
    while buf:
        n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(buf))
        if n <= 0:
            break
        conn.send_data(sid, bytes(buf[:n]))
        buf = buf[n:]
    return buf
`;

/** A python-h2 client: CONNECT, TUNNEL_BYTES up honouring flow control, END_STREAM, read the echo to its end. */
const PY_CLIENT = PY_COMMON + `
port, size = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
# python-h2 4.1 insists on :scheme and :path even for CONNECT, which RFC 9113 §8.5 says to omit.
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                            validate_outbound_headers=False))
conn.initiate_connection()
conn.increment_flow_control_window(1 << 24)  # a big connection window: the 64 KiB stream window must hold the sender
sid = conn.get_next_available_stream_id()
conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
todo, ended, status, reset, received, events = memoryview(pattern(size, 7)), False, None, None, bytearray(), set()
while not ended and reset is None:
    if todo:
        todo = send_window(conn, sid, todo)
        if not todo:
            conn.end_stream(sid)
    sock.sendall(conn.data_to_send())
    data = sock.recv(1 << 16)
    if not data:
        break
    for ev in conn.receive_data(data):
        events.add(type(ev).__name__)
        if isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers)[":status"]
        elif isinstance(ev, h2.events.DataReceived):
            received += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            ended = True
        elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
            reset = f"{type(ev).__name__} {ev.error_code!r}"
        # WindowUpdated: the loop sends again with the larger window.
conn.close_connection()
sock.sendall(conn.data_to_send())
sock.close()
print(json.dumps({"status": status, "ended": ended, "reset": reset, "received": len(received),
                  "sha256": hashlib.sha256(received).hexdigest(), "windowUpdated": "WindowUpdated" in events,
                  "settingsAcked": "SettingsAcknowledged" in events}))
`;

/** A python-h2 server for one connection: answers CONNECT with 200, echoes honouring flow control, half-close too. */
const PY_SERVER = PY_COMMON + `
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
listener.settimeout(20)
sock, _ = listener.accept()
sock.settimeout(20)
# As in the client: python-h2 4.1 would refuse a CONNECT without :scheme and :path, RFC 9113 §8.5 wants it so.
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                                            validate_inbound_headers=False))
conn.initiate_connection()
conn.increment_flow_control_window(1 << 24)  # as in the client
sock.sendall(conn.data_to_send())
sid, request, pending, received, client_ended, server_ended, terminated = None, None, b"", 0, False, False, None
while terminated is None:
    data = sock.recv(1 << 16)
    if not data:
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.RequestReceived):
            sid, request = ev.stream_id, dict(ev.headers)
            conn.send_headers(sid, [(":status", "200")])
        elif isinstance(ev, h2.events.DataReceived):
            pending += ev.data
            received += len(ev.data)
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            client_ended = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            terminated = int(ev.error_code)
        elif isinstance(ev, h2.events.StreamReset):
            raise SystemExit(f"stream reset by the client: {ev.error_code!r}")
    if sid is not None and not server_ended:
        pending = send_window(conn, sid, pending)
        if client_ended and not pending:
            conn.end_stream(sid)
            server_ended = True
    sock.sendall(conn.data_to_send())
sock.close()
listener.close()
print(json.dumps({"request": request, "received": received, "server_ended": server_ended, "terminated": terminated}))
`;

interopTest("our HTTP/2 server echoes python-h2's CONNECT tunnel, flow control both ways", ["python3-h2"], async () => {
  await using server = await serve();
  const out = await run(PYTHON, ["-c", PY_CLIENT, String(server.port), String(TUNNEL_BYTES)]);
  assert.deepEqual(JSON.parse(out.stdout), {
    status: "200",
    ended: true,
    reset: null,
    received: TUNNEL_BYTES,
    sha256: await sha256(pattern(TUNNEL_BYTES, 7)),
    windowUpdated: true,
    settingsAcked: true,
  });
});

interopTest(
  "our HTTP/2 client tunnels CONNECT through a python-h2 server and closes cleanly",
  ["python3-h2"],
  async () => {
    await using child = new Child(PYTHON, ["-c", PY_SERVER]);
    const port = Number(await child.firstLine());
    const socket = net.connect(port, "127.0.0.1");
    const client = new H2Connection(socket, { role: "client" });
    try {
      const stream = client.request([[":method", "CONNECT"], [":authority", "10.0.0.1:80"]]);
      const body = pattern(TUNNEL_BYTES, 11);
      stream.end(body);
      const [response, echoed] = await within(20_000, "the echo", Promise.all([stream.response, readAll(stream)]));
      assert.deepEqual(response, [[":status", "200"]]);
      assertSameBytes(echoed, body, "echo");
      await within(5_000, "the graceful close", client.close());
      assert.equal(client.closeError, undefined);
    } catch (error) {
      await child[Symbol.asyncDispose]();
      throw new Error(
        `${error instanceof Error ? error.message : error}
--- python stderr\n${(await child.done).stderr}`,
        { cause: error },
      );
    } finally {
      client.destroy();
      socket.destroy();
      await client.closed;
    }
    const out = await child.done;
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(JSON.parse(out.stdout.split("\n")[1]), {
      request: { ":method": "CONNECT", ":authority": "10.0.0.1:80" },
      received: TUNNEL_BYTES,
      server_ended: true,
      terminated: 0, // GOAWAY NO_ERROR
    });
  },
);

/** A python-h2 client sending two POSTs whose content-length disagrees with their DATA; prints each stream's fate. */
const PY_BAD_LENGTH = PY_COMMON + `
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
for sid, length, body in [(1, "5", b"0123456789"), (3, "100", b"short")]:
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "x"),
                            ("content-length", length)])
    conn.send_data(sid, body, end_stream=True)
fate = {}
while len(fate) < 2:
    sock.sendall(conn.data_to_send())
    data = sock.recv(1 << 16)
    if not data:
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.StreamReset):
            fate[ev.stream_id] = f"RST_STREAM {int(ev.error_code)}"
        elif isinstance(ev, h2.events.StreamEnded):
            fate[ev.stream_id] = "answered"
print(json.dumps(fate))
`;

interopTest(
  "our HTTP/2 server resets a request whose content-length disagrees with its DATA",
  ["python3-h2"],
  async () => {
    await using server = await serve();
    const out = await run(PYTHON, ["-c", PY_BAD_LENGTH, String(server.port)]);
    // RFC 9113 §8.1.1: such a request is malformed, a stream error of type PROTOCOL_ERROR (0x1).
    assert.deepEqual(JSON.parse(out.stdout), { "1": "RST_STREAM 1", "3": "RST_STREAM 1" });
  },
  // A length mismatch is request smuggling once a request is forwarded to an HTTP/1.1 upstream.
  { ignore: false },
);

/**
 * A python-h2 server for one connection that answers a POST at once, before reading its body: the response with
 * END_STREAM, then RST_STREAM(NO_ERROR) to stop the upload (RFC 9113 §8.1).
 */
const PY_EARLY_ANSWER = PY_COMMON + `
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
listener.settimeout(20)
sock, _ = listener.accept()
sock.settimeout(20)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
body = b"early answer: upload no further\\n"
while True:
    data = sock.recv(1 << 16)
    if not data:
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.RequestReceived):
            conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
            conn.send_data(ev.stream_id, body, end_stream=True)
            conn.reset_stream(ev.stream_id, 0)  # NO_ERROR
        elif isinstance(ev, h2.events.ConnectionTerminated):
            break
    sock.sendall(conn.data_to_send())
sock.close()
`;

interopTest(
  "our HTTP/2 client keeps a complete response that python-h2 follows with RST_STREAM(NO_ERROR)",
  ["python3-h2"],
  async () => {
    await using child = new Child(PYTHON, ["-c", PY_EARLY_ANSWER]);
    const port = Number(await child.firstLine());
    const socket = net.connect(port, "127.0.0.1");
    const client = new H2Connection(socket, { role: "client" });
    try {
      const stream = client.request([[":method", "POST"], [":scheme", "http"], [":path", "/upload"], [
        ":authority",
        "x",
      ]]);
      stream.write(pattern(1024, 3)); // the upload goes on: the request is not ended
      // As a proxy does: the head first, then the body is read (piped on) once the head has been dealt with.
      const response = await within(10_000, "the early answer", stream.response);
      assert.equal(field(response, ":status"), "200");
      await new Promise((resolve) => setTimeout(resolve, 50));
      const body = await within(5_000, "the body", readAll(stream));
      // RFC 9113 §8.1: "Clients MUST NOT discard responses as a result of receiving such a RST_STREAM".
      assert.equal(new TextDecoder().decode(body), "early answer: upload no further\n");
    } finally {
      client.destroy();
      socket.destroy();
      await client.closed;
    }
  },
);
