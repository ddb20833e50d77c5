/**
 * The data-plane benchmark (issue 3): client pod on node A → server pod on node B, in network namespaces, three
 * ways in one run, interleaved: (a) direct TCP, (b) through Skiff (two ztunnel processes, HBONE), (c) through a
 * stunnel mTLS pair (TLS 1.3, ECDSA P-256, client certificates verified), and (d) through a bare `node:tls` relay
 * pair (bench/tls_relay.ts: the same certificates and TLS settings as HBONE, no HTTP/2), this runtime's own
 * ceiling for the same topology (issue 18). For each: bulk throughput on 1 and 4 streams, 1-byte round-trip p50/p99, new connections per second, and ztunnel's RSS idle and under load.
 *
 * The apps (a byte sink and an echo) run in a separate process so the load generator does not share a thread
 * with them. Run as root: `deno run --allow-all bench/dataplane.ts` (`deno task bench` runs it). Medians of the
 * rounds are printed, with ratios and the issue's targets; a missed target is said plainly.
 */

import { join } from "node:path";
import { installRedirect } from "../cni/redirect_linux.ts";
import { certificatesToPem } from "../certs/x509.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { IS_ROOT, NetnsCluster, type Pod } from "../tests/harness/netns.ts";
import { dialFrom, listenIn } from "../tests/harness/tcp.ts";
import { hboneWorkload, meshDir, ZtunnelProcess } from "../tests/harness/ztunnel.ts";
import type { TlsRelayConfig } from "./tls_relay.ts";
import { rssMiB } from "./common.ts";

const SINK = 5001;
const ECHO = 5002;
const ROUNDS = 3;
const SECONDS = 2;
const RELAY = new URL("./tls_relay.ts", import.meta.url).pathname;

// ---- the apps' process ---------------------------------------------------------------------------------------------

if (Deno.args[0] === "--apps") {
  for (const path of Deno.args.slice(1)) {
    serveSink(listenIn(path, "0.0.0.0", SINK));
    serveEcho(listenIn(path, "0.0.0.0", ECHO));
  }
  console.log("ready");
  await new Promise(() => {});
}

async function serveSink(listener: Deno.TcpListener) {
  for await (const conn of listener) {
    (async () => {
      let n = 0;
      const buf = new Uint8Array(256 * 1024);
      try {
        for (let r = await conn.read(buf); r !== null; r = await conn.read(buf)) n += r;
        await conn.write(new TextEncoder().encode(String(n)));
      } catch { /* reset */ }
      conn.close();
    })();
  }
}

async function serveEcho(listener: Deno.TcpListener) {
  for await (const conn of listener) {
    conn.setNoDelay(true);
    (async () => {
      const buf = new Uint8Array(64 * 1024);
      try {
        for (let r = await conn.read(buf); r !== null; r = await conn.read(buf)) await conn.write(buf.subarray(0, r));
      } catch { /* reset */ }
      try {
        conn.close();
      } catch { /* closed */ }
    })();
  }
}

// ---- load ----------------------------------------------------------------------------------------------------------

interface Target {
  name: "direct" | "skiff" | "stunnel" | "nodetls";
  from: Pod;
  ip: string;
  sinkPort: number;
  echoPort: number;
}

