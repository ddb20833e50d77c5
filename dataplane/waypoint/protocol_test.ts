import assert from "node:assert/strict";
import { declaredHttpVersion, type HttpVersion, upstreamHttpVersion } from "./protocol.ts";

Deno.test("declaredHttpVersion() reads appProtocol as Istio does", async (t) => {
  const cases: [appProtocol: string | undefined, want: HttpVersion | undefined][] = [
    ["http", "http1"],
    ["HTTP", "http1"],
    ["http2", "http2"],
    ["grpc", "http2"],
    ["grpc-web", "http2"],
    ["kubernetes.io/h2c", "http2"],
    ["tcp", undefined],
    ["https", undefined],
    ["httpx", undefined],
    [undefined, undefined],
  ];
  for (const [app, want] of cases) {
    await t.step(`appProtocol ${app} → ${want}`, () => assert.equal(declaredHttpVersion(app), want));
  }
});

Deno.test("upstreamHttpVersion() keeps the client's version when the port declares none", async (t) => {
  const cases: [string | undefined, HttpVersion, HttpVersion][] = [
    [undefined, "http1", "http1"],
    [undefined, "http2", "http2"],
    ["tcp", "http2", "http2"],
    ["http", "http2", "http1"],
    ["grpc", "http1", "http2"],
    ["http2", "http2", "http2"],
  ];
  for (const [app, downstream, want] of cases) {
    await t.step(`${app} from ${downstream} → ${want}`, () => assert.equal(upstreamHttpVersion(app, downstream), want));
  }
});
