/**
 * HTTP/2 resource bounds through the real path: a python peer (its own process, python3-h2's `hpack` for header
 * blocks, raw frames for the rest) over real TLS 1.3 and TCP against our codec as a server. Each test is an attack
 * that cost the codec unbounded CPU or memory; each asserts on counts and on how the connection ended, never on
 * time or RSS.
 *
 * - One SETTINGS frame of 100,000 entries (600 KB): at most 32 entries per frame, as nghttp2 allows
 *   (`nghttp2_option_set_max_settings`, default 32); beyond it GOAWAY ENHANCE_YOUR_CALM.
 * - A peer that never reads while provoking answers (431s here): at most 10,000 frames queued towards it (Envoy's
 *   `max_outbound_frames`), then the connection closes with ENHANCE_YOUR_CALM.
 *
 * Skipped locally when python3-h2 or openssl is missing, failing in CI (install.sh installs them).
 */

import assert from "node:assert/strict";
import type net from "node:net";
import tls from "node:tls";
import { H2Connection } from "../dataplane/h2/connection.ts";
import { ErrorCode, H2Error } from "../dataplane/h2/frame.ts";
import { FLOOD_LIMITS } from "../dataplane/h2/flood.ts";

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

const MISSING = [
  ...(installed(PYTHON, ["-c", "import h2, hpack"]) ? [] : ["python3-h2"]),
  ...(installed("openssl", ["version"]) ? [] : ["openssl"]),
];

function floodTest(name: string, fn: () => Promise<void>) {
  Deno.test({
    name,
    ignore: MISSING.length > 0 && !IN_CI,
    fn: async () => {
      if (MISSING.length > 0) {
        throw new Error(`Cannot run the HTTP/2 flood test: ${MISSING.join(", ")} not installed (install.sh; CI=true)`);
      }
      await fn();
    },
  });
}

interface FloodServer extends AsyncDisposable {
  port: number;
  connections: H2Connection[];
  /** The TLS socket under each connection, in the same order. */
  sockets: net.Socket[];
  /** Requests that reached the handler. */
  handled: number;
}

