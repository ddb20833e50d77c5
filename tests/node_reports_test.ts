/**
 * A node's reports stay on that node: a real `skiff control` process, two nodes with their own tokens, each
 * playing its node agent over real HTTPS (`PUT /v1/registrations`), and a config-stream client watching what the
 * proxies are told. Node B tries to overwrite node A's report of A's pod, to report a pod declared on A, and to
 * report addresses that are not its to report (inside A's pod range, or held by another workload or a service);
 * each is refused with a 403 that says why and a log line naming node B, and A's workloads stay as A reported
 * them. Only the offending pods are refused: the report's other pods are taken, and the node agent's reporter
 * logs each refused pod by name. Legitimate reports, and a pod moving from A to B, keep working.
 */

import assert from "node:assert/strict";
import pino from "pino";
import { Reporter } from "../cni/reporter.ts";
import { ClientConfig, ControlConnection, ControlError, runConfigClient } from "../mesh/control_client.ts";
import { logger } from "../mesh/log.ts";
import { REGISTRATIONS_PATH } from "../mesh/protocol/config_stream.ts";
import type { Workload } from "../mesh/workload.ts";
import { ControlProcess } from "./harness/control.ts";

const pod = (name: string, node: string, status = "{ phase: Running }") =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: ${name} } }
spec: { nodeName: ${node}, serviceAccountName: ${name} }
status: ${status}
---
`;

/** node-a's pod range is known (a Kubernetes Node object); node-b's is not. */
const shop = (webNode: string) =>
  `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Node
metadata: { name: node-a }
spec: { podCIDR: 10.31.1.0/24, podCIDRs: [10.31.1.0/24] }
---
${pod("web-a", webNode)}${pod("new-a", "node-a")}${pod("legacy-a", "node-a", "{ phase: Running, podIP: 10.40.0.9 }")}${
    pod("api-b", "node-b")
  }apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: shop }
