/**
 * The control plane (`skiff control`): reads the manifests directory (watched), the Kubernetes API when given a
 * kubeconfig, and the node agents' registrations, builds the workload model with one pure builder per kind (build/), streams it to the proxies
 * on 15012 (snapshot, then deltas; push.ts, server.ts), serves the CA on the same port, and keeps its state in
 * an embedded store in the data directory (store.ts), so a restart loses nothing.
 *
 * `skiff control node add NAME` issues a node's token; `node remove NAME` revokes it and drops its reports (the
 * running control plane builds without them); `node list` shows them.
 *
 * @module
 */

import { join } from "node:path";
import client from "prom-client";
import { CertificateAuthority } from "../certs/ca.ts";
import { certificatesToPem } from "../certs/x509.ts";
import {
  ConfigError,
  describeOptions,
  loggable,
  option,
  parsers,
  readConfig,
  trustDomainOption,
  UsageError,
} from "../mesh/config.ts";
import { type Logger, logger } from "../mesh/log.ts";
import { type Cidr, decodeCidr, servingNames } from "../mesh/net.ts";
import { CONTROL_PORT } from "../mesh/protocol/config_stream.ts";
import { dnsLabel, dnsSubdomain, ValidationError } from "../mesh/validate.ts";
import { DEFAULT_SETTINGS } from "./build/common.ts";
import { CaMetrics, CaService } from "../certs/service.ts";
import { ControlPlane } from "./plane.ts";
import { serveControl } from "./server.ts";
import { ControlStore } from "./store.ts";
import { DEFAULT_TOKEN_TTL_MS, issueNodeToken, TokenVerifier } from "./tokens.ts";

/** istiod's monitoring port. */
export const MONITORING_PORT = 15014;
/** Where the CA lives in the data directory. */
export const CA_SUBDIR = "ca";
/** How often the running control plane looks for changes `skiff control node` made to the store. */
const STORE_POLL_MS = 1_000;

const dataDir = option({
  flag: "data-dir",
  env: "SKIFF_DATA_DIR",
  help: "the control plane's store (database, CA)",
  parser: parsers.string("a directory path"),
  default: "/var/lib/skiff",
});

const cidrParser = {
  expected: "an IPv4 range such as 10.96.0.0/16",
  parse: (raw: string): Cidr | undefined => {
    try {
      return decodeCidr(raw, "range");
    } catch {
      return undefined;
    }
  },
};

export const CONTROL_OPTIONS = {
  dataDir,
  manifests: option({
    flag: "manifests",
    env: "SKIFF_MANIFESTS",
    help: "directory of Kubernetes-shaped YAML, watched",
    parser: parsers.string("a directory path"),
    default: "/etc/skiff/manifests",
  }),
  kubeconfig: option({
    flag: "kubeconfig",
    env: "KUBECONFIG",
    help: "also read the Kubernetes API (informers on the same kinds as the manifests)",
    parser: parsers.string("a file path"),
  }),
  caDir: option({
    flag: "ca-dir",
    env: "SKIFF_CA_DIR",
    help: "a plugged-in CA (Istio cacerts layout); default: a root created in DATA_DIR/ca",
    parser: parsers.string("a directory path"),
  }),
  trustDomain: trustDomainOption,
  rootNamespace: option({
    flag: "root-namespace",
    env: "SKIFF_ROOT_NAMESPACE",
    help: "Istio's root namespace: its selector-less policies apply mesh-wide",
    parser: { expected: "a namespace name", parse: (s) => dnsLabel(s) ? undefined : s },
    default: DEFAULT_SETTINGS.rootNamespace,
  }),
  serviceRange: option({
    flag: "service-range",
    env: "SKIFF_SERVICE_RANGE",
    help: "addresses given to Services and waypoints without a clusterIP",
    parser: cidrParser,
    default: decodeCidr("10.96.0.0/16", "default"),
  }),
  listen: option({
    flag: "listen",
    env: "SKIFF_CONTROL_LISTEN",
    help: "address of the config stream and CA (HTTPS)",
    parser: parsers.string("an IP address"),
    default: "0.0.0.0",
  }),
  port: option({
    flag: "port",
    env: "SKIFF_CONTROL_PORT",
    help: "port of the config stream and CA (HTTPS)",
    parser: parsers.int(0, 65535),
    default: CONTROL_PORT,
  }),
  monitoringPort: option({
    flag: "monitoring-port",
    env: "SKIFF_MONITORING_PORT",
    help: "/metrics, /ready, /status (plain HTTP)",
    parser: parsers.int(0, 65535),
    default: MONITORING_PORT,
  }),
  san: option({
    flag: "san",
    env: "SKIFF_CONTROL_SAN",
    help: "comma-separated extra names and addresses for the 15012 certificate (default: host name, local IPs)",
    parser: parsers.string("names or addresses, comma-separated"),
    default: "",
  }),
};

