/**
 * `skiff ca ...` for operators and tests: `ca init` creates a root CA directory (or reports the one already
 * there), `ca issue` signs a workload certificate with it and writes chain, key and trust bundle, `ca serve` runs
 * the CA service apart from the control plane (certs/serve.ts).
 *
 * @module
 */

import { join } from "node:path";
import { CONTROL_CLIENT_OPTIONS, ControlConnection, controlEndpoint } from "../mesh/control_client.ts";
import { servingNames } from "../mesh/net.ts";
import { CONTROL_PORT } from "../mesh/protocol/config_stream.ts";
import {
  describeOptions,
  loggable,
  option,
  parsers,
  readConfig,
  trustDomainOption,
  UsageError,
} from "../mesh/config.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { logger } from "../mesh/log.ts";
import { CertificateAuthority, DEFAULT_TTL_MS, ROOT_TTL_MS } from "./ca.ts";
import { serveCa } from "./serve.ts";
import { verifyPeerChain } from "./verify.ts";
import { certificatesToPem } from "./x509.ts";

/** The files `ca issue` writes into its output directory. */
export const ISSUED_FILES = { chain: "cert-chain.pem", key: "key.pem", roots: "root-cert.pem" } as const;

const dir = option({
  flag: "dir",
  env: "SKIFF_CA_DIR",
  help: "CA directory (Istio cacerts layout)",
  parser: parsers.string("a directory path"),
  required: true,
});
const trustDomain = trustDomainOption;

const INIT = {
  dir,
  trustDomain,
  ttl: option({ flag: "ttl", help: "root lifetime", parser: parsers.duration(), default: ROOT_TTL_MS }),
};
const ISSUE = {
  dir,
  trustDomain,
  identity: option({
    flag: "identity",
    help: "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
    parser: { expected: "a SPIFFE ID spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT", parse: parseId },
    required: true,
  }),
  out: option({
    flag: "out",
    help: "output directory for cert-chain.pem, key.pem, root-cert.pem",
    parser: parsers.string("a directory path"),
    required: true,
  }),
  ttl: option({
    flag: "ttl",
    help: "certificate lifetime (at most 90d; 0 means 24h)",
    parser: parsers.duration(),
    default: DEFAULT_TTL_MS,
  }),
};

const SERVE = {
  dir,
  trustDomain,
  ...CONTROL_CLIENT_OPTIONS,
  listen: option({
    flag: "listen",
    env: "SKIFF_CA_LISTEN",
    help: "address of the CA service (HTTPS)",
    parser: parsers.string("an IP address"),
    default: "0.0.0.0",
  }),
  port: option({
    flag: "port",
    env: "SKIFF_CA_PORT",
    help: "port of the CA service (HTTPS)",
    parser: parsers.int(0, 65535),
    default: CONTROL_PORT,
  }),
  san: option({
    flag: "san",
    env: "SKIFF_CA_SAN",
    help: "comma-separated extra names and addresses for its certificate (default: host name, local IPs)",
    parser: parsers.string("names or addresses, comma-separated"),
    default: "",
  }),
};

function parseId(s: string): SpiffeId | undefined {
  try {
    return SpiffeId.parse(s);
  } catch {
    return undefined;
  }
}

/** Usage text of `skiff ca`. */
export const CA_USAGE = `Usage:
  skiff ca init --dir DIR [--trust-domain TD] [--ttl 87600h]
${describeOptions(INIT)}
  skiff ca issue --dir DIR --identity spiffe://TD/ns/NS/sa/SA --out OUT [--ttl 24h]
${describeOptions(ISSUE)}
  skiff ca serve --dir DIR --control https://CONTROL:15012 --token-file FILE
      the CA service apart from the control plane (which also serves it on 15012)
${describeOptions(SERVE)}`;

/** Runs `skiff ca <subcommand>`; returns the exit code. */
export async function runCaCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case "init":
      return await caInit(rest);
    case "issue":
      return await caIssue(rest);
    case "serve":
      return await caServe(rest);
    case undefined:
      throw new UsageError(`ca: give a subcommand: init, issue or serve\n\n${CA_USAGE}`);
    case "-h":
    case "--help":
      console.log(CA_USAGE);
      return 0;
    default:
      throw new UsageError(`ca: unknown subcommand ${JSON.stringify(sub)}\n\n${CA_USAGE}`);
  }
}

