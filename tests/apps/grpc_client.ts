/**
 * A test gRPC client on Skiff's own HTTP/2, cleartext with prior knowledge: one unary call, one bidirectional
 * streaming call of three messages (each sent after the previous answer arrived, so the stream is really
 * interleaved), and one failing call; prints the results as one JSON line. Run inside a pod's namespace:
 *
 *     deno run --allow-net tests/apps/grpc_client.ts HOST PORT
 */

import net from "node:net";
import { H2Connection } from "../../dataplane/h2/connection.ts";
import type { H2Stream } from "../../dataplane/h2/stream.ts";
import { grpcFrame, GrpcReader } from "./grpc_frames.ts";

const [host, port] = [Deno.args[0], Number(Deno.args[1] ?? 9090)];
const enc = new TextEncoder();
const dec = new TextDecoder();

const socket = await new Promise<net.Socket>((resolve, reject) => {
  const s = net.connect({ host, port }, () => resolve(s));
  s.once("error", reject);
});
const conn = new H2Connection(socket, { role: "client" });
const call = (method: string) =>
  conn.request([
    [":method", "POST"],
    [":scheme", "http"],
    [":authority", `${host}:${port}`],
    [":path", `/echo.Echo/${method}`],
    ["content-type", "application/grpc"],
    ["te", "trailers"],
  ]);
const status = (s: H2Stream, head: [string, string][]) => (s.trailers ?? head).find(([n]) => n === "grpc-status")?.[1];
const ended = (s: H2Stream) => new Promise((r) => s.readableEnded ? r(undefined) : s.once("end", r));

const unary = call("Unary");
unary.end(grpcFrame(enc.encode("hello")));
const unaryHead = await unary.response;
const unaryReader = new GrpcReader();
const unaryMessages: string[] = [];
unary.on("data", (c: Uint8Array) => unaryReader.push(c).forEach((m) => unaryMessages.push(dec.decode(m))));
await ended(unary);

const stream = call("Stream");
const streamReader = new GrpcReader();
const streamMessages: string[] = [];
let wake = () => {};
stream.on("data", (c: Uint8Array) => {
  streamReader.push(c).forEach((m) => streamMessages.push(dec.decode(m)));
  wake();
});
for (const word of ["one", "two", "three"]) {
  const before = streamMessages.length;
  stream.write(grpcFrame(enc.encode(word)));
  while (streamMessages.length === before) await new Promise<void>((r) => wake = r);
}
stream.end();
const streamHead = await stream.response;
await ended(stream);

const fail = call("Fail");
fail.end(grpcFrame(enc.encode("x")));
const failHead = await fail.response;
fail.resume();
await ended(fail);

console.log(JSON.stringify({
  unary: { status: status(unary, unaryHead), messages: unaryMessages },
  stream: { status: status(stream, streamHead), messages: streamMessages },
  fail: {
    status: status(fail, failHead),
    message: (fail.trailers ?? failHead).find(([n]) => n === "grpc-message")?.[1],
  },
}));
await conn.close();
