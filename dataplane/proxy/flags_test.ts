import assert from "node:assert/strict";
import { type ResponseFlag, responseFlag } from "./flags.ts";

Deno.test("responseFlag() maps each failure's code to Istio's flag, anything else to CONNECT", async (t) => {
  const cases: [code: string | undefined, want: ResponseFlag][] = [
    ["TIMEOUT", "NETWORK_POLICY"],
    ["TLS", "TLS_FAILURE"],
    ["IDENTITY", "IDENTITY_ERROR"],
    ["STREAM", "H2_HANDSHAKE_FAILURE"],
    ["DENY", "DENY"],
    ["ECONNREFUSED", "CONNECT"],
    [undefined, "CONNECT"],
  ];
  for (const [code, want] of cases) {
    await t.step(`${code} → ${want}`, () => {
      const error = Object.assign(new Error("dial: failed"), code === undefined ? {} : { code });
      assert.equal(responseFlag(error), want);
    });
  }
  await t.step("not an Error → CONNECT", () => assert.equal(responseFlag(undefined), "CONNECT"));
});
