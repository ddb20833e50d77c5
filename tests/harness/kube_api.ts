/**
 * A Kubernetes API server double, for testing the control plane's Kubernetes source where no API server exists:
 * HTTPS on loopback with a certificate from a test CA, a bearer token, and for each collection path LIST
 * (`{kind: XList, metadata: {resourceVersion}, items}`, items without apiVersion/kind, as the real server sends
 * them) and WATCH (`?watch=true&resourceVersion=N`: newline-delimited `{type, object}` events after N, held
 * open). Only what an informer uses; it is no conformant API server.
 */

import { join } from "node:path";
import { CertificateAuthority } from "../../certs/ca.ts";
import { certificatesToPem } from "../../certs/x509.ts";

interface Stored {
  object: Record<string, unknown>;
  version: number;
}

interface Event {
  version: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: Record<string, unknown>;
}

/** One fake API server; dispose it to stop it and remove its kubeconfig. */
export class KubeApiDouble implements AsyncDisposable {
  readonly token = "test-token";
  readonly #collections = new Map<string, { kind: string; objects: Map<string, Stored>; events: Event[] }>();
  readonly #watchers = new Set<{ path: string; push: (e: Event) => void }>();
  readonly requests: string[] = [];
  #version = 100;
  #server!: Deno.HttpServer<Deno.NetAddr>;
  #dir!: string;
  readonly #controller = new AbortController();

  /** The kubeconfig file pointing at this server. */
  kubeconfig = "";

  static async start(): Promise<KubeApiDouble> {
    const api = new KubeApiDouble();
    const { ca } = await CertificateAuthority.createRoot("kube.test");
    const serving = await ca.issueServing(["127.0.0.1"]);
    api.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: certificatesToPem(serving.chain),
      key: serving.keyPem,
      signal: api.#controller.signal,
      onListen: () => {},
    }, (req) => api.#handle(req));
    api.#dir = await Deno.makeTempDir({ prefix: "skiff-kube-" });
    api.kubeconfig = join(api.#dir, "kubeconfig");
    const caData = btoa(certificatesToPem(ca.roots));
    await Deno.writeTextFile(
      api.kubeconfig,
      `apiVersion: v1
kind: Config
clusters: [{ name: double, cluster: { server: "https://127.0.0.1:${api.#server.addr.port}", certificate-authority-data: ${caData} } }]
users: [{ name: skiff, user: { token: ${api.token} } }]
contexts: [{ name: double, context: { cluster: double, user: skiff } }]
current-context: double
`,
    );
    return api;
  }

  /** Creates or replaces an object in the collection at `path` (e.g. `/api/v1/pods`). */
  put(path: string, kind: string, object: Record<string, unknown>): void {
    const c = this.#collection(path, kind);
    const meta = object.metadata as { name: string; namespace?: string };
    const key = `${meta.namespace ?? ""}/${meta.name}`;
    const version = ++this.#version;
    const stored = { ...object, metadata: { ...meta, resourceVersion: String(version), uid: crypto.randomUUID() } };
    const type = c.objects.has(key) ? "MODIFIED" : "ADDED";
    c.objects.set(key, { object: stored, version });
    this.#emit(path, { version, type, object: stored });
  }

  /** Deletes an object. */
  delete(path: string, namespace: string, name: string): void {
    const c = this.#collections.get(path);
    const old = c?.objects.get(`${namespace}/${name}`);
    if (!c || !old) return;
    c.objects.delete(`${namespace}/${name}`);
    this.#emit(path, { version: ++this.#version, type: "DELETED", object: old.object });
  }

  #collection(path: string, kind: string) {
    let c = this.#collections.get(path);
    if (!c) this.#collections.set(path, c = { kind, objects: new Map(), events: [] });
    return c;
  }

  #emit(path: string, e: Event) {
    this.#collections.get(path)!.events.push(e);
    for (const w of this.#watchers) if (w.path === path) w.push(e);
  }

  #handle(req: Request): Response {
    const url = new URL(req.url);
    this.requests.push(`${req.method} ${url.pathname}${url.search}`);
    if (req.headers.get("authorization") !== `Bearer ${this.token}`) {
      return Response.json({ kind: "Status", status: "Failure", reason: "Unauthorized", code: 401 }, { status: 401 });
    }
    const c = this.#collections.get(url.pathname);
    if (!c) {
      // An empty collection: Kubernetes lists nothing rather than failing for a known resource.
      this.#collection(url.pathname, "Unknown");
      return this.#handle(req);
    }
    if (url.searchParams.get("watch") !== "true") {
      return Response.json({
        kind: `${c.kind}List`,
        apiVersion: "v1",
        metadata: { resourceVersion: String(this.#version) },
        items: [...c.objects.values()].map((s) => s.object),
      });
    }
    const since = Number(url.searchParams.get("resourceVersion") ?? "0");
    const encoder = new TextEncoder();
    let watcher: { path: string; push: (e: Event) => void } | undefined;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const push = (e: Event) => {
          try {
            controller.enqueue(encoder.encode(JSON.stringify({ type: e.type, object: e.object }) + "\n"));
          } catch { /* the client went away */ }
        };
        for (const e of c.events) if (e.version > since) push(e);
        watcher = { path: url.pathname, push };
        this.#watchers.add(watcher);
        this.#controller.signal.addEventListener("abort", () => {
          try {
            controller.close();
          } catch { /* closed */ }
        }, { once: true });
      },
      cancel: () => {
        if (watcher) this.#watchers.delete(watcher);
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  }

  async [Symbol.asyncDispose]() {
    this.#controller.abort();
    await this.#server.finished;
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
