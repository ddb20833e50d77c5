/**
 * The certificate core: Skiff's CA as a library. It creates or loads a root or a plugged-in intermediate,
 * signs workload certificates (X509-SVIDs) for the identity the caller was authorized for, verifies peer
 * chains for the data plane, decides which identities a node may obtain, and keeps certificates rotated.
 * The network CA service on top of it belongs to the control plane.
 *
 * @module
 */

export { CA_FILES, CertificateAuthority, DEFAULT_TTL_MS, type Issued, MAX_TTL_MS, type SignRequest } from "./ca.ts";
export { createWorkloadCsr, type WorkloadCsr } from "./csr.ts";
export { authorizeNodeIdentity, type NodeDecision, type NodeRegistryView } from "./node_auth.ts";
export { type CertTimes } from "./rotation.ts";
export { type Clock, RotationManager, type RotationOptions, systemClock } from "./rotation_manager.ts";
export { svidIdentity, type VerifyOptions, verifyPeerChain } from "./verify.ts";
export { CertError, certificatesToPem, parseCertificates, x509 } from "./x509.ts";
