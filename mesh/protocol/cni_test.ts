import assert from "node:assert/strict";
import {
  CNI_CODES,
  CniError,
  decodeNetConf,
  decodePodEvent,
  parseCniArgs,
  readCniEnvironment,
  resultAddresses,
} from "./cni.ts";

const ENV = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "abc",
  CNI_NETNS: "/var/run/netns/p",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
};

function cniError(fn: () => unknown): CniError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof CniError, String(error));
    return error;
  }
  throw new Error("expected a CniError");
}

Deno.test("the environment: each command's required variables, named when missing (code 4)", () => {
  assert.equal(readCniEnvironment(ENV).containerId, "abc");
  for (const name of ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]) {
    const e = cniError(() => readCniEnvironment({ ...ENV, [name]: undefined }));
    assert.equal(e.code, CNI_CODES.invalidEnvironment);
    assert.match(e.message, new RegExp(`^${name} is not set \\(required for ADD\\)`));
  }
  // DEL may come without a namespace (it is already gone).
  assert.equal(readCniEnvironment({ ...ENV, CNI_COMMAND: "DEL", CNI_NETNS: undefined }).netns, "");
  assert.match(cniError(() => readCniEnvironment({ ...ENV, CNI_COMMAND: "" })).message, /CNI_COMMAND is not set/);
  assert.match(cniError(() => readCniEnvironment({ ...ENV, CNI_COMMAND: "UP" })).message, /not one of ADD, DEL/);
  assert.match(cniError(() => readCniEnvironment({ ...ENV, CNI_CONTAINERID: "a/b" })).message, /container ID/);
  const relative = cniError(() => readCniEnvironment({ ...ENV, CNI_NETNS: "netns/p" }));
  assert.equal(relative.code, CNI_CODES.invalidEnvironment);
  assert.match(relative.message, /CNI_NETNS "netns\/p" is not an absolute path/);
});

Deno.test("CNI_ARGS: K=V pairs; a pair without = is code 4", () => {
  assert.deepEqual(parseCniArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"), {
    IgnoreUnknown: "1",
    K8S_POD_NAMESPACE: "shop",
    K8S_POD_NAME: "web-1",
  });
  assert.equal(cniError(() => parseCniArgs("K8S_POD_NAME")).code, CNI_CODES.invalidEnvironment);
});

Deno.test("the network configuration: decode failures are 6, versions 1, bad fields 7 naming the field", () => {
  assert.equal(cniError(() => decodeNetConf("{")).code, CNI_CODES.decodeFailure);
  assert.equal(cniError(() => decodeNetConf("[1]")).code, CNI_CODES.decodeFailure);
  const old = cniError(() => decodeNetConf(`{"cniVersion":"0.2.0","name":"n","type":"skiff"}`));
  assert.equal(old.code, CNI_CODES.incompatibleVersion);
  assert.match(old.details!, /config is "0.2.0", plugin supports/);
  assert.match(cniError(() => decodeNetConf(`{"name":"n"}`)).message, /cniVersion is required/);
  const rel = cniError(() => decodeNetConf(`{"cniVersion":"1.0.0","agentSocket":"run/cni.sock"}`));
  assert.equal(rel.code, CNI_CODES.invalidConfig);
  assert.match(rel.message, /agentSocket: expected an absolute path/);
  assert.match(
    cniError(() => decodeNetConf(`{"cniVersion":"1.0.0","excludeNamespaces":["Kube System"]}`)).message,
    /excludeNamespaces\[0\]/,
  );
  // Other plugins' and the runtime's fields are theirs.
  const conf = decodeNetConf(
    `{"cniVersion":"1.0.0","name":"n","type":"skiff","runtimeConfig":{},"capabilities":{},"prevResult":{"ips":[]}}`,
  );
  assert.equal(conf.agentSocket, "/var/run/skiff/cni.sock");
  assert.equal(conf.timeoutSeconds, 5);
  assert.deepEqual(conf.prevResult, { ips: [] });
  assert.equal(conf.namespace, "");
});

Deno.test("the network configuration's namespace: a DNS label, or none", async (t) => {
  for (
    const [namespace, want] of [
      ["shop", "shop"],
      ["", ""],
      ["Shop", /namespace/],
      ["a/b", /namespace/],
      [7, /namespace/],
    ] as const
  ) {
    await t.step(JSON.stringify(namespace), () => {
      const text = JSON.stringify({ cniVersion: "1.0.0", type: "skiff", namespace });
      if (typeof want === "string") assert.equal(decodeNetConf(text).namespace, want);
      else {
        const e = cniError(() => decodeNetConf(text));
        assert.equal(e.code, CNI_CODES.invalidConfig);
        assert.match(e.message, want);
      }
    });
  }
});

Deno.test("the version spoken is the cniVersion the runtime chose, whatever cniVersions lists", () => {
  assert.equal(decodeNetConf(`{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"]}`).cniVersion, "1.0.0");
});

Deno.test("a previous result's addresses: those inside the sandbox, without prefix", () => {
  const prev = {
    interfaces: [{ name: "cni0" }, { name: "veth1" }, { name: "eth0", sandbox: "/var/run/netns/p" }],
    ips: [{ interface: 2, address: "10.0.1.5/24" }, { interface: 0, address: "10.0.1.1/24" }, {
      address: "fd00::5/64",
    }],
  };
  assert.deepEqual(resultAddresses(prev), ["10.0.1.5", "fd00::5"]);
  assert.deepEqual(resultAddresses(undefined), []);
});

Deno.test("a pod event from the plugin is checked field by field", () => {
  const e = decodePodEvent({
    containerId: "c1",
    netns: "/proc/1/ns/net",
    podNamespace: "shop",
    podName: "web-1",
    ips: ["10.0.0.1"],
  });
  assert.equal(e.podUid, "");
  assert.throws(() => decodePodEvent({ containerId: "c1", ips: ["nope"] }), /ips\[0\]: expected an IP address/);
  assert.throws(() => decodePodEvent({ containerId: "c1", extra: 1 }), /extra: is not a known field/);
  assert.throws(() => decodePodEvent({ containerId: "c1", netns: "relative" }), /netns: expected an absolute path/);
});
