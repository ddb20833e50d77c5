import assert from "node:assert/strict";
import type { H2Stream } from "./stream.ts";
import { rawClientPair } from "../../tests/harness/h2peer.ts";
import { encodePing, type Frame, FrameType } from "./frame.ts";
import type { HeaderField } from "./fields.ts";

const CONNECT: HeaderField[] = [[":method", "CONNECT"], [":authority", "10.0.1.2:8080"]];
const isGoaway = (f: Frame) => f.type === FrameType.GOAWAY;
const isPing = (f: Frame) => f.type === FrameType.PING && !f.ack;

Deno.test("announceShutdown(): GOAWAY with the largest id and a PING; streams on their way are served", async () => {
  const served: number[] = [];
  await using pair = await rawClientPair({
    onStream: (s: H2Stream) => {
      served.push(s.id);
      s.respond([[":status", "200"]]);
    },
  });
  pair.peer.settings();
  pair.peer.headers(1, CONNECT);
  await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 1);

  let answered = false;
  const announced = pair.server.announceShutdown().then(() => (answered = true));
  const first = await pair.peer.waitFor(isGoaway);
  assert.equal(first?.type === FrameType.GOAWAY && first.lastStreamId, 0x7fffffff, "no stream is refused yet");
  const ping = await pair.peer.waitFor(isPing);
  assert.ok(ping?.type === FrameType.PING);

  // A stream the peer opened before it read the GOAWAY: still served (RFC 9113 §6.8).
  pair.peer.headers(3, CONNECT);
  await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 3);
  assert.deepEqual(served, [1, 3]);
  assert.equal(answered, false, "not done before the PING is answered");

  pair.peer.write(encodePing(ping.payload, true));
  await announced;
  const closing = pair.server.close();
  const last = await pair.peer.waitFor((f) => isGoaway(f) && f !== first);
  assert.equal(last?.type === FrameType.GOAWAY && last.lastStreamId, 3, "the final GOAWAY names the last stream");
  assert.equal(pair.peer.frames.filter((f) => f.type === FrameType.RST_STREAM).length, 0, "nothing was refused");
  pair.peer.close();
  await closing;
});

Deno.test("announceShutdown() settles when the connection closes without a PING answer", async () => {
  await using pair = await rawClientPair({});
  pair.peer.settings();
  const announced = pair.server.announceShutdown();
  await pair.peer.waitFor(isPing);
  await pair.peer.close();
  await announced;
  await pair.server.closed;
});
