import assert from "node:assert/strict";
import { declaredAppProtocol } from "./services.ts";

Deno.test("declaredAppProtocol() reads appProtocol, else the port name's prefix, as istiod does", async (t) => {
  const cases: [name: string, appProtocol: string | undefined, want: string | undefined][] = [
    ["", undefined, undefined],
    ["web", undefined, undefined],
    ["http", undefined, "http"],
    ["http-web", undefined, "http"],
    ["HTTP-web", undefined, "http"],
    ["http2", undefined, "http2"],
    ["grpc", undefined, "grpc"],
    ["grpc-api", undefined, "grpc"],
    ["httpx", undefined, undefined],
    ["tcp", undefined, undefined], // the workload API carries no TCP: unknown, sniffed
    ["https", undefined, undefined],
    ["grpc", "http", "http"], // appProtocol wins
    ["web", "kubernetes.io/h2c", "kubernetes.io/h2c"],
  ];
  for (const [name, appProtocol, want] of cases) {
    await t.step(`name ${JSON.stringify(name)}, appProtocol ${appProtocol} → ${want}`, () => {
      assert.equal(declaredAppProtocol({ name, appProtocol }), want);
    });
  }
});
