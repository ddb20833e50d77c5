import { CertificateAuthority } from "../certs/ca.ts";
import { createWorkloadCsr } from "../certs/csr.ts";
import { verifyPeerChain } from "../certs/verify.ts";
import { SpiffeId } from "../mesh/identity.ts";

const { ca } = await CertificateAuthority.createRoot("cluster.local");
const id = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bench");
const { csrPem } = await createWorkloadCsr(id);
const issued = await ca.issue(id);

Deno.bench("workload key + CSR (ECDSA P-256)", { group: "certs" }, async () => {
  await createWorkloadCsr(id);
});
Deno.bench("CA sign of a CSR", { group: "certs", baseline: true }, async () => {
  await ca.sign({ csrPem, identity: id });
});
Deno.bench("key + CSR + sign (one certificate end to end)", { group: "certs" }, async () => {
  await ca.issue(id);
});
Deno.bench("verifyPeerChain of a leaf", { group: "certs" }, async () => {
  await verifyPeerChain(issued.chain, { roots: issued.roots, trustDomain: "cluster.local" });
});
Deno.bench("SpiffeId.parse", { group: "identity" }, () => {
  SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bench");
});
