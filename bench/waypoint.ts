/**
 * The waypoint benchmark (issue 6): HTTP/1.1 requests per second and latency p50/p99, measured with wrk, three
 * ways in one run on one node of network namespaces, all against the same backend (a Deno.serve server in a
 * pod outside the mesh answering a 2-byte body):
 *
 * - direct: an uncaptured pod → the backend's pod IP;
 * - haproxy: an uncaptured pod → haproxy (`mode http`, one thread, keep-alive and `http-reuse always` to the
 *   backend) in a pod of its own → the backend; only when haproxy is installed;
 * - skiff waypoint: a captured pod → its node's ztunnel (HBONE) → `skiff waypoint` → plain TCP → the backend,
 *   through the Service VIP bound to the waypoint by its namespace's `istio.io/use-waypoint` label. A waypoint
 *   can only be entered over HBONE, so this row includes the client's ztunnel hop as well as the waypoint.
 *
 * A real control plane (manifests), a real ztunnel and a real waypoint process, set up as tests/waypoint_test.ts
 * does. The issue's target is the waypoint at ≥ 0.5× haproxy's requests per second. Run as root:
 * `deno run --allow-all bench/waypoint.ts` (`deno task bench` runs it); it says why when it cannot run.
 */

import { join } from "node:path";
import { installRedirect } from "../cni/redirect_linux.ts";
import { runIn } from "../tests/harness/apps.ts";
import { ControlProcess } from "../tests/harness/control.ts";
import { IS_ROOT, NetnsCluster, type Pod } from "../tests/harness/netns.ts";
import { SkiffProcess, terminate } from "../tests/harness/process.ts";
import { dialFrom } from "../tests/harness/tcp.ts";
import { ZtunnelProcess } from "../tests/harness/ztunnel.ts";
import { rssMiB, until200 } from "./common.ts";

const VIP = "10.96.9.1";
const APP_PORT = 8080;
const HAPROXY_PORT = 8080;
const CONNECTIONS = 32;
const WARMUP_SECONDS = 2;
const SECONDS = 10;

// ---- the backend's process -----------------------------------------------------------------------------------------

if (Deno.args[0] === "--hello") {
  const body = new TextEncoder().encode("ok");
  Deno.serve(
    { hostname: "0.0.0.0", port: Number(Deno.args[1]), onListen: () => console.log("listening") },
    () => new Response(body),
  );
}

// ---- processes in pods ---------------------------------------------------------------------------------------------

