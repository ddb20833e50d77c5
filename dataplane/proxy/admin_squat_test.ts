/**
 * A port squatter: any local user may bind 15000, 15020 or 15021 before ztunnel does. ztunnel waits for a port
 * held by the ztunnel it replaces, but not for one held by another user: it would otherwise run with a stranger
 * answering its readiness probe.
 */
import assert from "node:assert/strict";
import { logger } from "../../mesh/log.ts";
import { TcpMetrics } from "../../mesh/metrics.ts";
import { MeshState } from "../../mesh/store.ts";
import { listenerUids, serveAdmin } from "./admin.ts";

Deno.test("listenerUids() reads the owners of a port's listening sockets from /proc/net/tcp and tcp6", async (t) => {
  const tcp = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 00000000:3AAD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1135 1 0 100 0 0 10 0",
    "   1: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1136 1 0 100 0 0 10 0",
    "   2: 0100007F:3AAD 0100007F:A763 01 00000000:00000000 00:00000000 00000000    33        0 0 3 0",
  ].join("\n");
  const tcp6 = [
    "  sl  local_address                         remote_address                        st tx_queue rx_queue " +
    "tr tm->when retrnsmt   uid  timeout inode",
    "   0: 00000000000000000000000000000000:3AAC 00000000000000000000000000000000:0000 0A 00000000:00000000 " +
    "00:00000000 00000000    65534        0 1 1 0",
  ].join("\n");
  const cases = [
    {
      name: "readiness 15021 held by uid 1000 (an established connection's owner is no listener)",
      port: 15021,
      want: [1000],
    },
    { name: "admin 15000 held by root", port: 15000, want: [0] },
    { name: "metrics 15020 held over IPv6", port: 15020, want: [65534] },
    { name: "a free port", port: 15999, want: [] },
  ];
  for (const c of cases) await t.step(c.name, () => assert.deepEqual(listenerUids([tcp, tcp6], c.port), c.want));
});

Deno.test({
  name: "serveAdmin() refuses to wait for a port another user listens on",
  ignore: Deno.uid() !== 0,
  fn: async () => {
    const squatter = new Deno.Command("setpriv", {
      args: [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3", // the system's: a user's pyenv shim is not readable by nobody
        "-c",
        [
          "import socket, time",
          "s = socket.socket()",
          "s.bind(('0.0.0.0', 0))",
          "s.listen()",
          "print(s.getsockname()[1], flush=True)",
          "time.sleep(60)",
        ].join("\n"),
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = squatter.stdout.getReader();
    const signal = new AbortController();
    try {
      const { value } = await reader.read();
      const port = Number(new TextDecoder().decode(value).trim());
      assert.ok(port > 0);
      const src = {
        state: () => new MeshState(),
        certificates: () => [],
        metrics: new TcpMetrics(),
        ready: () => false,
        config: {},
        log: logger("ztunnel-admin-squat"),
      };
      let servers: ReturnType<typeof serveAdmin> | undefined;
      try {
        servers = serveAdmin(src, { adminPort: port, metricsPort: 0, readinessPort: 0 }, signal.signal);
      } catch (error) {
        assert.match((error as Error).message, /uid 65534/);
      }
      if (servers) {
        signal.abort();
        await servers.finished;
        assert.fail(`ztunnel started with uid 65534 holding its admin port ${port}`);
      }
    } finally {
      signal.abort();
      reader.releaseLock();
      await squatter.stdout.cancel();
      squatter.kill("SIGKILL");
      await squatter.status;
    }
  },
});
