/**
 * A real container runtime for tests: Debian's `podman` (4.3) with `runc` and its CNI backend, configured by a
 * containers.conf this fixture owns (`CONTAINERS_CONF`; /etc is never touched) and run inside a test node's
 * network namespace (`nsenter --net`, which leaves the mount namespace alone, so the pod namespaces podman
 * bind-mounts under /run/netns/ are visible to the node agent and ztunnel). Its one network is the node's
 * conflist: the reference `bridge` with `host-local`, then `skiff`.
 *
 * No registry is reachable here, so the image is made locally: busybox-static's binary in a rootfs, `tar`red and
 * `podman import`ed. Everything made (containers, the image, the configuration) is removed on dispose, also when
 * the test failed; removing a container is podman's CNI DEL.
 *
 * Settings, each one needed on these machines (docs/vm-install.md explains them for a VM):
 * - `default_ulimits = []`: runc may not set rlimits in this sandbox;
 * - `runtime = "runc"`: crun refuses the hybrid cgroup layout; `cgroup_manager = "cgroupfs"`: PID 1 is not systemd;
 * - `events_logger = "file"`: no journald;
 * - `network_backend = "cni"`, `cni_plugin_dirs`, `network_config_dir`: the conflist and plugins of the test.
 */

import { join } from "node:path";
import { run } from "./netns.ts";
import type { Output } from "./netns.ts";

/** Where Debian's busybox-static puts its binary. */
const BUSYBOX = "/bin/busybox";
/** The busybox applets the image links (what the tests run inside containers). */
const APPLETS = ["sh", "nc", "echo", "sleep", "cat", "ip", "timeout", "wget"];

/** Whether podman, runc and busybox-static are installed (`bash install.sh --dev`). */
export async function podmanInstalled(): Promise<string | undefined> {
  for (const [tool, pkg] of [["podman", "podman"], ["runc", "runc"], [BUSYBOX, "busybox-static"]]) {
    const found = await run(["sh", "-c", `command -v ${tool}`]);
    if (found.code !== 0) return `${tool} is missing (Debian package ${pkg}; bash install.sh --dev installs it)`;
  }
  return undefined;
}

/** A podman configured for one test node; dispose to remove what it made. */
export class Podman implements AsyncDisposable {
  readonly image: string;
  readonly network: string;
  readonly #containers = new Set<string>();
  #imported = false;

  private constructor(readonly dir: string, readonly nodeNetns: string, network: string, tag: string) {
    this.network = network;
    this.image = `localhost/skiff-test-busybox:${tag}`;
  }

  /**
   * Writes the containers.conf and the network's conflist (`conflist.name` is the network's name), imports the
   * busybox image, and returns the fixture. `pluginDirs` are the CNI plugin directories, in order.
   */
  static async create(opts: {
    nodeNetns: string;
    conflist: { name: string; cniVersion: string; plugins: Record<string, unknown>[] };
    pluginDirs: string[];
  }): Promise<Podman> {
    const dir = await Deno.makeTempDir({ prefix: "skiff-podman-" });
    const tag = crypto.randomUUID().slice(0, 8);
    const podman = new Podman(dir, opts.nodeNetns, opts.conflist.name, tag);
    try {
      await Deno.mkdir(join(dir, "net.d"));
      await Deno.writeTextFile(join(dir, "net.d", `${opts.conflist.name}.conflist`), JSON.stringify(opts.conflist));
      await Deno.writeTextFile(
        join(dir, "containers.conf"),
        [
          "[containers]",
          "default_ulimits = []",
          "[engine]",
          'runtime = "runc"',
          'cgroup_manager = "cgroupfs"',
          'events_logger = "file"',
          "[network]",
          'network_backend = "cni"',
          `cni_plugin_dirs = ${JSON.stringify(opts.pluginDirs)}`,
          `network_config_dir = ${JSON.stringify(join(dir, "net.d"))}`,
          "",
        ].join("\n"),
      );
      const rootfs = join(dir, "rootfs");
      await Deno.mkdir(join(rootfs, "bin"), { recursive: true });
      await Deno.copyFile(BUSYBOX, join(rootfs, "bin", "busybox"));
      for (const a of APPLETS) await Deno.symlink("busybox", join(rootfs, "bin", a));
      const tar = join(dir, "rootfs.tar");
      await podman.#must(["tar", "-C", rootfs, "-cf", tar, "."], false);
      await podman.#must(["podman", "import", "--quiet", tar, podman.image]);
      podman.#imported = true;
    } catch (error) {
      await podman[Symbol.asyncDispose]();
      throw error;
    }
    return podman;
  }

  /** Runs a command with this fixture's CONTAINERS_CONF, in the node's network namespace when `inNode`. */
  exec(cmd: string[], inNode = true): Promise<Output> {
    const env = ["env", `CONTAINERS_CONF=${join(this.dir, "containers.conf")}`];
    return run(inNode ? ["nsenter", `--net=${this.nodeNetns}`, ...env, ...cmd] : [...env, ...cmd]);
  }

  async #must(cmd: string[], inNode = true): Promise<string> {
    const out = await this.exec(cmd, inNode);
    if (out.code !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${out.code}): ${out.stderr.trim()}`);
    return out.stdout;
  }

  /** `podman run -d --name NAME --network NET IMAGE CMD...`: its output (the error when it failed). */
  run(name: string, cmd: string[]): Promise<Output> {
    this.#containers.add(name);
    return this.exec(["podman", "run", "-d", "--name", name, "--network", this.network, this.image, ...cmd]);
  }

  /** `podman exec NAME CMD...`. */
  execIn(name: string, cmd: string[]): Promise<Output> {
    return this.exec(["podman", "exec", name, ...cmd]);
  }

  /** The container's network namespace (`/run/netns/...`) and address, as podman reports them. */
  async inspect(name: string): Promise<{ netns: string; ip: string }> {
    const out = await this.#must([
      "podman",
      "inspect",
      "--format",
      `{{.NetworkSettings.SandboxKey}} {{(index .NetworkSettings.Networks "${this.network}").IPAddress}}`,
      name,
    ]);
    const [netns, ip] = out.trim().split(" ");
    return { netns, ip };
  }

  /** `podman rm -f`: stops the container and runs the network's CNI DEL. */
  async remove(name: string): Promise<Output> {
    const out = await this.exec(["podman", "rm", "-f", "-t", "0", name]);
    if (out.code === 0) this.#containers.delete(name);
    return out;
  }

  /** Removes every container this fixture started (CNI DEL), the image, and the configuration. */
  async [Symbol.asyncDispose](): Promise<void> {
    const errors: string[] = [];
    for (const name of [...this.#containers]) {
      const out = await this.remove(name);
      if (out.code !== 0 && !/no such container/i.test(out.stderr)) errors.push(`podman rm ${name}: ${out.stderr}`);
    }
    if (this.#imported) {
      const out = await this.exec(["podman", "rmi", "-f", this.image]);
      if (out.code !== 0) errors.push(`podman rmi ${this.image}: ${out.stderr}`);
    }
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    if (errors.length > 0) throw new Error(`podman fixture cleanup: ${errors.join("; ")}`);
  }
}
