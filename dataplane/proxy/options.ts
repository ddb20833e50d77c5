/**
 * The command-line options both proxies take with the same flags, variables and defaults: where the CA is, the
 * trust domain, the workload certificates' lifetime, the admin, metrics and readiness ports (upstream
 * ztunnel's 15000, 15020 and 15021), and how many threads serve traffic (upstream's `ZTUNNEL_WORKER_THREADS`,
 * which defaults to 2; here the machine's cores, as a VM's node proxy has the machine to itself).
 *
 * @module
 */

import { option, parsers, trustDomainOption } from "../../mesh/config.ts";
import { ADMIN_PORT, METRICS_PORT, READINESS_PORT } from "./admin.ts";

const port = (flag: string, env: string, fallback: number, help: string) =>
  option({ flag, env, help, parser: parsers.int(0, 65535), default: fallback });

/** Options ztunnel and the waypoint share. */
export const PROXY_OPTIONS = {
  caAddress: option({
    flag: "ca-address",
    env: "CA_ADDRESS",
    help: "the CA service when it runs apart (skiff ca serve); default: the --control URL",
    parser: parsers.string("a URL such as https://10.0.0.2:15012"),
  }),
  trustDomain: trustDomainOption,
  certTtl: option({
    flag: "cert-ttl",
    env: "SKIFF_CERT_TTL",
    help: "lifetime of workload certificates",
    parser: parsers.duration(),
    default: 24 * 3_600_000,
  }),
  adminPort: port("admin-port", "SKIFF_ADMIN_PORT", ADMIN_PORT, "admin (localhost): /config_dump, /logging"),
  metricsPort: port("metrics-port", "SKIFF_METRICS_PORT", METRICS_PORT, "Prometheus /metrics"),
  readinessPort: port("readiness-port", "SKIFF_READINESS_PORT", READINESS_PORT, "/healthz/ready"),
  workers: option({
    flag: "workers",
    env: "SKIFF_WORKERS",
    help: "threads that serve traffic, the main one included (workers.ts); default: this machine's cores",
    parser: parsers.int(1, 256),
    default: Math.max(1, navigator.hardwareConcurrency ?? 1),
  }),
};
