import assert from "node:assert/strict";
import { TcpFrames } from "./tcp_frames.ts";

const framed = (...messages: number[][]) =>
  Uint8Array.from(messages.flatMap((m) => [m.length >> 8, m.length & 0xff, ...m]));

Deno.test("TcpFrames splits a byte stream into messages however it is cut", async (t) => {
  const stream = framed([1, 2, 3], [], [9], Array.from({ length: 300 }, (_, i) => i & 0xff));
  const want = [[1, 2, 3], [], [9], Array.from({ length: 300 }, (_, i) => i & 0xff)];
  const cuts: { name: string; sizes: number }[] = [
    { name: "all in one chunk", sizes: stream.length },
    { name: "one octet per chunk (a length prefix split in two)", sizes: 1 },
    { name: "chunks of 7", sizes: 7 },
  ];
  for (const c of cuts) {
    await t.step(c.name, () => {
      const frames = new TcpFrames();
      const got: number[][] = [];
      for (let at = 0; at < stream.length; at += c.sizes) {
        frames.push(stream.subarray(at, at + c.sizes));
        for (let m = frames.next(); m; m = frames.next()) got.push([...m]);
      }
      assert.deepEqual(got, want);
      assert.equal(frames.buffered, 0);
    });
  }
  await t.step("a partial message waits, and is counted as buffered", () => {
    const frames = new TcpFrames();
    frames.push(Uint8Array.of(0xff, 0xff, 1, 2));
    assert.equal(frames.next(), undefined);
    assert.equal(frames.buffered, 4);
  });
  await t.step("a 65,535-octet message sent one octet at a time arrives whole", () => {
    const frames = new TcpFrames();
    const big = framed(Array.from({ length: 65_535 }, (_, i) => (i * 7) & 0xff));
    for (let i = 0; i < big.length - 1; i++) {
      frames.push(big.subarray(i, i + 1));
      assert.equal(frames.next(), undefined);
    }
    frames.push(big.subarray(big.length - 1));
    const m = frames.next();
    assert.equal(m?.length, 65_535);
    assert.equal(m![65_534], (65_534 * 7) & 0xff);
  });
});
