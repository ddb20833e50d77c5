/** Certificates for tests: a root per trust domain and workload credentials in the shape HBONE takes. */

import { CertificateAuthority } from "../../certs/ca.ts";
import { certificatesToPem } from "../../certs/x509.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import type { WorkloadCredentials } from "../../dataplane/hbone/tls.ts";

export class TestPki {
  private constructor(readonly ca: CertificateAuthority, readonly trustDomain: string) {}

  static async create(trustDomain = "cluster.local"): Promise<TestPki> {
    const { ca } = await CertificateAuthority.createRoot(trustDomain);
    return new TestPki(ca, trustDomain);
  }

  /** Credentials for `ns/sa` (or a full SPIFFE ID), signed by this root. */
  async credentials(who: string, opts: { ttlMs?: number; now?: Date } = {}): Promise<WorkloadCredentials> {
    const identity = SpiffeId.parse(who.startsWith("spiffe://") ? who : this.id(who));
    const issued = await this.ca.issue(identity, opts);
    return {
      identity,
      chainPem: certificatesToPem(issued.chain),
      keyPem: issued.keyPem,
      rootsPem: certificatesToPem(issued.roots),
    };
  }

  /** The SPIFFE ID text of `ns/sa` in this trust domain. */
  id(nsSa: string): string {
    const [ns, sa] = nsSa.split("/");
    return `spiffe://${this.trustDomain}/ns/${ns}/sa/${sa}`;
  }
}