/** Our H2Connection as a TLS 1.3 server (ALPN h2) on 127.0.0.1 with a throwaway certificate; answers 200. */
async function tlsServer(): Promise<FloodServer> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-h2-flood-" });
  try {
    const made = await new Deno.Command("openssl", {
      args: [
        ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost"],
        ...["-days", "1", "-keyout", `${dir}/key.pem`, "-out", `${dir}/cert.pem`],
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!made.success) throw new Error(`openssl req: ${new TextDecoder().decode(made.stderr)}`);
    const sockets = new Set<net.Socket>();
    const result: FloodServer = {
      port: 0,
      connections: [],
      sockets: [],
      handled: 0,
      async [Symbol.asyncDispose]() {
        for (const connection of result.connections) connection.destroy();
        for (const socket of sockets) socket.destroy();
        await Promise.all([new Promise((r) => server.close(r)), ...result.connections.map((c) => c.closed)]);
      },
    };
    const server = tls.createServer({
      key: await Deno.readTextFile(`${dir}/key.pem`),
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      ALPNProtocols: ["h2"],
      minVersion: "TLSv1.3",
    }, (socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      result.sockets.push(socket);
      result.connections.push(
        new H2Connection(socket, {
          role: "server",
          onStream: (stream) => {
            result.handled++;
            stream.respond([[":status", "200"]], { endStream: true });
          },
        }),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    result.port = (server.address() as net.AddressInfo).port;
    return result;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs a python script with `args`; resolves with its parsed JSON stdout, or throws with its stderr. */
async function python(script: string, args: string[], timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const child = new Deno.Command(PYTHON, { args: ["-c", script, ...args], stdout: "piped", stderr: "piped" }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const out = await child.output().finally(() => clearTimeout(timer));
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`python exited with ${out.code} (killed after ${timeoutMs} ms?): ${stderr}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** Runs a python script that prints one JSON line and then lingers; resolves with the line and the child. */
async function pythonLingering(script: string, args: string[]) {
  const child = new Deno.Command(PYTHON, { args: ["-c", script, ...args], stdout: "piped", stderr: "piped" })
    .spawn();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) {
      let err = "";
      for (let r = await stderr.read(); !r.done; r = await stderr.read()) err += r.value;
      await child.status;
      throw new Error(`python ended before its report: ${err}`);
    }
    text += value;
  }
  return {
    report: JSON.parse(text.slice(0, text.indexOf("\n"))) as Record<string, unknown>,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await Promise.all([lines.cancel(), stderr.cancel(), child.status]);
    },
  };
}

/** A settled promise's value, or `fallback` if it did not settle within `ms`. */
async function within<T>(ms: number, promise: Promise<T>, fallback: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<T>((resolve) => timer = setTimeout(() => resolve(fallback), ms));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

const PY_COMMON = `
import json, socket, ssl, struct, sys, time

def tls_connect(port, rcvbuf=None):
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Set before connect, so the window we advertise stays small: an attacker that reads nothing.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", port))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(raw)
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    return s

def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload

PREFACE = b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"

def read_frames(s, until, timeout):
    """Reads frames until until(type, flags, payload) is true, the peer closes, or timeout; returns the list."""
    s.settimeout(timeout)
    buf, frames = b"", []
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return frames
            buf += data
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                f = (buf[3], buf[4], buf[9:9 + n])
                buf = buf[9 + n:]
                frames.append(f)
                if until(*f):
                    return frames
    except (socket.timeout, ConnectionError, ssl.SSLError):
        return frames
`;

/**
 * Sends the preface, an empty SETTINGS, then one SETTINGS frame of `entries` entries (alternating
 * HEADER_TABLE_SIZE and INITIAL_WINDOW_SIZE, both valid), and reports what came back.
 */
const PY_SETTINGS = PY_COMMON + `
port, entries = int(sys.argv[1]), int(sys.argv[2])
s = tls_connect(port)
body = b"".join(struct.pack(">HI", 1, 4096) if i % 2 == 0 else struct.pack(">HI", 4, 65535) for i in range(entries))
started = time.monotonic()
s.sendall(PREFACE + frame(4, 0, 0) + frame(4, 0, 0, body))
# The ACKs of our two SETTINGS frames, or a GOAWAY.
acks = 0
def until(t, flags, payload):
    global acks
    if t == 4 and flags & 1:
        acks += 1
    return t == 7 or acks == 2
frames = read_frames(s, until, 10)
elapsed = (time.monotonic() - started) * 1000
goaway = next((int.from_bytes(p[4:8], "big") for t, _, p in frames if t == 7), None)
print(json.dumps({"acks": acks, "goaway": goaway, "ms": round(elapsed, 1)}))
`;

floodTest("a SETTINGS frame of 100,000 entries is refused with GOAWAY ENHANCE_YOUR_CALM", async () => {
  await using server = await tlsServer();
  const out = await python(PY_SETTINGS, [String(server.port), "100000"]);
  console.log(`100,000-entry SETTINGS: ${JSON.stringify(out)}`);
  assert.equal(out.goaway, ErrorCode.ENHANCE_YOUR_CALM, `the server answered ${JSON.stringify(out)}`);
  assert.equal(out.acks, 1, "only the empty SETTINGS was acknowledged");
  const connection = server.connections[0];
  await connection.closed;
  assert.match(connection.closeError?.message ?? "", /SETTINGS frame of 100000 entries/);
});

floodTest("a SETTINGS frame of a few entries, and one of 32, is still acknowledged", async () => {
  await using server = await tlsServer();
  for (const entries of [6, FLOOD_LIMITS.settingsPerFrame]) {
    const out = await python(PY_SETTINGS, [String(server.port), String(entries)]);
    assert.deepEqual({ acks: out.acks, goaway: out.goaway }, { acks: 2, goaway: null }, `${entries} entries`);
  }
});

/**
 * Opens a connection with a 4 KiB receive buffer and never reads it. Sends `count` GET requests, each with
 * END_STREAM and a header list of 17 × 4 KB: one 4 KB field in HPACK's dynamic table, then referenced by a
 * 1-byte index, so each request costs ~30 bytes and its decoded list is over the server's 64 KiB limit. Each one
 * is answered with a 431. Prints how many requests went out before the server closed the connection.
 */
const PY_UNREAD = PY_COMMON + `
import hpack
port, count = int(sys.argv[1]), int(sys.argv[2])
s = tls_connect(port, rcvbuf=4096)
enc = hpack.Encoder()
base = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "x")]
big = [("x-big", "a" * 4000)] * 17
first = enc.encode(base + big)
again = enc.encode(base + big)  # every field now indexed: the same ~20 bytes each time
assert len(again) < 30, len(again)
chunks = [PREFACE, frame(4, 0, 0), frame(1, 0x1 | 0x4, 1, first)]
chunks += [frame(1, 0x1 | 0x4, 2 * i + 1, again) for i in range(1, count)]
out = b"".join(chunks)
per_request = 9 + len(again)
sent, error = 0, None
try:
    for at in range(0, len(out), 16384):
        s.sendall(out[at:at + 16384])
        sent = at + 16384
except (ConnectionError, ssl.SSLError, socket.timeout) as e:
    error = type(e).__name__
print(json.dumps({"bytes": len(out), "sent": min(sent, len(out)), "perRequest": per_request, "error": error}),
      flush=True)
# Do not read, and do not close: the server must be the one to end this.
time.sleep(float(sys.argv[3]))
`;

floodTest("a peer that never reads gets at most 10,000 queued frames, then ENHANCE_YOUR_CALM", async () => {
  await using server = await tlsServer();
  // The kernel takes the first ~3 MB of 431s into its socket buffers (tcp_wmem); only what follows queues in ours.
  const requests = 600_000;
  await using peer = await pythonLingering(PY_UNREAD, [String(server.port), String(requests), "30"]);
  const out = peer.report;
  console.log(`unread 431s: ${JSON.stringify(out)}`);
  assert.ok(Number(out.perRequest) < 40, `each request is a few bytes on the wire: ${JSON.stringify(out)}`);
  const [connection, socket] = [server.connections[0], server.sockets[0]];
  // The peer has sent everything (or was cut off) and lingers without reading or closing: only the server can
  // end this connection, and it must have by now.
  const ended = await within(3_000, connection.closed.then(() => true), false);
  assert.ok(
    ended,
    `the connection to a peer that reads nothing is still open after ${requests} requests answered with 431` +
      ` (${socket.writableLength} bytes queued in the socket)`,
  );
  assert.ok(connection.closeError instanceof H2Error, `closed by: ${connection.closeError}`);
  assert.equal(connection.closeError.code, ErrorCode.ENHANCE_YOUR_CALM);
  assert.match(connection.closeError.message, /10001 frames queued to a peer that does not read/);
  assert.equal(server.handled, 0, "no request reached the handler");
});
