import { decodeWorkload } from "../mesh/workload.ts";
import { MeshState } from "../mesh/store.ts";

const N = 10_000;
const docs = Array.from({ length: N }, (_, i) => ({
  uid: `Kubernetes//Pod/ns${i % 50}/pod-${i}`,
  name: `pod-${i}`,
  namespace: `ns${i % 50}`,
  addresses: [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`],
  node: `node${i % 20}`,
  serviceAccount: `sa${i % 100}`,
  tunnelProtocol: "HBONE",
  services: { [`ns${i % 50}/svc${i % 200}.ns${i % 50}.svc.cluster.local`]: [{ servicePort: 80, targetPort: 8080 }] },
}));
const workloads = docs.map((d) => decodeWorkload(d));
const state = new MeshState();
for (const w of workloads) state.workloads.upsert(w);

Deno.bench(`decodeWorkload (validate one document)`, { group: "model" }, () => {
  decodeWorkload(docs[1234]);
});
Deno.bench(`upsert ${N} workloads into a fresh store`, { group: "store" }, () => {
  const s = new MeshState();
  for (const w of workloads) s.workloads.upsert(w);
});
Deno.bench("lookup by address in a 10k-workload store", { group: "lookup" }, () => {
  state.lookupAddress("", "10.0.20.17");
});
Deno.bench("workloads on one node in a 10k-workload store", { group: "lookup" }, () => {
  state.workloads.onNode("node7");
});
