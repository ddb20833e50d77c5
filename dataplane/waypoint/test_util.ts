/** Builders of L7 policies for the waypoint's tests: each fills every list the model has, empty unless given. */

import type { L7Condition, L7Operation, L7Policy, L7Rule, L7Source } from "../../mesh/l7.ts";

export function src(s: Partial<L7Source>): L7Source {
  return {
    principals: [],
    notPrincipals: [],
    namespaces: [],
    notNamespaces: [],
    ipBlocks: [],
    notIpBlocks: [],
    remoteIpBlocks: [],
    notRemoteIpBlocks: [],
    ...s,
  };
}

export function op(o: Partial<L7Operation>): L7Operation {
  return {
    hosts: [],
    notHosts: [],
    ports: [],
    notPorts: [],
    methods: [],
    notMethods: [],
    paths: [],
    notPaths: [],
    ...o,
  };
}

export function when(key: string, values: string[], notValues: string[] = []): L7Condition {
  return { key, values, notValues };
}

export function rule(r: Partial<L7Rule>): L7Rule {
  return { from: [], to: [], when: [], ...r };
}

/** A policy of namespace shop targeting Service web. */
export function policy(action: "ALLOW" | "DENY", rules: L7Rule[], name = "p", dryRun = false): L7Policy {
  return {
    name,
    namespace: "shop",
    targets: [{ kind: "Service", namespace: "shop", name: "web" }],
    action,
    rules,
    dryRun,
  };
}