const NODE_ADD = {
  dataDir,
  ttl: option({ flag: "ttl", help: "token lifetime", parser: parsers.duration(), default: DEFAULT_TOKEN_TTL_MS }),
  out: option({
    flag: "out",
    help: "write DIR/token and DIR/root-cert.pem (mode 0600) instead of printing the token",
    parser: parsers.string("a directory path"),
  }),
};
const NODE_OTHER = { dataDir };

export const CONTROL_USAGE = `Usage:
  skiff control [flags]                      run the control plane
${describeOptions(CONTROL_OPTIONS)}
  skiff control node add NAME [--ttl 720h] [--out DIR]    issue NAME's token (revokes its earlier one)
  skiff control node remove NAME                          revoke NAME's token
  skiff control node list`;

/** Runs `skiff control …`; returns the exit code. */
export async function runControl(argv: string[]): Promise<number> {
  if (argv[0] === "node") return await nodeCommand(argv.slice(1));
  const { values, help } = readConfig("control", CONTROL_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(CONTROL_USAGE);
    return 0;
  }
  if (values.kubeconfig !== undefined) {
    try {
      await Deno.readTextFile(values.kubeconfig);
    } catch (error) {
      throw new ConfigError(`control: --kubeconfig ${values.kubeconfig}: cannot read: ${(error as Error).message}`);
    }
  }
  const log = logger("control");
  log.info({ config: loggable(CONTROL_OPTIONS, values) }, "config loaded");
  const store = ControlStore.open(values.dataDir);
  const controller = new AbortController();
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  try {
    const ca = await loadOrCreateCa(values.caDir ?? join(values.dataDir, CA_SUBDIR), values.trustDomain, log);
    const names = servingNames(values.san);
    const serving = await ca.issueServing(names);
    log.info({ names }, "serving certificate issued for 15012");
    const settings = { ...DEFAULT_SETTINGS, trustDomain: values.trustDomain, rootNamespace: values.rootNamespace };
    const plane = new ControlPlane({
      store,
      settings,
      serviceRange: values.serviceRange,
      log,
      manifestDir: values.manifests,
    });
    await ensureDir(values.manifests, log);
    let kube: { stop(): Promise<void> } | undefined;
    if (values.kubeconfig !== undefined) {
      // Imported only here: the Kubernetes client costs a second and a hundred megabytes to load.
      const { KubeSource } = await import("./sources/kube.ts");
      const source = new KubeSource(logger("kubernetes"), (why) => plane.changed(why));
      plane.attach(source);
      await source.start(values.kubeconfig);
      kube = source;
    }
    await plane.start();
    const registry = new client.Registry();
    const caService = new CaService({
      ca: () => ca,
      registry: { onNode: (node) => plane.model.identities.get(node) ?? [] },
      trustDomain: values.trustDomain,
      log: logger("ca"),
      metrics: new CaMetrics(registry),
    });
    const servers = serveControl({
      plane,
      tokens: new TokenVerifier(store),
      ca: caService,
      registry,
      log,
      tls: { cert: certificatesToPem(serving.chain), key: serving.keyPem },
    }, {
      hostname: values.listen,
      port: values.port,
      monitoringHostname: values.listen,
      monitoringPort: values.monitoringPort,
    }, controller.signal);
    const watching = watchManifests(values.manifests, plane, controller.signal, log);
    // `skiff control node remove` runs in its own process and deletes the node's reports with its token: the next
    // build must leave that node's pods out, whether or not anything else changes.
    const polling = setInterval(() => {
      if (store.changedElsewhere()) plane.changed("the store, by another process (skiff control node)");
    }, STORE_POLL_MS);
    await new Promise((resolve) => controller.signal.addEventListener("abort", resolve, { once: true }));
    clearInterval(polling);
    log.info("shutting down");
    await kube?.stop();
    plane.close();
    await Promise.allSettled([servers.finished, watching]);
  } finally {
    store.close();
    Deno.removeSignalListener("SIGTERM", stop);
    Deno.removeSignalListener("SIGINT", stop);
  }
  return 0;
}

async function ensureDir(dir: string, log: Logger): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (error) {
    log.warn({ dir, error: (error as Error).message }, "cannot create the manifests directory");
  }
}

