/**
 * Port blocks for the processes tests start in the host's namespace (a ztunnel's or waypoint's admin, metrics and
 * readiness ports, a control plane's API and monitoring ports). The suite runs test files in parallel, and a
 * random base over 20,000–60,000 for each process met another process's ports now and then: a test then read
 * another test's ztunnel metrics. Here a block is taken only when every port of it can be bound on 127.0.0.1 now,
 * and only below the kernel's ephemeral range (32,768 up), where outgoing connections take their local ports.
 * What remains is the moment between this check and the process binding the ports itself.
 *
 * @module
 */

const LOW = 20_000;
const HIGH = 32_000;

/** A base port whose `count` consecutive ports are free on 127.0.0.1 now. */
export function freePortBase(count = 3): number {
  for (let attempt = 0; attempt < 500; attempt++) {
    const base = LOW + Math.floor(Math.random() * (HIGH - LOW - count));
    const held: Deno.Listener[] = [];
    try {
      for (let i = 0; i < count; i++) held.push(Deno.listen({ hostname: "127.0.0.1", port: base + i }));
      return base;
    } catch {
      // One of them is taken: another block.
    } finally {
      for (const l of held) l.close();
    }
  }
  throw new Error(`no block of ${count} free ports between ${LOW} and ${HIGH} after 500 tries`);
}
