/**
 * A test gRPC backend on Skiff's own HTTP/2 (no gRPC library runs on Deno here: @grpc/grpc-js sits on
 * node:http2), cleartext with prior knowledge. Methods of service `echo.Echo`, messages being raw bytes in
 * gRPC's length-prefixed framing: `Unary` answers `NAME:` + the message; `Stream` answers each message of the
 * request stream as it comes; `Fail` answers status 5 (NOT_FOUND). Run inside a pod's namespace:
 *
 *     deno run --allow-net tests/apps/grpc_echo.ts NAME PORT
 */

import net from "node:net";
import { H2Connection } from "../../dataplane/h2/connection.ts";
import type { H2Stream } from "../../dataplane/h2/stream.ts";
import { grpcFrame, GrpcReader } from "./grpc_frames.ts";

const [name, port] = [Deno.args[0] ?? "grpc", Number(Deno.args[1] ?? 9090)];
const enc = new TextEncoder();
const dec = new TextDecoder();

function serve(stream: H2Stream) {
  const path = stream.requestHeaders.find(([n]) => n === ":path")?.[1] ?? "";
  const reader = new GrpcReader();
  const ok = () => stream.respond([[":status", "200"], ["content-type", "application/grpc"]]);
  if (path === "/echo.Echo/Fail") {
    stream.respond([[":status", "200"], ["content-type", "application/grpc"], ["grpc-status", "5"], [
      "grpc-message",
      "nothing here",
    ]], { endStream: true });
    stream.resume();
    return;
  }
  if (path === "/echo.Echo/Stream") ok();
  const messages: string[] = [];
  stream.on("data", (chunk: Uint8Array) => {
    for (const m of reader.push(chunk)) {
      if (path === "/echo.Echo/Stream") stream.write(grpcFrame(enc.encode(`${name}:${dec.decode(m)}`)));
      else messages.push(dec.decode(m));
    }
  });
  stream.on("end", () => {
    if (path === "/echo.Echo/Unary") {
      ok();
      stream.write(grpcFrame(enc.encode(`${name}:${messages.join("")}`)));
      stream.endWithTrailers([["grpc-status", "0"], ["x-served-by", name]]);
    } else if (path === "/echo.Echo/Stream") {
      stream.endWithTrailers([["grpc-status", "0"]]);
    } else {
      stream.respond([[":status", "200"], ["content-type", "application/grpc"], ["grpc-status", "12"]], {
        endStream: true,
      });
    }
  });
}

const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  socket.on("error", () => {});
  new H2Connection(socket, { role: "server", onStream: serve });
});
server.listen({ host: "0.0.0.0", port }, () => console.log(`listening ${name} ${port}`));
