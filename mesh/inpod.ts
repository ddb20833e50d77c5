/**
 * What the node agent's in-pod rules (`cni/redirect_linux.ts`) and ztunnel's in-pod sockets
 * (`dataplane/ztunnel/inpod.ts`) must agree on, kept here so that neither role imports the other: the socket
 * mark the rules never capture (upstream's `0x539`), and running a command inside a pod's network namespace.
 *
 * @module
 */

/** The mark on every socket ztunnel opens in a pod; the rules never capture it. */
export const INPOD_MARK = 0x539;

/**
 * Runs a command inside the network namespace at `netnsPath` (through nsenter), or in this process's own
 * namespace when `netnsPath` is undefined; never throws for a failing command.
 */
export async function inNs(
  netnsPath: string | undefined,
  cmd: string[],
  stdin?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [program, ...args] = netnsPath === undefined ? cmd : ["nsenter", `--net=${netnsPath}`, "--", ...cmd];
  const child = new Deno.Command(program, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
