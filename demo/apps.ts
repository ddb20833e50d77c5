/**
 * The demo's sample apps, run inside pods by `skiff demo` (`skiff demo app http|tcp --name NAME --port PORT`): an
 * HTTP echo service that answers `NAME PATH` (two of them make the versions of the echo service), and a TCP echo
 * that answers `NAME:` and the bytes it got. They are demo parts, not mesh parts: they know nothing of Skiff.
 *
 * @module
 */

import net from "node:net";
import { UsageError } from "../mesh/config.ts";

/** Runs one app until SIGTERM; `argv` is what follows `skiff demo app`. */
export async function runApp(argv: string[]): Promise<number> {
  const [kind, ...rest] = argv;
  const flag = (name: string) => {
    const i = rest.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
    if (i < 0) return undefined;
    return rest[i].includes("=") ? rest[i].slice(rest[i].indexOf("=") + 1) : rest[i + 1];
  };
  const name = flag("name") ?? kind;
  const port = Number(flag("port"));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError("demo app: --port must be 1 to 65535");
  const stopped = new Promise<void>((resolve) => Deno.addSignalListener("SIGTERM", () => resolve()));
  if (kind === "http") {
    const server = Deno.serve({
      hostname: "0.0.0.0",
      port,
      onListen: () => console.log(`${name} listening on ${port}`),
    }, (req) => {
      const path = new URL(req.url).pathname;
      return new Response(`${name} ${path}\n`, { headers: { "x-served-by": name } });
    });
    await stopped;
    await server.shutdown();
    return 0;
  }
  if (kind === "tcp") {
    const server = net.createServer((socket) => {
      socket.on("error", () => {});
      socket.on("data", (chunk: Uint8Array) => socket.write(`${name}:${new TextDecoder().decode(chunk)}`));
    });
    server.listen(port, "0.0.0.0", () => console.log(`${name} listening on ${port}`));
    await stopped;
    server.close();
    return 0;
  }
  throw new UsageError(`demo app: expected http or tcp, got ${JSON.stringify(kind)}`);
}
