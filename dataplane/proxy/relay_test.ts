import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { relay } from "./relay.ts";

Deno.test("relay() given a side that is already gone closes the other and finishes", async (t) => {
  for (const gone of ["a", "b"] as const) {
    await t.step(`${gone} closed before the relay began`, async () => {
      // A client that reset its tunnel while the upstream was being dialled: its stream has emitted `close`
      // already, and the fresh upstream connection must not be left open waiting for it.
      const a = new PassThrough();
      const b = new PassThrough();
      const [dead, live] = gone === "a" ? [a, b] : [b, a];
      dead.destroy();
      await new Promise((resolve) => dead.once("close", resolve));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stuck = new Promise<"stuck">((resolve) => timer = setTimeout(() => resolve("stuck"), 1_000));
      const outcome = await Promise.race([relay(a, b).done.then(() => "done" as const), stuck]);
      clearTimeout(timer);
      live.destroy();
      assert.equal(outcome, "done", "the relay waited on the side that was still open");
    });
  }
});