spec: { address: 10.40.0.20, serviceAccount: vm }
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: shop }
spec: { clusterIP: 10.96.0.10, selector: { app: db }, ports: [{ port: 5432 }] }
`;

interface ReportedPod {
  name: string;
  ips: string[];
  redirected: boolean;
}

Deno.test({
  name: "control plane: a node's reports change only pods declared on that node, with addresses that are its own",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    await using control = await ControlProcess.start({ "shop.yaml": shop("node-a") });
    const tokenA = await control.addNode("node-a");
    const tokenB = await control.addNode("node-b");
    const config = new ClientConfig(logger("test"));
    const controller = new AbortController();
    const run = runConfigClient({
      connection: new ControlConnection({ url: control.url, tokenFile: tokenA, caFile: caOf(tokenA) }),
      config,
      log: logger("test"),
      signal: controller.signal,
      onChange: () => {},
    });

    /** PUTs a report as the agent of the token's node; the status and the answer's body or error. */
    const report = async (
      token: string,
      pods: ReportedPod[],
    ): Promise<{ status: number; text: string; body?: unknown }> => {
      const agent = new ControlConnection({ url: control.url, tokenFile: token, caFile: caOf(token) });
      try {
        const r = await agent.request("PUT", REGISTRATIONS_PATH, {
          pods: pods.map((p) => ({ namespace: "shop", ...p })),
        });
        return { status: r.status, text: await r.text() };
      } catch (error) {
        if (!(error instanceof ControlError) || error.status === undefined) throw error;
        return { status: error.status, text: error.message, body: error.body };
      } finally {
        agent.close();
      }
    };
    const workload = (name: string): Workload | undefined =>
      config.state.workloads.byUid(`Kubernetes//Pod/shop/${name}`);
    const shown = (name: string) => {
      const w = workload(name);
      return w ? `${w.node} ${w.tunnelProtocol} ${w.addresses.join(",")}` : "absent";
    };
    const until = async (what: string, ok: () => boolean) => {
      for (let i = 0; i < 400 && !ok(); i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(ok(), `still not ${what}`);
    };
    // Settles the control plane: a marker Service changed through the manifests arrives after every build the
    // requests before it caused, so whatever they changed has reached the client too.
    let marker = 0;
    const settle = async () => {
      const vip = `10.96.200.${++marker}`;
      await control.writeManifest(
        "marker.yaml",
        `apiVersion: v1
kind: Service
metadata: { name: marker, namespace: shop }
spec: { clusterIP: ${vip}, ports: [{ port: 80 }] }
`,
      );
      await until(`showing marker ${vip}`, () => config.state.services.byVip("", vip) !== undefined);
    };
    /** B's own pod, as B's agent reports it in every report. */
    const apiB = (ips = ["10.31.2.5"]): ReportedPod => ({ name: "api-b", ips, redirected: true });
    const vm = () => config.state.workloads.byUid("Kubernetes/networking.istio.io/WorkloadEntry/shop/vm-1");
    const expected = [
      "node-a HBONE 10.31.1.5",
      "node-a HBONE 10.40.0.9",
      "node-b HBONE 10.31.2.5",
      "vm-1 10.40.0.20",
    ];
    const now = () => [
      shown("web-a"),
      shown("legacy-a"),
      shown("api-b"),
      `vm-1 ${vm()?.addresses.join(",") ?? "absent"}`,
    ];
    /** Each node reports its own pods, as their agents do; each attack starts from there. */
    const legit = async () => {
      const a = await report(tokenA, [
        { name: "web-a", ips: ["10.31.1.5"], redirected: true },
        { name: "legacy-a", ips: ["10.40.0.9"], redirected: true },
      ]);
      assert.equal(a.status, 200, a.text);
      const b = await report(tokenB, [apiB()]);
      assert.equal(b.status, 200, b.text);
      await until("showing both nodes' own reports", () => JSON.stringify(now()) === JSON.stringify(expected));
    };
    /** Asserts a refusal of B's report: a 403 whose answer says why, and a log line naming node-b. */
    const refusedForB = async (pods: ReportedPod[], why: RegExp) => {
      await legit();
      const from = control.process.lines.length;
      const answer = await report(tokenB, pods);
      await settle();
      assert.deepEqual(
        now(),
        expected,
        `A's workloads stay as A reported them, and B's as it last reported (answer: ${answer.status} ${answer.text})`,
      );
      assert.equal(answer.status, 403, `refused, got ${answer.status} ${answer.text}`);
      assert.match(answer.text, why);
      const line = await control.process.waitForLog((l) => l.msg === "registrations refused", 5_000, from);
      assert.equal(line.node, "node-b");
      assert.match(String(line.error), why);
    };

    try {
      await t.step(
        "each node reports its own pods; they are reached over HBONE at the reported addresses",
        async () => {
          await legit();
          await settle();
          assert.deepEqual(now(), expected);
        },
      );

      await t.step("(a) node-b cannot overwrite node-a's report of web-a (as plaintext, or removed)", async () => {
        await refusedForB(
          [apiB(), { name: "web-a", ips: ["10.31.1.5"], redirected: false }],
          /pod shop\/web-a is declared on node node-a, not node-b/,
        );
        await refusedForB([apiB(), { name: "web-a", ips: [], redirected: false }], /declared on node node-a/);
      });

      await t.step("(b) node-b cannot report a pod declared on node-a that node-a has not reported", async () => {
        await refusedForB(
          [apiB(), { name: "new-a", ips: ["10.31.2.6"], redirected: true }],
          /pod shop\/new-a is declared on node node-a, not node-b/,
        );
        await settle();
        assert.equal(shown("new-a"), "absent", "new-a has no address until node-a reports one");
      });

      await t.step("(c) node-b cannot report an address inside node-a's pod range", async () => {
        await refusedForB(
          [apiB(["10.31.1.77"])],
          /10\.31\.1\.77 lies in the pod range 10\.31\.1\.0\/24 of node node-a/,
        );
      });

      await t.step("(c) node-b cannot take an address another workload or a service holds", async (t) => {
        // api-b sorts before each holder, so without the check it would win each address in the build.
        const cases: [string, string, RegExp][] = [
          [
            "node-a's reported pod web-a",
            "10.31.1.5",
            /10\.31\.1\.5 lies in the pod range 10\.31\.1\.0\/24 of node node-a/,
          ],
          ["node-a's declared pod legacy-a", "10.40.0.9", /10\.40\.0\.9 is held by Pod shop\/legacy-a/],
          ["the WorkloadEntry vm-1", "10.40.0.20", /10\.40\.0\.20 is held by WorkloadEntry shop\/vm-1/],
          ["the service db's VIP", "10.96.0.10", /10\.96\.0\.10 is the address of service shop\/db/],
          ["an address of the service range", "10.96.7.1", /10\.96\.7\.1 lies in the service range 10\.96\.0\.0\/16/],
        ];
        for (const [what, ip, why] of cases) {
          await t.step(`${what}: ${ip}`, () => refusedForB([apiB([ip])], why));
        }
      });

      await t.step("(d) node-b cannot spell an address another way, nor report one no pod has", async (t) => {
        // A dual-stack socket reads ::ffff:10.31.1.77 as 10.31.1.77, yet no IPv4 range or index matches it.
        const cases: [string, RegExp][] = [
          ["::ffff:10.31.1.77", /::ffff:a1f:14d is an IPv4-mapped IPv6 address/],
          ["0:0:0:0:0:ffff:10.31.1.5", /::ffff:a1f:105 is an IPv4-mapped IPv6 address/],
          ["::10.31.1.77", /::a1f:14d is an IPv4-compatible IPv6 address/],
          ["127.0.0.1", /127\.0\.0\.1 is a loopback address/],
          ["::1", /::1 is an IPv4-compatible IPv6 address, the unspecified or the loopback address/],
          ["0.0.0.0", /0\.0\.0\.0 is in 0\.0\.0\.0\/8/],
          ["169.254.169.254", /169\.254\.169\.254 is a link-local address/],
          ["224.0.0.5", /224\.0\.0\.5 is a multicast address/],
          ["255.255.255.255", /255\.255\.255\.255 is a reserved or the broadcast address/],
        ];
        for (const [ip, why] of cases) await t.step(ip, () => refusedForB([apiB([ip])], why));
        // Spellings that are no address at all never reach the check: the report does not decode.
        for (const ip of ["010.31.1.77", " 10.31.1.77", "10.31.1.77\n", "0x0a.31.1.77", "10.31.1.077"]) {
          const answer = await report(tokenB, [apiB([ip])]);
          assert.equal(answer.status, 400, `${JSON.stringify(ip)}: ${answer.text}`);
          assert.match(answer.text, /pods\[0\]\.ips\[0\]: expected an IPv4 or IPv6 address/);
        }
      });

      await t.step("one refused pod holds back none of the node's other pods, and changes nothing", async () => {
        await legit();
        // node-b moves api-b to a new address and, in the same report, speaks for node-a's web-a and new-a.
        const answer = await report(tokenB, [
          { name: "web-a", ips: ["10.31.1.5"], redirected: false },
          apiB(["10.31.2.6"]),
          { name: "new-a", ips: [], redirected: true },
        ]);
        assert.equal(answer.status, 403, answer.text);
        assert.deepEqual(answer.body, {
          error: String((answer.body as { error: string }).error),
          accepted: 1,
          refused: [
            {
              namespace: "shop",
              name: "web-a",
              problems: [
                "pod shop/web-a is declared on node node-a, not node-b",
                "pod shop/web-a: address 10.31.1.5 lies in the pod range 10.31.1.0/24 of node node-a",
              ],
            },
            { namespace: "shop", name: "new-a", problems: ["pod shop/new-a is declared on node node-a, not node-b"] },
          ],
        });
        await until("api-b at its new address", () => shown("api-b") === "node-b HBONE 10.31.2.6");
        await settle();
        assert.deepEqual(now(), [
          "node-a HBONE 10.31.1.5",
          "node-a HBONE 10.40.0.9",
          "node-b HBONE 10.31.2.6",
          "vm-1 10.40.0.20",
        ]);
        assert.equal(shown("new-a"), "absent");
        // A pod refused for its address stays where node-b last reported it, however the rest of the report goes.
        const moved = await report(tokenB, [apiB(["10.31.1.99"])]);
        assert.equal(moved.status, 403, moved.text);
        await settle();
        assert.equal(shown("api-b"), "node-b HBONE 10.31.2.6");
      });

      await t.step("node-b's agent logs each refused pod by name, and retries", async () => {
        await legit();
        const lines: Record<string, unknown>[] = [];
        const log = pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s)) });
        const agent = new ControlConnection({ url: control.url, tokenFile: tokenB, caFile: caOf(tokenB) });
        const stop = new AbortController();
        const reporter = new Reporter(agent, log, stop.signal);
        try {
          reporter.report([
            { namespace: "shop", ...apiB(["10.31.2.7"]), netns: "/run/netns/b1" },
            { namespace: "shop", name: "web-a", ips: [], redirected: false, netns: "/run/netns/b2" },
          ]);
          await until("api-b updated by the agent", () => shown("api-b") === "node-b HBONE 10.31.2.7");
          const refused = () => lines.filter((l) => l.msg === "pod refused by the control plane");
          await until("the refusal logged twice (a retry)", () => refused().length >= 2);
          assert.deepEqual(refused()[0].pod, "shop/web-a");
          assert.deepEqual(refused()[0].problems, ["pod shop/web-a is declared on node node-a, not node-b"]);
          assert.ok(lines.some((l) => l.msg === "pods reported, some refused" && l.accepted === 1 && l.refused === 1));
          assert.equal(shown("web-a"), "node-a HBONE 10.31.1.5");
        } finally {
          stop.abort();
          await reporter.idle();
          agent.close();
        }
      });

      await t.step("node-a's own addresses must lie in its pod range", async () => {
        const answer = await report(tokenA, [{ name: "web-a", ips: ["10.31.2.99"], redirected: true }]);
        assert.equal(answer.status, 403);
        assert.match(answer.text, /10\.31\.2\.99 is not in the pod range of node node-a \(10\.31\.1\.0\/24\)/);
        const line = await control.process.waitForLog((l) => l.msg === "registrations refused" && l.node === "node-a");
        assert.match(String(line.error), /not in the pod range of node node-a/);
      });

      await t.step("a pod moving from node-a to node-b: deleted on A, recreated on B, keeps working", async () => {
        // node-a's agent sees the pod deleted and stops reporting it; the pod is declared again on node-b.
        assert.equal(
          (await report(tokenA, [{ name: "legacy-a", ips: ["10.40.0.9"], redirected: true }])).status,
          200,
        );
        await control.writeManifest("shop.yaml", shop("node-b"));
        await settle(); // node-b's agent reports the pod once its view of node-b (this build) lists it
        assert.equal(shown("web-a"), "absent", "no address until node-b reports one");
        // The build that moved the pod may not have been checked against yet (a manifest read half-written keeps its
        // last good version for a moment): node-b's agent retries a refused report, and so does this, for a while.
        let moved = await report(tokenB, [apiB(), { name: "web-a", ips: ["10.31.2.9"], redirected: true }]);
        for (let i = 0; moved.status === 403 && i < 50; i++) {
          await new Promise((r) => setTimeout(r, 200));
          moved = await report(tokenB, [apiB(), { name: "web-a", ips: ["10.31.2.9"], redirected: true }]);
        }
        assert.equal(moved.status, 200, moved.text);
        await until("web-a on node-b", () => shown("web-a") === "node-b HBONE 10.31.2.9");
        // node-a's agent may reuse the address the pod had there; a stale report of the pod from A is refused.
        assert.equal(
          (await report(tokenA, [
            { name: "legacy-a", ips: ["10.40.0.9"], redirected: true },
            { name: "new-a", ips: ["10.31.1.5"], redirected: true },
          ])).status,
          200,
        );
        await until("new-a at web-a's old address", () => shown("new-a") === "node-a HBONE 10.31.1.5");
        // The agent's list still has the pod (its DEL not seen yet): that pod is refused, the others stay taken.
        const stale = await report(tokenA, [
          { name: "legacy-a", ips: ["10.40.0.9"], redirected: true },
          { name: "new-a", ips: ["10.31.1.5"], redirected: true },
          { name: "web-a", ips: ["10.31.1.6"], redirected: true },
        ]);
        assert.equal(stale.status, 403);
        assert.match(stale.text, /pod shop\/web-a is declared on node node-b, not node-a/);
        await settle();
        assert.equal(shown("web-a"), "node-b HBONE 10.31.2.9");
        assert.equal(shown("new-a"), "node-a HBONE 10.31.1.5");
      });

      await t.step(
        "a node removed (skiff control node remove) reports no more, and its pods leave the mesh",
        async () => {
          await until("api-b as node-b last reported it", () => shown("api-b") === "node-b HBONE 10.31.2.5");
          await control.removeNode("node-b");
          const answer = await report(tokenB, [apiB()]);
          assert.equal(answer.status, 401, answer.text);
          // Nothing else changes meanwhile: the control plane itself must notice the node's reports are gone.
          await until("api-b gone with its node", () => shown("api-b") === "absent");
          assert.equal(shown("new-a"), "node-a HBONE 10.31.1.5");
        },
      );
    } finally {
      controller.abort();
      await run;
    }
  },
});

const caOf = (token: string) => token.replace(/token$/, "root-cert.pem");
