import assert from "node:assert/strict";
import { SpiffeId } from "../../mesh/identity.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";
import { accessLogFields } from "./access_log.ts";

Deno.test("accessLogFields() uses ztunnel's keys and leaves out what is not known", async (t) => {
  await t.step("an inbound HBONE connection", () => {
    const fields = accessLogFields({
      direction: "inbound",
      src: { ip: "10.0.2.2", port: 40000 },
      srcWorkload: decodeWorkload({ uid: "c", name: "client-1", namespace: "shop", addresses: ["10.0.2.2"] }),
      srcIdentity: SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client"),
      dst: { ip: "10.0.1.2", port: 8080 },
      hboneAddr: { ip: "10.0.1.2", port: 15008 },
      dstService: decodeService({
        name: "web",
        namespace: "shop",
        hostname: "web.shop.svc.cluster.local",
        ports: [{ port: 80, targetPort: 8080 }],
      }),
      dstWorkload: decodeWorkload({ uid: "w", name: "web-1", namespace: "shop", addresses: ["10.0.1.2"] }),
      bytesSent: 10,
      bytesRecv: 20,
      durationMs: 12.4,
    });
    assert.deepEqual(fields, {
      "src.addr": "10.0.2.2:40000",
      "src.workload": "client-1",
      "src.namespace": "shop",
      "src.identity": "spiffe://cluster.local/ns/shop/sa/client",
      "dst.addr": "10.0.1.2:8080",
      "dst.hbone_addr": "10.0.1.2:15008",
      "dst.service": "web.shop.svc.cluster.local",
      "dst.workload": "web-1",
      "dst.namespace": "shop",
      direction: "inbound",
      bytes_sent: 10,
      bytes_recv: 20,
      duration: "12ms",
    });
  });
  await t.step("a denied plaintext connection from outside the mesh, IPv6", () => {
    const fields = accessLogFields({
      direction: "inbound",
      src: { ip: "fd00::9", port: 5000 },
      dst: { ip: "fd00::1", port: 80 },
      bytesSent: 0,
      bytesRecv: 0,
      durationMs: 0,
      error: "DENY",
    });
    assert.deepEqual(Object.keys(fields), [
      "src.addr",
      "dst.addr",
      "direction",
      "bytes_sent",
      "bytes_recv",
      "duration",
      "error",
    ]);
    assert.equal(fields["src.addr"], "[fd00::9]:5000");
  });
});
