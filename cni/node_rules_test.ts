import assert from "node:assert/strict";
import { probeRulesInput } from "./node_rules.ts";

Deno.test("probe rules: one SNAT rule per IPv4 pod address, sorted, the chain rewritten whole", () => {
  assert.equal(
    probeRulesInput(["10.0.1.9", "10.0.1.5", "fd00::5", "10.0.1.5"]),
    [
      "*nat",
      ":SKIFF_POSTRT - [0:0]",
      "-A SKIFF_POSTRT -d 10.0.1.5/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
      "-A SKIFF_POSTRT -d 10.0.1.9/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
      "COMMIT",
      "",
    ].join("\n"),
  );
  assert.equal(probeRulesInput([]), "*nat\n:SKIFF_POSTRT - [0:0]\nCOMMIT\n");
});
