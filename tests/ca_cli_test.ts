/**
 * `skiff ca init` and `skiff ca issue` as an operator runs them, checked with openssl: the output verifies
 * against the root, shows exactly one URI SAN and CA:FALSE, and a CA directory that openssl made as Istio's
 * cacerts (root → intermediate) signs certificates that chain through the intermediate.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { run } from "./harness/netns.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

async function skiff(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { RUST_BACKTRACE: "0", LOG_FORMAT: "json" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function openssl(...args: string[]) {
  const out = await run(["openssl", ...args]);
  assert.equal(out.code, 0, `openssl ${args.join(" ")}: ${out.stderr}`);
  return out.stdout;
}

Deno.test("skiff ca issue output verifies with openssl and carries one URI SAN and CA:FALSE", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-ca-cli-" });
  try {
    const ca = join(dir, "ca");
    const out = join(dir, "out");
    const init = await skiff("ca", "init", "--dir", ca);
    assert.equal(init.code, 0, init.stderr);
    assert.equal((await Deno.stat(join(ca, "ca-key.pem"))).mode! & 0o777, 0o600);
    const issue = await skiff(
      "ca",
      "issue",
      "--dir",
      ca,
      "--identity",
      "spiffe://cluster.local/ns/shop/sa/cart",
      "--out",
      out,
    );
    assert.equal(issue.code, 0, issue.stderr);
    assert.equal((await Deno.stat(join(out, "key.pem"))).mode! & 0o777, 0o600);
    const verified = await openssl("verify", "-CAfile", join(out, "root-cert.pem"), join(out, "cert-chain.pem"));
    assert.match(verified, /: OK$/m);
    const text = await openssl("x509", "-in", join(out, "cert-chain.pem"), "-noout", "-text");
    assert.equal([...text.matchAll(/URI:/g)].length, 1);
    assert.match(text, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/cart/);
    assert.doesNotMatch(text, /DNS:/);
    assert.match(text, /CA:FALSE/);
    // The key written is the certificate's key.
    const certPub = await openssl("x509", "-in", join(out, "cert-chain.pem"), "-noout", "-pubkey");
    const keyPub = await openssl("pkey", "-in", join(out, "key.pem"), "-pubout");
    assert.equal(certPub, keyPub);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("skiff ca init keeps an existing CA instead of replacing it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-ca-cli-" });
  try {
    assert.equal((await skiff("ca", "init", "--dir", dir)).code, 0);
    const before = await Deno.readTextFile(join(dir, "ca-cert.pem"));
    const again = await skiff("ca", "init", "--dir", dir);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already present/);
    assert.equal(await Deno.readTextFile(join(dir, "ca-cert.pem")), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("skiff ca issue signs with an intermediate that openssl made, as Istio's plugged-in cacerts", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-ca-cli-" });
  try {
    const f = (name: string) => join(dir, name);
    await Deno.writeTextFile(
      f("int.ext"),
      "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    await openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f("root-key.pem"));
    await openssl(
      "req",
      "-x509",
      "-new",
      "-key",
      f("root-key.pem"),
      "-subj",
      "/O=cluster.local/CN=Root CA",
      "-days",
      "30",
      "-out",
      f("root-cert.pem"),
    );
    await openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f("ca-key.pem")); // SEC1 "EC PRIVATE KEY"
    await openssl(
      "req",
      "-new",
      "-key",
      f("ca-key.pem"),
      "-subj",
      "/O=cluster.local/CN=Intermediate CA",
      "-out",
      f("int.csr"),
    );
    await openssl(
      "x509",
      "-req",
      "-in",
      f("int.csr"),
      "-CA",
      f("root-cert.pem"),
      "-CAkey",
      f("root-key.pem"),
      "-CAcreateserial",
      "-days",
      "20",
      "-extfile",
      f("int.ext"),
      "-out",
      f("ca-cert.pem"),
    );
    await Deno.writeTextFile(
      f("cert-chain.pem"),
      await Deno.readTextFile(f("ca-cert.pem")) + await Deno.readTextFile(f("root-cert.pem")),
    );
    const out = f("out");
    const issue = await skiff(
      "ca",
      "issue",
      "--dir",
      dir,
      "--identity",
      "spiffe://cluster.local/ns/default/sa/web",
      "--out",
      out,
      "--ttl",
      "1h",
    );
    assert.equal(issue.code, 0, issue.stderr);
    const chain = await Deno.readTextFile(join(out, "cert-chain.pem"));
    assert.equal([...chain.matchAll(/BEGIN CERTIFICATE/g)].length, 2, "leaf and intermediate");
    await Deno.writeTextFile(f("leaf.pem"), chain.slice(0, chain.indexOf("-----END CERTIFICATE-----") + 25));
    await Deno.writeTextFile(f("untrusted.pem"), chain.slice(chain.indexOf("-----END CERTIFICATE-----") + 25));
    // Without the intermediate the leaf does not verify; with it, it does.
    assert.notEqual((await run(["openssl", "verify", "-CAfile", join(out, "root-cert.pem"), f("leaf.pem")])).code, 0);
    assert.match(
      await openssl("verify", "-CAfile", join(out, "root-cert.pem"), "-untrusted", f("untrusted.pem"), f("leaf.pem")),
      /OK/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("skiff ca issue refuses bad requests with the flag or rule named", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-ca-cli-" });
  try {
    assert.equal((await skiff("ca", "init", "--dir", dir)).code, 0);
    const cases: { name: string; args: string[]; code: number; message: RegExp }[] = [
      {
        name: "identity in another trust domain",
        args: ["--identity", "spiffe://other.domain/ns/a/sa/b"],
        code: 2,
        message: /not in trust domain cluster\.local/,
      },
      {
        name: "malformed identity",
        args: ["--identity", "spiffe://cluster.local/ns/a"],
        code: 2,
        message: /--identity="spiffe:\/\/cluster\.local\/ns\/a"/,
      },
      {
        name: "TTL above 90 days",
        args: ["--identity", "spiffe://cluster.local/ns/a/sa/b", "--ttl", "91d"],
        code: 1,
        message: /above the maximum of 90 days/,
      },
      {
        name: "unparseable TTL",
        args: ["--identity", "spiffe://cluster.local/ns/a/sa/b", "--ttl", "soon"],
        code: 2,
        message: /flag --ttl="soon"/,
      },
      {
        name: "unknown flag",
        args: ["--identity", "spiffe://cluster.local/ns/a/sa/b", "--force"],
        code: 2,
        message: /unknown flag --force/,
      },
    ];
    for (const c of cases) {
      await t.step(c.name, async () => {
        const r = await skiff("ca", "issue", "--dir", dir, "--out", join(dir, "out"), ...c.args);
        assert.equal(r.code, c.code, r.stderr);
        assert.match(r.stderr, c.message);
      });
    }
    const missing = await skiff(
      "ca",
      "issue",
      "--dir",
      join(dir, "nope"),
      "--out",
      join(dir, "out"),
      "--identity",
      "spiffe://cluster.local/ns/a/sa/b",
    );
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /Cannot read CA file .*nope\/ca-cert\.pem/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