async function writeAll(conn: Deno.TcpConn, bytes: Uint8Array) {
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/** MB/s received by the sink over `streams` parallel connections writing for SECONDS. */
async function throughput(t: Target, streams: number): Promise<number> {
  const chunk = new Uint8Array(256 * 1024).fill(0x5a);
  const start = performance.now();
  const deadline = start + SECONDS * 1000;
  const counts = await Promise.all(Array.from({ length: streams }, async () => {
    const conn = await dialFrom(t.from.netnsPath, t.ip, t.sinkPort);
    try {
      while (performance.now() < deadline) await writeAll(conn, chunk);
      await conn.closeWrite();
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      return Number(new TextDecoder().decode(buf.subarray(0, n ?? 0)));
    } catch (error) {
      throw new Error(`throughput through ${t.name} on ${streams} streams: ${error}`, { cause: error });
    } finally {
      conn.close();
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  return counts.reduce((a, b) => a + b, 0) / seconds / 1e6;
}

/** 1-byte round trips on one connection: p50 and p99 in µs. */
async function roundTrips(t: Target): Promise<{ p50: number; p99: number }> {
  const conn = await dialFrom(t.from.netnsPath, t.ip, t.echoPort);
  conn.setNoDelay(true);
  const one = new Uint8Array([1]);
  const buf = new Uint8Array(16);
  const samples: number[] = [];
  for (let i = 0; i < 2200; i++) {
    const t0 = performance.now();
    await conn.write(one);
    if ((await conn.read(buf)) === null) throw new Error(`${t.name}: echo closed`);
    if (i >= 200) samples.push((performance.now() - t0) * 1000);
  }
  conn.close();
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(samples.length * 0.5)], p99: samples[Math.floor(samples.length * 0.99)] };
}

/** New connections per second: connect, 1 byte there and back, close; 4 loops at once. */
async function connectionRate(t: Target): Promise<number> {
  const deadline = performance.now() + SECONDS * 1000;
  const start = performance.now();
  const counts = await Promise.all(Array.from({ length: 4 }, async () => {
    let n = 0;
    const buf = new Uint8Array(16);
    while (performance.now() < deadline) {
      const conn = await dialFrom(t.from.netnsPath, t.ip, t.echoPort);
      await conn.write(new Uint8Array([1]));
      if ((await conn.read(buf)) !== null) n++;
      conn.close();
    }
    return n;
  }));
  return counts.reduce((a, b) => a + b, 0) / ((performance.now() - start) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// ---- setup ---------------------------------------------------------------------------------------------------------

/** Starts stunnel in `pod` and resolves once it accepts on 127.0.0.1:`port` there. */
async function stunnel(pod: Pod, dir: string, name: string, conf: string, port: number): Promise<Deno.ChildProcess> {
  const file = join(dir, `${name}.conf`);
  await Deno.writeTextFile(file, `foreground = yes\npid =\ndebug = 3\n${conf}`);
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", pod.netns, "stunnel", file],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (const deadline = Date.now() + 5000;;) {
    try {
      (await dialFrom(pod.netnsPath, "127.0.0.1", port)).close();
      return child;
    } catch (error) {
      if (Date.now() > deadline) {
        child.kill();
        await child.status;
        throw new Error(`stunnel ${name} is not accepting on port ${port} after 5 s: ${error}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Starts one half of the bare node:tls pair in `pod` and resolves once it says it accepts. */
async function tlsRelay(pod: Pod, file: string, config: TlsRelayConfig): Promise<Deno.ChildProcess> {
  await Deno.writeTextFile(file, JSON.stringify(config));
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", pod.netns, Deno.execPath(), "run", "--allow-all", RELAY, file],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  reader.releaseLock();
  if (!first.value?.includes("ready")) {
    await child.status;
    throw new Error(`node:tls relay (${config.role}) in ${pod.netns} exited before it was ready`);
  }
  return child;
}

async function main() {
  if (!IS_ROOT) return console.log("bench/dataplane.ts: skipped, needs root (network namespaces)");
  if ((await new Deno.Command("sh", { args: ["-c", "command -v stunnel"] }).output()).code !== 0) {
    return console.log("bench/dataplane.ts: skipped, stunnel is not installed (install.sh installs stunnel4)");
  }
  await using cluster = await NetnsCluster.create("bench", { nodes: 2 });
  const [a, b] = cluster.nodes;
  const pods = {
    directA: await cluster.addPod(a, "dcli"),
    directB: await cluster.addPod(b, "dsrv"),
    skiffA: await cluster.addPod(a, "scli"),
    skiffB: await cluster.addPod(b, "ssrv"),
    tlsA: await cluster.addPod(a, "tcli"),
    tlsB: await cluster.addPod(b, "tsrv"),
    nodeTlsA: await cluster.addPod(a, "ncli"),
    nodeTlsB: await cluster.addPod(b, "nsrv"),
  };
  await installRedirect(pods.skiffA.netnsPath);
  await installRedirect(pods.skiffB.netnsPath);

  const apps = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      new URL(import.meta.url).pathname,
      "--apps",
      pods.directB.netnsPath,
      pods.skiffB.netnsPath,
      pods.tlsB.netnsPath,
      pods.nodeTlsB.netnsPath,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const processes: Deno.ChildProcess[] = [apps];
  await using mesh = await meshDir();
  try {
    const reader = apps.stdout.pipeThrough(new TextDecoderStream()).getReader();
    await reader.read(); // "ready"
    reader.releaseLock();

    // Skiff: both pods enrolled, a ztunnel per node, info-level logs off the hot path.
    await Deno.writeTextFile(
      mesh.configFile,
      `workloads:\n${[pods.skiffA, pods.skiffB].map((p) => hboneWorkload(p, "bench")).join("\n")}\n`,
    );
    await using za = await ZtunnelProcess.start(a.name, mesh, { LOG_LEVEL: "warn" });
    await using zb = await ZtunnelProcess.start(b.name, mesh, { LOG_LEVEL: "warn" });
    await za.enroll(pods.skiffA, "bench");
    await zb.enroll(pods.skiffB, "bench");

    // stunnel: P-256 certificates from a mesh CA, TLS 1.3 only, client certificates required and verified.
    const tlsDir = join(mesh.dir, "stunnel");
    await Deno.mkdir(tlsDir);
    for (const who of ["client", "server"]) {
      const issued = await mesh.ca.issue(SpiffeId.parse(`spiffe://cluster.local/ns/bench/sa/${who}`));
      await Deno.writeTextFile(join(tlsDir, `${who}.pem`), certificatesToPem(issued.chain) + issued.keyPem);
    }
    await Deno.writeTextFile(join(tlsDir, "ca.pem"), certificatesToPem(mesh.ca.roots));
    const common = (who: string) =>
      `cert = ${tlsDir}/${who}.pem\nCAfile = ${tlsDir}/ca.pem\nverifyChain = yes\nsslVersionMin = TLSv1.3\n`;
    processes.push(
      await stunnel(
        pods.tlsB,
        tlsDir,
        "server",
        `${common("server")}[sink]\naccept = 0.0.0.0:6001\nconnect = 127.0.0.1:${SINK}\n` +
          `[echo]\naccept = 0.0.0.0:6002\nconnect = 127.0.0.1:${ECHO}\n`,
        6002,
      ),
      await stunnel(
        pods.tlsA,
        tlsDir,
        "client",
        `client = yes\n${common("client")}[sink]\naccept = 127.0.0.1:7001\nconnect = ${pods.tlsB.address}:6001\n` +
          `[echo]\naccept = 127.0.0.1:7002\nconnect = ${pods.tlsB.address}:6002\n`,
        7002,
      ),
    );

    // The bare node:tls pair: the same mesh CA, each relay in its own process as each ztunnel is.
    const nodeTls = async (who: "client" | "server", pod: Pod, routes: TlsRelayConfig["routes"]) => {
      const issued = await mesh.ca.issue(SpiffeId.parse(`spiffe://cluster.local/ns/bench/sa/${who}`));
      const credentials = {
        chainPem: certificatesToPem(issued.chain),
        keyPem: issued.keyPem,
        rootsPem: certificatesToPem(mesh.ca.roots),
      };
      return await tlsRelay(pod, join(tlsDir, `node-${who}.json`), { role: who, credentials, routes });
    };
    const route = (lh: string, lp: number, ch: string, cp: number) => ({
      listen: { host: lh, port: lp },
      connect: { host: ch, port: cp },
    });
    processes.push(
      await nodeTls("server", pods.nodeTlsB, [
        route("0.0.0.0", 6001, "127.0.0.1", SINK),
        route("0.0.0.0", 6002, "127.0.0.1", ECHO),
      ]),
      await nodeTls("client", pods.nodeTlsA, [
        route("127.0.0.1", 7001, pods.nodeTlsB.address, 6001),
        route("127.0.0.1", 7002, pods.nodeTlsB.address, 6002),
      ]),
    );

    const targets: Target[] = [
      { name: "direct", from: pods.directA, ip: pods.directB.address, sinkPort: SINK, echoPort: ECHO },
      { name: "skiff", from: pods.skiffA, ip: pods.skiffB.address, sinkPort: SINK, echoPort: ECHO },
      { name: "stunnel", from: pods.tlsA, ip: "127.0.0.1", sinkPort: 7001, echoPort: 7002 },
      { name: "nodetls", from: pods.nodeTlsA, ip: "127.0.0.1", sinkPort: 7001, echoPort: 7002 },
    ];
    for (const t of targets) await roundTrips(t); // warm-up and a check that each path works

    const idle = { a: rssMiB(za.pid), b: rssMiB(zb.pid) };
    let peak = { ...idle };
    const sampler = setInterval(() => {
      peak = { a: Math.max(peak.a, rssMiB(za.pid)), b: Math.max(peak.b, rssMiB(zb.pid)) };
    }, 100);
    const results: Record<string, Record<string, number[]>> = {};
    const record = (mode: string, what: string, v: number) => ((results[mode] ??= {})[what] ??= []).push(v);
    try {
      for (let round = 0; round < ROUNDS; round++) {
        for (const t of targets) {
          record(t.name, "tput1", await throughput(t, 1));
          record(t.name, "tput4", await throughput(t, 4));
          const rtt = await roundTrips(t);
          record(t.name, "p50", rtt.p50);
          record(t.name, "p99", rtt.p99);
          record(t.name, "conns", await connectionRate(t));
        }
      }
    } finally {
      clearInterval(sampler);
    }
    report(results, idle, peak);
  } finally {
    for (const p of processes) {
      try {
        p.kill("SIGTERM");
      } catch { /* gone */ }
      await p.status;
    }
  }
}

function report(results: Record<string, Record<string, number[]>>, idle: { a: number; b: number }, peak: typeof idle) {
  const m = (mode: string, what: string) => median(results[mode][what]);
  const rows: [string, string, (v: number) => string][] = [
    ["tput1", "throughput, 1 stream (MB/s)", (v) => v.toFixed(0)],
    ["tput4", "throughput, 4 streams (MB/s)", (v) => v.toFixed(0)],
    ["p50", "1-byte round trip p50 (µs)", (v) => v.toFixed(0)],
    ["p99", "1-byte round trip p99 (µs)", (v) => v.toFixed(0)],
    ["conns", "new connections per second", (v) => v.toFixed(0)],
  ];
  const pad = (s: string, n: number) => s.padStart(n);
  console.log(`Data plane, client pod on node A → server pod on node B; median of ${ROUNDS} interleaved rounds`);
  console.log(
    "skiff: two ztunnel processes (LOG_LEVEL=warn, so no access-log lines), HBONE with pooled connections; " +
      "stunnel: a client/server pair, TLS 1.3, P-256 certificates, client certificates verified; " +
      "node:tls: a bare node:tls relay pair in two Deno processes (same certificates and TLS settings as HBONE, " +
      "a TLS connection per connection, no HTTP/2); load, apps and proxies all share this machine's cores",
  );
  console.log(
    `${"".padEnd(30)}${pad("direct", 9)}${pad("skiff", 9)}${pad("stunnel", 9)}${pad("node:tls", 9)}${
      pad("skiff/direct", 14)
    }${pad("skiff/stunnel", 15)}${pad("stunnel/direct", 16)}${pad("skiff/node:tls", 16)}`,
  );
  for (const [key, label, f] of rows) {
    const [d, s, t, n] = ["direct", "skiff", "stunnel", "nodetls"].map((x) => m(x, key));
    console.log(
      `${label.padEnd(30)}${pad(f(d), 9)}${pad(f(s), 9)}${pad(f(t), 9)}${pad(f(n), 9)}${pad((s / d).toFixed(2), 14)}${
        pad((s / t).toFixed(2), 15)
      }${pad((t / d).toFixed(2), 16)}${pad((s / n).toFixed(2), 16)}`,
    );
  }
  console.log(
    `ztunnel RSS (MiB): node A idle ${idle.a.toFixed(0)}, peak ${peak.a.toFixed(0)}; ` +
      `node B idle ${idle.b.toFixed(0)}, peak ${peak.b.toFixed(0)}`,
  );
  const addedSkiff = m("skiff", "p50") - m("direct", "p50");
  const addedTls = m("stunnel", "p50") - m("direct", "p50");
  // The issue's table (issue 18), one line each.
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
  const rssIdle = Math.max(idle.a, idle.b);
  const rssPeak = Math.max(peak.a, peak.b);
  const targets: [string, boolean, string][] = [
    [
      "throughput, 1 stream ≥ 0.8× stunnel",
      m("skiff", "tput1") / m("stunnel", "tput1") >= 0.8,
      ratio(m("skiff", "tput1"), m("stunnel", "tput1")),
    ],
    [
      "throughput, 4 streams ≥ 1.0× stunnel",
      m("skiff", "tput4") / m("stunnel", "tput4") >= 1,
      ratio(m("skiff", "tput4"), m("stunnel", "tput4")),
    ],
    [
      "throughput, 1 stream ≥ 0.9× the bare node:tls pair",
      m("skiff", "tput1") / m("nodetls", "tput1") >= 0.9,
      `${ratio(m("skiff", "tput1"), m("nodetls", "tput1"))} (4 streams ${
        ratio(m("skiff", "tput4"), m("nodetls", "tput4"))
      })`,
    ],
    [
      "added p50 (1-byte round trip) ≤ 1.5× stunnel's",
      addedSkiff <= 1.5 * addedTls,
      `skiff adds ${addedSkiff.toFixed(0)} µs, stunnel ${addedTls.toFixed(0)} µs (${ratio(addedSkiff, addedTls)})`,
    ],
    [
      "new connections/s ≥ 3× stunnel",
      m("skiff", "conns") / m("stunnel", "conns") >= 3,
      ratio(m("skiff", "conns"), m("stunnel", "conns")),
    ],
    [
      "ztunnel RSS idle ≤ 60 MiB, peak ≤ 120 MiB",
      rssIdle <= 60 && rssPeak <= 120,
      `idle ${rssIdle.toFixed(0)} MiB, peak ${rssPeak.toFixed(0)} MiB (the larger of the two nodes)`,
    ],
  ];
  for (const [what, met, detail] of targets) console.log(`target ${what}: ${met ? "met" : "MISSED"} (${detail})`);
}

if (Deno.args[0] !== "--apps") await main();
