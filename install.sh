#!/usr/bin/env bash
# Installs Skiff on a Debian machine, as root. Safe to run again: each step checks before it acts.
#
#   bash install.sh                    system packages, Deno 2.9.6 (from npm), dependencies, /usr/local/bin/skiff
#                                      (linked as the CNI plugin /opt/cni/bin/skiff): what Skiff needs, no more
#   bash install.sh --systemd control  that, then the control plane's unit skiff-control.service, its settings
#                                      /etc/skiff/control.env and the user skiff
#   bash install.sh --systemd node     that, then a node's units skiff-cni-agent.service, skiff-ztunnel.service
#                                      and skiff-waypoint@.service, with /etc/skiff/node.env
#   bash install.sh --dev              the first, and the test and benchmark tools (haproxy, wrk, podman, ...):
#                                      for a developer's machine and CI (the README's test command), not a VM
#   bash install.sh --print-packages   the Debian packages it would install (with --dev: those too); no change
#   bash install.sh --print-launcher   the launcher it would write as /usr/local/bin/skiff where deno compile
#                                      cannot run (with the Deno on PATH); no change
#
# The units come from deploy/systemd/ (install-units.sh there does that part; docs/vm-install.md walks through
# a three-machine install). Settings files are written only when absent; systemctl is called only where
# systemd runs the machine, and its absence is never an error.
#
# /usr/local/bin/skiff is a `deno compile` binary where the compile runtime can be downloaded; where it
# cannot (these machines reach only the npm registry and Debian), it is a launcher that runs main.ts from
# /usr/local/lib/skiff with the pinned Deno, its own dependency cache and exactly the permissions the modes
# need, and each mode's V8 flags (mesh/v8_flags.ts). The last line printed says which.
set -euo pipefail
export RUST_BACKTRACE=0 DEBIAN_FRONTEND=noninteractive DENO_NO_UPDATE_CHECK=1

DENO_VERSION=2.9.6
# What Skiff needs on a machine, and nothing else (tests/install_test.ts holds this list; a tool only tests or
# benchmarks use goes in TEST_PACKAGES). iptables, iproute2: the in-pod rules and the probe SNAT. procps: sysctl,
# for the demo's nodes. ca-certificates: HTTPS to the npm registry, for Deno. containernetworking-plugins: the
# reference CNI plugins (bridge, host-local) skiff is chained after, which the demo uses. curl: the demo's client
# inside its pods.
PACKAGES=(iptables iproute2 procps ca-certificates containernetworking-plugins curl)
# With --dev, the test and benchmark tools too (the README's test command and .ci/run install them so).
# nghttp2-client, python3-h2: HTTP/2 interop tests. python3-grpcio: gRPC's C core, the waypoint's gRPC interop
# tests. openssl: the CA tests' checker. stunnel4: the mTLS baseline of the data-plane benchmark. wrk, haproxy: the
# load generator and the HTTP proxy baseline of the waypoint benchmark. systemd: systemd-analyze, which checks the
# unit files (on a VM, --systemd uses the systemctl already there: it calls it only where systemd is PID 1).
# podman, runc, busybox-static: the real container runtime, and the image made from busybox, of the podman test.
# dnsutils: dig, the real resolver client of the DNS proxy's test.
TEST_PACKAGES=(nghttp2-client python3-h2 python3-grpcio openssl stunnel4 wrk haproxy systemd podman runc
  busybox-static dnsutils)
CNI_BIN=/opt/cni/bin
LIB=/usr/local/lib/skiff
BIN=/usr/local/bin/skiff
PERMISSIONS=(--allow-read --allow-write --allow-net --allow-env --allow-sys --allow-run --allow-ffi)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# The launcher, for the library at $LIB and the Deno at $1. V8 reads its heap flags only when Deno starts, so
# the launcher picks each mode's flags (mesh/v8_flags.ts, read here through the Deno that runs it) by its first
# argument, the mode; the CNI plugin (no argument) and the other modes get V8's defaults.
launcher() {
  local deno=$1 table
  table=$("$deno" run --quiet --no-config "$SRC/mesh/v8_flags.ts" --all) || die "could not read mesh/v8_flags.ts"
  cat <<EOF
#!/bin/sh
# Skiff launcher, written by install.sh: deno compile could not fetch its runtime on this machine, so this
# runs $LIB/main.ts with the pinned Deno ($DENO_VERSION), offline, with the permissions the modes need.
export RUST_BACKTRACE=0 DENO_NO_UPDATE_CHECK=1 DENO_DIR="$LIB/deno-dir"
v8=""
case "\${1-}" in
$(printf '%s\n' "$table" | while read -r mode flags; do
  [ -z "$mode" ] || printf '  %s) v8="--v8-flags=%s" ;;\n' "$mode" "$flags"
done)
esac
exec "$deno" run --quiet --cached-only --frozen --no-prompt ${PERMISSIONS[*]} \${v8:+"\$v8"} --config "$LIB/deno.json" "$LIB/main.ts" "\$@"
EOF
}

role=""
dev=""
print=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --print-packages) print=1 ;;
    --print-launcher) print=launcher ;;
    --systemd) [ $# -ge 2 ] || die "--systemd needs a role: control or node"; role=$2; shift ;;
    --systemd=*) role=${1#--systemd=} ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown flag $1 (try --help)" ;;
  esac
  shift
done
case "$role" in
  "" | control | node) ;;
  *) die "--systemd: unknown role \"$role\" (control or node)" ;;
