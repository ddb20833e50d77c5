#!/usr/bin/env bash
# Installs Skiff's systemd units and their environment files for one role, as root; `install.sh --systemd ROLE`
# runs it once /usr/local/bin/skiff is in place. Safe to run again: a unit is rewritten only when it changed,
# and an environment file is written only when absent, so an operator's settings are never overwritten.
#
#   install-units.sh control   skiff-control.service, /etc/skiff/control.env, /etc/skiff/manifests/, the user skiff
#   install-units.sh node      skiff-cni-agent.service, skiff-ztunnel.service, skiff-waypoint@.service,
#                              /etc/skiff/node.env, /etc/skiff/node/ (for the token and root-cert.pem)
#
# Where systemd runs the machine (PID 1), it then reloads, enables and starts the units (a node's once
# SKIFF_CONTROL and the token are in place); elsewhere (a container, an image build) it says what to run later.
# SKIFF_SYSTEMD_ROOT=DIR installs under DIR instead of / (DIR/etc/systemd/system, DIR/etc/skiff), creates no
# user and calls no systemctl: for machine images and tests.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${SKIFF_SYSTEMD_ROOT:-}
ROOT=${ROOT%/}
UNIT_DIR=$ROOT/etc/systemd/system
ETC=$ROOT/etc/skiff
BIN=/usr/local/bin/skiff

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

role=${1:-}
case "$role" in
  control) units=(skiff-control.service) env_files=(control.env) ;;
  node) units=(skiff-cni-agent.service skiff-ztunnel.service skiff-waypoint@.service) env_files=(node.env) ;;
  *) die "--systemd: give the role, control or node (got \"$role\")" ;;
esac
[ $# -le 1 ] || die "--systemd $role: unexpected argument $2"
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "run as root: it writes /etc/systemd/system and /etc/skiff"
[ -x "$BIN" ] || say "warning: $BIN is missing; the units run it (bash install.sh makes it)"

# 1. The units: ours, rewritten when they differ (operators change them with drop-ins: systemctl edit UNIT).
mkdir -p "$UNIT_DIR"
for u in "${units[@]}"; do
  if cmp -s "$HERE/$u" "$UNIT_DIR/$u"; then
    say "$UNIT_DIR/$u is current"
  else
    install -m 0644 "$HERE/$u" "$UNIT_DIR/$u.tmp"
    mv "$UNIT_DIR/$u.tmp" "$UNIT_DIR/$u"
    say "installed $UNIT_DIR/$u"
  fi
done

# 2. The environment files: the operator's once written. Mode 0600: systemd reads them as root.
mkdir -p "$ETC"
chmod 0755 "$ETC"
for f in "${env_files[@]}"; do
  if [ -e "$ETC/$f" ]; then
    say "kept $ETC/$f as it is (never overwritten)"
  else
    install -m 0600 "$HERE/$f" "$ETC/$f"
    say "wrote $ETC/$f (defaults, with comments)"
  fi
done
if [ "$role" = control ]; then
  mkdir -p "$ETC/manifests"
else
  # The token and the control plane's root, copied from the control plane: root's alone.
  mkdir -p "$ETC/node"
  chmod 0700 "$ETC/node"
fi

# 3. The control plane's user; systemd makes /var/lib/skiff and gives it to this user at each start
#    (StateDirectory=), also when an earlier `skiff control` run as root made the directory.
if [ "$role" = control ] && [ -z "$ROOT" ] && ! getent passwd skiff >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/skiff --no-create-home --shell /usr/sbin/nologin \
    --comment "Skiff control plane" skiff || die "useradd could not create the system user skiff"
  say "created the system user skiff"
fi

# 4. systemd: only where it runs the machine. Never an error when it does not.
case "$role" in
  control) start=(skiff-control.service) ;;
  node) start=(skiff-cni-agent.service skiff-ztunnel.service) ;;
esac
if [ -n "$ROOT" ]; then
  say "units staged under $ROOT: no user created, systemctl not called"
  exit 0
fi
configure=""
[ "$role" = node ] && configure="set SKIFF_CONTROL in $ETC/node.env, copy the token and root-cert.pem to $ETC/node/, "
if [ ! -d /run/systemd/system ]; then
  say "systemd is not running here (it is not PID 1): units installed in $UNIT_DIR; where systemd runs," \
    "${configure}then: systemctl daemon-reload && systemctl enable --now ${start[*]}"
  exit 0
fi
systemctl daemon-reload || say "systemctl daemon-reload failed; run it yourself"
systemctl enable "${start[@]}" >/dev/null 2>&1 || say "systemctl enable ${start[*]} failed; run it yourself"
if [ "$role" = node ]; then
  control=$(sed -n 's/^[[:space:]]*SKIFF_CONTROL=//p' "$ETC/node.env" | tail -n1 | tr -d "\"'[:space:]")
  token=$(sed -n 's/^[[:space:]]*SKIFF_TOKEN_FILE=//p' "$ETC/node.env" | tail -n1 | tr -d "\"'[:space:]")
  token=${token:-/etc/skiff/node/token}
  if [ -z "$control" ] || [ ! -s "$token" ]; then
    say "enabled, not started: set SKIFF_CONTROL in $ETC/node.env and copy the node's token and root-cert.pem" \
      "to $(dirname "$token")/, then: systemctl start ${start[*]}"
    exit 0
  fi
fi
# Units already running keep running (a new binary or unit takes effect at: systemctl restart UNIT; ztunnel's at
# systemctl reload skiff-ztunnel, which loses no connection: docs/vm-install.md).
if systemctl start "${start[@]}"; then
  say "enabled and started ${start[*]} (systemctl status ${start[*]})"
else
  say "systemctl start ${start[*]} failed: see journalctl -u ${start[0]}"
fi
