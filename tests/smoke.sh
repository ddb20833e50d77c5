#!/usr/bin/env bash
# Skiff's main job until the demo cluster exists: a real smoke of what is built, as root after install.sh.
#  1. the CA: create a root, issue a workload certificate, have openssl verify it (tests/smoke_ca.sh);
#  2. the data plane: two nodes and two enrolled pods in network namespaces, a ztunnel per node, a call over
#     HBONE with both identities from the access logs, then a DENY policy (tests/smoke_ztunnel.ts).
# Both remove everything they made.
set -euo pipefail
export RUST_BACKTRACE=0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
echo "== certificate authority"
bash "$here/smoke_ca.sh"
echo
echo "== data plane: ztunnel and HBONE between two nodes"
deno run --allow-all "$here/smoke_ztunnel.ts"