/** A long-running command in a pod (`ip netns exec` execs, so the pid is the command's), stopped by its pid. */
class PodProcess implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stderr: Promise<string>;

  constructor(readonly pod: Pod, readonly cmd: string[]) {
    this.#child = new Deno.Command("ip", {
      args: ["netns", "exec", pod.netns, ...cmd],
      env: { RUST_BACKTRACE: "0", DENO_NO_UPDATE_CHECK: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#stderr = new Response(this.#child.stderr).text();
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Resolves once `port` accepts on `ip` as seen from `from`; throws with the command's stderr after 20 s. */
  async accepting(from: Pod, ip: string, port: number): Promise<void> {
    let exited = false;
    this.#child.status.then(() => exited = true);
    for (const deadline = Date.now() + 20_000;;) {
      try {
        (await dialFrom(from.netnsPath, ip, port)).close();
        return;
      } catch (error) {
        if (exited || Date.now() > deadline) {
          const why = exited ? "exited" : "is not accepting after 20 s";
          throw new Error(
            `${this.cmd[0]} in ${this.pod.name} ${why} (${ip}:${port}: ${error}): ${await this.#stderrSoon()}`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  async #stderrSoon(): Promise<string> {
    return await Promise.race([this.#stderr, new Promise<string>((r) => setTimeout(() => r("(running)"), 500))]);
  }

  async [Symbol.asyncDispose]() {
    await terminate(this.#child);
    await this.#stderr;
  }
}

/** haproxy as an HTTP reverse proxy to `backend`, in `pod`, with its config in `dir`. */
async function haproxy(pod: Pod, dir: string, backend: string): Promise<PodProcess> {
  const file = join(dir, "haproxy.cfg");
  // One thread, to match the waypoint's one JavaScript thread; keep-alive on both sides, and server connections
  // shared between client connections (`http-reuse always`), as the waypoint's pool does.
  await Deno.writeTextFile(
    file,
    `global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 0.0.0.0:${HAPROXY_PORT}
  default_backend app
backend app
  server app ${backend}:${APP_PORT}
`,
  );
  const check = await runIn(pod, ["haproxy", "-c", "-q", "-f", file]);
  if (check.code !== 0) throw new Error(`haproxy -c ${file}: ${check.stderr.trim()}`);
  const p = new PodProcess(pod, ["haproxy", "-db", "-f", file]);
  try {
    await p.accepting(pod, "127.0.0.1", HAPROXY_PORT);
  } catch (error) {
    await p[Symbol.asyncDispose]();
    throw error;
  }
  return p;
}

// ---- load ----------------------------------------------------------------------------------------------------------

interface WrkResult {
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  non2xx: number;
  socketErrors: number;
}

const UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Reads wrk's `--latency` report. */
function parseWrk(text: string): WrkResult {
  const time = (pct: string) => {
    const m = new RegExp(`^\\s*${pct}%\\s+([\\d.]+)(us|ms|s|m|h)\\s*$`, "m").exec(text);
    return m ? Number(m[1]) * UNITS[m[2]] : NaN;
  };
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  return {
    requests: Number(/(\d+) requests in/.exec(text)?.[1] ?? 0),
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? 0),
    p50Ms: time("50"),
    p99Ms: time("99"),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0),
    socketErrors: errors ? errors.slice(1).reduce((s, n) => s + Number(n), 0) : 0,
  };
}

/** Runs wrk (one thread, {@link CONNECTIONS} connections) from `pod` against `url` for `seconds`. */
async function wrk(pod: Pod, url: string, seconds: number): Promise<WrkResult> {
  const args = ["wrk", "-t1", `-c${CONNECTIONS}`, `-d${seconds}s`, "--latency", url];
  const out = await runIn(pod, args, (seconds + 30) * 1000);
  const result = parseWrk(out.stdout);
  if (out.code !== 0 || result.requests === 0 || result.non2xx > 0 || Number.isNaN(result.p99Ms)) {
    throw new Error(`${args.join(" ")} in ${pod.name} failed (exit ${out.code}): ${out.stdout}${out.stderr}`);
  }
  return result;
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number, ticks: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields[0] is field 3, the state
  return (Number(fields[11]) + Number(fields[12])) / ticks;
}

async function installed(cmd: string): Promise<boolean> {
  return (await new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" }).output()).code === 0;
}

// ---- setup ---------------------------------------------------------------------------------------------------------

const pod = (p: Pod, labels: string, sa = p.name) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: bench, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${sa} }
status: { podIP: ${p.address}, phase: Running }
---
`;

interface Row {
  name: string;
  result: WrkResult;
  /** CPU used during the measured run by the proxy processes, as % of one core. */
  cpu: string;
}

async function main() {
  if (!IS_ROOT) return console.log("bench/waypoint.ts: skipped, needs root (network namespaces)");
  if (!(await installed("wrk"))) {
    return console.log(
      "bench/waypoint.ts: skipped, wrk is not installed (install.sh installs it: apt-get install wrk)",
    );
  }
  const withHaproxy = await installed("haproxy");
  const getconf = await new Deno.Command("getconf", { args: ["CLK_TCK"] }).output();
  const ticks = Number(new TextDecoder().decode(getconf.stdout)) || 100; // /proc/PID/stat counts in these

  await using cluster = await NetnsCluster.create("bench-waypoint");
  const [node] = cluster.nodes;
  const pods = {
    load: await cluster.addPod(node, "load"),
    app: await cluster.addPod(node, "app"),
    waypoint: await cluster.addPod(node, "waypoint"),
    plain: await cluster.addPod(node, "plain"),
    haproxy: await cluster.addPod(node, "haproxy"),
  };
  await installRedirect(pods.load.netnsPath);
  await using app = new PodProcess(pods.app, [
    Deno.execPath(),
    "run",
    "--allow-all",
    new URL(import.meta.url).pathname,
    "--hello",
    String(APP_PORT),
  ]);
  await app.accepting(pods.plain, pods.app.address, APP_PORT);

  await using control = await ControlProcess.start({
    "bench.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: bench, labels: { istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: bench }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${pod(pods.load, "app: load")}${pod(pods.app, "app: hello, istio.io/dataplane-mode: none")}${
      pod(pods.waypoint, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none", "waypoint")
    }apiVersion: v1
kind: Service
metadata: { name: hello, namespace: bench }
spec:
  clusterIP: ${VIP}
  selector: { app: hello }
  ports: [{ name: http, port: 80, targetPort: ${APP_PORT} }]
`,
  });
  const token = await control.addNode(node.name);
  // The test plays the node agent: it reports the load pod redirected and hands it to ztunnel.
  const answer = await control.reportRedirected(token, "bench", [pods.load]) as { accepted?: number };
  if (answer.accepted !== 1) throw new Error(`registration refused: ${JSON.stringify(answer)}`);
  // Access logs off (LOG_LEVEL=warn) in the ztunnel and the waypoint, as in bench/dataplane.ts; metrics stay on.
  const quiet = { LOG_LEVEL: "warn" };
  await using ztunnel = await ZtunnelProcess.start(node.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: token,
  }, quiet);
  await ztunnel.enroll(pods.load, "bench");
  await until200("ztunnel", `http://127.0.0.1:${ztunnel.ports.readiness}/healthz/ready`);
  const base = 20_000 + Math.floor(Math.random() * 40_000);
  await using waypoint = new SkiffProcess("waypoint", [
    "waypoint",
    "--name=waypoint",
    "--namespace=bench",
    `--control=${control.url}`,
    `--token-file=${token}`,
    `--admin-port=${base}`,
    `--metrics-port=${base + 1}`,
    `--readiness-port=${base + 2}`,
    `--netns=${pods.waypoint.netnsPath}`,
  ], quiet);
  await until200("waypoint", `http://127.0.0.1:${base + 2}/healthz/ready`);

  const dir = await Deno.makeTempDir({ prefix: "skiff-bench-haproxy-" });
  try {
    await using proxy = withHaproxy ? await haproxy(pods.haproxy, dir, pods.app.address) : undefined;

    const targets = [
      { name: "direct", from: pods.plain, url: `http://${pods.app.address}:${APP_PORT}/`, pids: [] as number[] },
      ...(proxy
        ? [{
          name: "haproxy",
          from: pods.plain,
          url: `http://${pods.haproxy.address}:${HAPROXY_PORT}/`,
          pids: [proxy.pid],
        }]
        : []),
      { name: "skiff waypoint", from: pods.load, url: `http://${VIP}/`, pids: [waypoint.pid, ztunnel.pid] },
    ];
    const idleRss = rssMiB(waypoint.pid);
    let peakRss = idleRss;
    const rows: Row[] = [];
    for (const t of targets) {
      await wrk(t.from, t.url, WARMUP_SECONDS); // warm-up, and a check that the path answers 2xx
      const before = t.pids.map((p) => cpuSeconds(p, ticks));
      const sampler = setInterval(() => peakRss = Math.max(peakRss, rssMiB(waypoint.pid)), 200);
      const started = performance.now();
      let result: WrkResult;
      try {
        result = await wrk(t.from, t.url, SECONDS);
      } finally {
        clearInterval(sampler);
      }
      const wall = (performance.now() - started) / 1000;
      const cpu = t.pids.map((p, i) => ((cpuSeconds(p, ticks) - before[i]) / wall * 100).toFixed(0));
      rows.push({
        name: t.name,
        result,
        cpu: cpu.length === 0 ? "-" : cpu.length === 1 ? `${cpu[0]}%` : `${cpu[0]}% + ${cpu[1]}%`,
      });
    }
    report(rows, withHaproxy, { idle: idleRss, peak: peakRss, after: rssMiB(waypoint.pid) });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function report(rows: Row[], withHaproxy: boolean, rss: { idle: number; peak: number; after: number }) {
  const pad = (s: string, n: number) => s.padStart(n);
  console.log(
    `HTTP/1.1 GET, 2-byte body, wrk -t1 -c${CONNECTIONS} -d${SECONDS}s --latency after a ${WARMUP_SECONDS} s ` +
      "warm-up, one node of network namespaces; backend: Deno.serve in a pod outside the mesh",
  );
  console.log(
    "direct: uncaptured pod → backend pod IP; " +
      (withHaproxy
        ? "haproxy: uncaptured pod → haproxy (mode http, nbthread 1, keep-alive, http-reuse always) → backend; "
        : "") +
      "skiff waypoint: captured pod → ztunnel (HBONE) → skiff waypoint → plain TCP → backend, via the Service VIP " +
      "(a waypoint is entered only over HBONE, so this row includes the client's ztunnel hop)",
  );
  console.log(
    "ztunnel and waypoint with LOG_LEVEL=warn (no access-log lines; metrics recorded); wrk, the backend and the " +
      `proxies share this machine's ${navigator.hardwareConcurrency} cores, nothing pinned`,
  );
  console.log(
    `${"".padEnd(16)}${pad("req/s", 10)}${pad("p50 (ms)", 10)}${pad("p99 (ms)", 10)}${pad("requests", 10)}${
      pad("errors", 8)
    }  proxy CPU (% of one core)`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(16)}${pad(r.result.rps.toFixed(0), 10)}${pad(r.result.p50Ms.toFixed(2), 10)}${
        pad(r.result.p99Ms.toFixed(2), 10)
      }${pad(String(r.result.requests), 10)}${pad(String(r.result.socketErrors), 8)}  ${
        r.name === "skiff waypoint" ? `${r.cpu} (waypoint + ztunnel)` : r.cpu
      }`,
    );
  }
  const get = (name: string) => rows.find((r) => r.name === name)?.result;
  const direct = get("direct")!;
  const wp = get("skiff waypoint")!;
  const hp = get("haproxy");
  console.log(
    `ratios of req/s: waypoint/direct ${(wp.rps / direct.rps).toFixed(2)}` +
      (hp ? `, haproxy/direct ${(hp.rps / direct.rps).toFixed(2)}` : ""),
  );
  console.log(
    `waypoint RSS (MiB): idle ${rss.idle.toFixed(0)}, peak ${rss.peak.toFixed(0)}, after the run ${
      rss.after.toFixed(0)
    }`,
  );
  if (hp) {
    const ratio = wp.rps / hp.rps;
    console.log(`target waypoint ≥ 0.5× haproxy req/s: ${ratio >= 0.5 ? "met" : "MISSED"} (${ratio.toFixed(2)}×)`);
  } else {
    console.log(
      "target waypoint ≥ 0.5× haproxy req/s: not measured, haproxy is not installed (install.sh installs it)",
    );
  }
  console.log(`target waypoint RSS idle ≤ 60 MiB: ${rss.idle <= 60 ? "met" : "MISSED"} (${rss.idle.toFixed(0)} MiB)`);
}

if (Deno.args[0] !== "--hello") await main();
