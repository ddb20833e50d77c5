import assert from "node:assert/strict";
import { join } from "node:path";
import type { AgentState } from "./agent.ts";
import { loadAgentState, saveAgentState } from "./state.ts";

const STATE: AgentState = {
  pods: [{
    containerId: "c1",
    uid: "u-1",
    namespace: "shop",
    name: "web-1",
    netns: "/var/run/netns/cni-1",
    ips: ["10.0.1.5"],
    serviceAccount: "web",
    state: "redirected",
    reason: "namespace label istio.io/dataplane-mode=ambient",
  }],
  view: { version: "v1", node: "node1", pods: [], ambientNamespaces: ["shop"] },
};

Deno.test("the agent's state survives a save and a load; none yet is empty", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-state-" });
  try {
    const path = join(dir, "cni-agent.json");
    assert.deepEqual(await loadAgentState(path), { state: { pods: [] } });
    await saveAgentState(path, STATE);
    assert.deepEqual((await loadAgentState(path)).state, STATE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad pod record is named and left out; the others are kept", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-state-" });
  try {
    const path = join(dir, "cni-agent.json");
    const bad = { ...STATE.pods[0], containerId: "c0", ips: ["x"] };
    await Deno.writeTextFile(path, JSON.stringify({ pods: [bad, STATE.pods[0]] }));
    const { state, problem } = await loadAgentState(path);
    assert.deepEqual(state, { pods: STATE.pods });
    assert.match(problem!, /records left out: pods\[0\]\.ips\[0\]: expected an IP address/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a state file that does not decode at all is kept aside; the agent starts empty", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-state-" });
  try {
    const path = join(dir, "cni-agent.json");
    await Deno.writeTextFile(path, "{ half a file");
    const { state, problem } = await loadAgentState(path);
    assert.deepEqual(state, { pods: [] });
    assert.match(problem!, /kept as .*cni-agent\.json\.bad/);
    await Deno.stat(`${path}.bad`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
