import assert from "node:assert/strict";
import * as jose from "jose";
import { ControlStore } from "./store.ts";
import { issueNodeToken, TokenVerifier } from "./tokens.ts";

Deno.test("node tokens: accepted while current; expired, revoked, replaced and foreign tokens are refused with why", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-tokens-" });
  const store = ControlStore.open(dir);
  try {
    const verifier = new TokenVerifier(store);
    const token = await issueNodeToken(store, "node-a");
    await t.step("a current token names its node", async () => {
      assert.deepEqual(await verifier.check(token), { node: "node-a" });
    });
    await t.step("no token, garbage, and a token signed by another control plane", async () => {
      assert.match((await verifier.check(undefined) as { refused: string }).refused, /no bearer token/);
      assert.match((await verifier.check("abc") as { refused: string }).refused, /not valid for this control plane/);
      const { privateKey } = await jose.generateKeyPair("ES256");
      const foreign = await new jose.SignJWT({}).setProtectedHeader({ alg: "ES256" }).setIssuer("skiff-control")
        .setAudience("skiff-control").setSubject("node-a").setJti("x").setExpirationTime("1h").sign(privateKey);
      assert.match((await verifier.check(foreign) as { refused: string }).refused, /not valid for this control plane/);
    });
    await t.step("an expired token says so", async () => {
      const old = await issueNodeToken(store, "node-b", -1000);
      assert.deepEqual(await verifier.check(old), {
        refused: "the node token has expired; issue a new one with skiff control node add",
        node: "node-b",
      });
    });
    await t.step("node add again replaces the token; node remove revokes it", async () => {
      const second = await issueNodeToken(store, "node-a");
      assert.deepEqual(await verifier.check(token), {
        refused: "the node token of node-a was revoked",
        node: "node-a",
      });
      assert.deepEqual(await verifier.check(second), { node: "node-a" });
      store.removeNode("node-a");
      assert.deepEqual(await verifier.check(second), {
        refused: "the node token of node-a was revoked",
        node: "node-a",
      });
    });
    await t.step("tokens issued at once from two processes' stores all verify", async () => {
      const dir2 = await Deno.makeTempDir({ prefix: "skiff-tokens-race-" });
      const a = ControlStore.open(dir2);
      const b = ControlStore.open(dir2);
      try {
        const [ta, tb] = await Promise.all([issueNodeToken(a, "node-x"), issueNodeToken(b, "node-y")]);
        const v = new TokenVerifier(a);
        assert.deepEqual([await v.check(ta), await v.check(tb)], [{ node: "node-x" }, { node: "node-y" }]);
      } finally {
        a.close();
        b.close();
        await Deno.remove(dir2, { recursive: true });
      }
    });
    await t.step("the signing key survives a reopen of the store", async () => {
      const third = await issueNodeToken(store, "node-c");
      store.close();
      const reopened = ControlStore.open(dir);
      try {
        assert.deepEqual(await new TokenVerifier(reopened).check(third), { node: "node-c" });
      } finally {
        reopened.close();
      }
    });
  } finally {
    try {
      store.close();
    } catch { /* closed in the last step */ }
    await Deno.remove(dir, { recursive: true });
  }
});
