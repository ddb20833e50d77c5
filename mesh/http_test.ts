import assert from "node:assert/strict";
import { readBody } from "./http.ts";

Deno.test("readBody() reads up to its limit and refuses more, declared or not", async () => {
  const post = (body: BodyInit) => new Request("http://x/", { method: "POST", body });
  assert.equal(await readBody(post("hello"), 5), "hello");
  await assert.rejects(readBody(post("hello!"), 5), /request: is larger than 5 bytes/);
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new Uint8Array(4));
      c.enqueue(new Uint8Array(4));
      c.close();
    },
  });
  await assert.rejects(readBody(post(stream), 6), /is larger than 6 bytes/);
});
