/**
 * The data plane roles: ztunnel (`skiff ztunnel`, the node L4 proxy with per-pod listeners, HBONE, L4
 * authorization and telemetry) and the waypoint (`skiff waypoint`, the L7 proxy: HTTP/1.1, HTTP/2 and gRPC
 * routing and authorization inside HBONE), on Skiff's own HTTP/2 (`h2/`) and HBONE (`hbone/`).
 *
 * @module
 */

export { runZtunnel } from "./ztunnel/mod.ts";
export { runWaypoint } from "./waypoint/mod.ts";