esac
[ -z "$dev" ] || PACKAGES+=("${TEST_PACKAGES[@]}")
# --print-packages: the Debian packages this run would install (when missing), one a line; nothing is changed.
# --print-launcher: the launcher step 4 writes where deno compile cannot run; nothing is changed.
if [ "$print" = launcher ]; then
  command -v deno >/dev/null || die "--print-launcher: no deno on PATH"
  launcher "$(command -v deno)"
  exit 0
fi
if [ -n "$print" ]; then printf '%s\n' "${PACKAGES[@]}"; exit 0; fi
[ "$(id -u)" -eq 0 ] || die "run as root: it installs system packages and /usr/local/bin/skiff"

# 1. System packages, only those missing.
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  # No other package's service starts on the way (Debian starts haproxy's, podman's socket, ... on install): Skiff
  # starts only its own units, and the tests start the tools they use themselves. A policy-rc.d answering 101 is
  # Debian's way to say so (invoke-rc.d(8)); one that is already there is the operator's and stays as it is.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# Written by Skiff'"'"'s install.sh for as long as it installs packages.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "apt-get could not install ${missing[*]}"
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi
# The in-pod rules need both families: without ip6tables the node agent refuses every enrolled pod (its IPv6 is
# dropped by ip6tables rules). Debian's iptables package provides both, through update-alternatives.
for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save nsenter; do
  command -v "$t" >/dev/null ||
    die "$t is not on PATH (Debian's iptables package provides it: update-alternatives --display ${t%%-*})"
done

# 2. Deno, pinned, from the npm registry (JSR and dl.deno.land are not reachable here).
deno_ok() { command -v deno >/dev/null && deno --version 2>/dev/null | head -n1 | grep -qx "deno $DENO_VERSION .*"; }
if ! deno_ok; then
  if ! command -v npm >/dev/null; then
    say "installing npm (to fetch Deno)"
    apt-get install -y -q --no-install-recommends nodejs npm >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends nodejs npm >/dev/null; }
  fi
  say "installing deno $DENO_VERSION from npm"
  npm install -g --no-fund --no-audit --loglevel=error "deno@$DENO_VERSION" >/dev/null
  hash -r
  deno_ok || die "deno $DENO_VERSION is not on PATH after npm install -g deno@$DENO_VERSION (npm prefix $(npm prefix -g))"
fi
DENO=$(command -v deno)

# 3. Dependencies for the checkout (tests and tasks run from here), exactly as deno.lock pins them.
(cd "$SRC" && deno install --frozen --quiet) || die "deno install --frozen failed: is deno.lock current?"

# 4. The skiff command.
# A compiled binary takes V8 flags only from its build (it ignores DENO_V8_FLAGS) and runs every mode with them,
# so it is built with none, as the deno.json compile task is: one mode's flags cost another (mesh/v8_flags.ts).
if (cd "$SRC" && timeout 120 deno compile "${PERMISSIONS[@]}" --quiet \
  --output "$SRC/dist/skiff" main.ts) >/dev/null 2>&1 &&
  "$SRC/dist/skiff" version >/dev/null 2>&1; then
  install -m 0755 "$SRC/dist/skiff" "$BIN"
  built="compiled binary (deno compile)"
else
  # A copy of the sources with its own dependency cache, so the launcher works offline and does not
  # depend on this checkout staying where it is.
  rm -rf "$LIB.new"
  mkdir -p "$LIB.new"
  (cd "$SRC" && cp -r main.ts deno.json deno.lock mesh certs "$LIB.new/")
  for d in control dataplane cni demo; do [ -d "$SRC/$d" ] && cp -r "$SRC/$d" "$LIB.new/"; done
  find "$LIB.new" -name '*_test.ts' -delete
  (cd "$LIB.new" && DENO_DIR="$LIB.new/deno-dir" deno install --frozen --quiet --entrypoint main.ts) ||
    die "could not cache dependencies into $LIB.new"
  # The cache records absolute paths; build it where it will live.
  rm -rf "$LIB.old"
  [ -d "$LIB" ] && mv "$LIB" "$LIB.old"
  mv "$LIB.new" "$LIB"
  (cd "$LIB" && DENO_DIR="$LIB/deno-dir" deno install --frozen --quiet --entrypoint main.ts) ||
    die "could not cache dependencies into $LIB"
  rm -rf "$LIB.old"
  launcher "$DENO" >"$BIN.tmp"
  chmod 0755 "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
  built="launcher running $LIB/main.ts with deno $DENO_VERSION (deno compile cannot download its runtime here)"
fi
"$BIN" version >/dev/null || die "$BIN does not run"
# 5. The CNI plugin is the same binary, where container runtimes look for plugins.
mkdir -p "$CNI_BIN"
[ "$(readlink "$CNI_BIN/skiff" 2>/dev/null)" = "$BIN" ] || ln -sfn "$BIN" "$CNI_BIN/skiff"
say "installed $BIN: $built"

# 6. With --systemd ROLE, the role's units and settings.
if [ -n "$role" ]; then bash "$SRC/deploy/systemd/install-units.sh" "$role"; fi