async function loadOrCreateCa(dir: string, trustDomain: string, log: Logger): Promise<CertificateAuthority> {
  if (await CertificateAuthority.exists(dir)) {
    const ca = await CertificateAuthority.load(dir);
    log.info({ dir, subject: ca.cert.subject, selfSigned: ca.selfSigned }, "CA loaded");
    return ca;
  }
  const { ca, keyPem } = await CertificateAuthority.createRoot(trustDomain);
  await ca.save(dir, keyPem);
  log.info({ dir, subject: ca.cert.subject, notAfter: ca.cert.notAfter.toISOString() }, "root CA created");
  return ca;
}

/** Re-reads the manifests directory on every change in it. */
async function watchManifests(dir: string, plane: ControlPlane, signal: AbortSignal, log: Logger): Promise<void> {
  let watcher: Deno.FsWatcher;
  try {
    watcher = Deno.watchFs(dir, { recursive: false });
  } catch (error) {
    log.error({ dir, error: (error as Error).message }, "cannot watch the manifests directory; changes need a restart");
    return;
  }
  signal.addEventListener("abort", () => watcher.close(), { once: true });
  let reading = Promise.resolve();
  // One write is several events (create, modify, close): a re-read queued and not yet begun will see them all,
  // so a burst of events costs one re-read of the directory, not one per event.
  let queued = false;
  for await (const _event of watcher) {
    if (queued) continue;
    queued = true;
    reading = reading.then(() => {
      queued = false;
      return plane.reloadManifests();
    });
  }
  await reading;
}

async function nodeCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "--help" || sub === "-h") {
    console.log(CONTROL_USAGE);
    return sub === undefined ? 2 : 0;
  }
  // NAME is the one argument that is neither a flag nor a flag's value.
  const isValue = (i: number) => (rest[i - 1] ?? "").startsWith("--") && !rest[i - 1].includes("=");
  const isPositional = (a: string, i: number) => !a.startsWith("-") && !isValue(i);
  const positional = rest.filter(isPositional);
  const flags = rest.filter((a, i) => !isPositional(a, i));
  if (sub === "list") {
    const { values } = readConfig("control node list", NODE_OTHER, flags, Deno.env.toObject());
    const store = ControlStore.open(values.dataDir);
    try {
      const now = Date.now();
      for (const n of store.nodes()) {
        const until = new Date(n.expiresAt).toISOString();
        console.log(`${n.name}\t${n.expiresAt > now ? `token valid until ${until}` : `token expired at ${until}`}`);
      }
    } finally {
      store.close();
    }
    return 0;
  }
  const name = positional[0];
  if (name === undefined || positional.length > 1) throw new UsageError(`control node ${sub}: give exactly one NAME`);
  const problem = dnsSubdomain(name);
  if (problem) throw new ValidationError("NAME", `${problem}, got ${JSON.stringify(name)}`);
  if (sub === "add") {
    const { values } = readConfig("control node add", NODE_ADD, flags, Deno.env.toObject());
    const store = ControlStore.open(values.dataDir);
    try {
      const token = await issueNodeToken(store, name, values.ttl);
      if (values.out === undefined) {
        console.log(token);
        return 0;
      }
      const ca = await CertificateAuthority.load(join(values.dataDir, CA_SUBDIR)).catch(() => undefined);
      await Deno.mkdir(values.out, { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(join(values.out, "token"), token + "\n", { mode: 0o600 });
      if (ca) await Deno.writeTextFile(join(values.out, "root-cert.pem"), certificatesToPem(ca.roots), { mode: 0o600 });
      console.log(
        `node ${name}: token written to ${join(values.out, "token")}` +
          (ca
            ? `, the control plane's root to ${join(values.out, "root-cert.pem")}`
            : " (start the control plane once to create its CA, then add the node again for the root)"),
      );
      return 0;
    } finally {
      store.close();
    }
  }
  if (sub === "remove") {
    const { values } = readConfig("control node remove", NODE_OTHER, flags, Deno.env.toObject());
    const store = ControlStore.open(values.dataDir);
    try {
      if (!store.removeNode(name)) {
        console.error(`node ${name} is not known; nothing to revoke`);
        return 1;
      }
      console.log(`node ${name} removed: its token is refused from now on`);
      return 0;
    } finally {
      store.close();
    }
  }
  throw new UsageError(`control node: unknown subcommand ${JSON.stringify(sub)}\n\n${CONTROL_USAGE}`);
}