async function caServe(argv: string[]): Promise<number> {
  const { values, help } = readConfig("ca serve", SERVE, argv, Deno.env.toObject());
  if (help) return printUsage();
  if (values.control === undefined) {
    throw new UsageError("ca serve: give --control URL (SKIFF_CONTROL): the control plane it takes its registry from");
  }
  const log = logger("ca");
  log.info({ config: loggable(SERVE, values) }, "config loaded");
  const ca = await CertificateAuthority.load(values.dir);
  const controller = new AbortController();
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  try {
    await serveCa({
      ca,
      control: new ControlConnection(controlEndpoint(values.control, values)),
      trustDomain: values.trustDomain,
      hostname: values.listen,
      port: values.port,
      names: servingNames(values.san),
      log,
      signal: controller.signal,
    });
  } finally {
    Deno.removeSignalListener("SIGTERM", stop);
    Deno.removeSignalListener("SIGINT", stop);
  }
  return 0;
}

async function caInit(argv: string[]): Promise<number> {
  const { values, help } = readConfig("ca init", INIT, argv, Deno.env.toObject());
  if (help) return printUsage();
  const log = logger("ca");
  log.info({ config: loggable(INIT, values) }, "config loaded");
  if (await CertificateAuthority.exists(values.dir)) {
    const ca = await CertificateAuthority.load(values.dir);
    console.log(
      `CA already present in ${values.dir} (${
        ca.selfSigned ? "root" : "plugged-in intermediate"
      }: ${ca.cert.subject}, valid until ${ca.cert.notAfter.toISOString()}); left as it is`,
    );
    return 0;
  }
  const { ca, keyPem } = await CertificateAuthority.createRoot(values.trustDomain, { ttlMs: values.ttl });
  await ca.save(values.dir, keyPem);
  log.info(
    { dir: values.dir, subject: ca.cert.subject, notAfter: ca.cert.notAfter.toISOString() },
    "root CA created",
  );
  console.log(
    `created root CA in ${values.dir}: ${ca.cert.subject}, valid until ${ca.cert.notAfter.toISOString()}`,
  );
  return 0;
}

async function caIssue(argv: string[]): Promise<number> {
  const { values, help } = readConfig("ca issue", ISSUE, argv, Deno.env.toObject());
  if (help) return printUsage();
  const log = logger("ca");
  log.info({ config: loggable(ISSUE, values) }, "config loaded");
  const identity = values.identity;
  if (identity.trustDomain !== values.trustDomain) {
    throw new UsageError(
      `ca issue: identity ${identity} is not in trust domain ${values.trustDomain} (set --trust-domain)`,
    );
  }
  const ca = await CertificateAuthority.load(values.dir);
  const issued = await ca.issue(identity, { ttlMs: values.ttl });
  // Check the result the way a peer will, before handing it out.
  await verifyPeerChain(issued.chain, { roots: issued.roots, trustDomain: values.trustDomain });
  await Deno.mkdir(values.out, { recursive: true });
  const keyPath = join(values.out, ISSUED_FILES.key);
  await Deno.writeTextFile(keyPath, issued.keyPem, { mode: 0o600 });
  await Deno.chmod(keyPath, 0o600);
  await Deno.writeTextFile(join(values.out, ISSUED_FILES.chain), certificatesToPem(issued.chain));
  await Deno.writeTextFile(join(values.out, ISSUED_FILES.roots), certificatesToPem(issued.roots));
  const leaf = issued.chain[0];
  log.info({
    identity: identity.toString(),
    serial: leaf.serialNumber,
    notAfter: leaf.notAfter.toISOString(),
  }, "certificate issued");
  console.log(`issued ${identity}, valid until ${leaf.notAfter.toISOString()}, into ${values.out}`);
  return 0;
}

function printUsage(): number {
  console.log(CA_USAGE);
  return 0;
}
