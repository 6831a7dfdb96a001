#!/usr/bin/env bash
# Prepare this machine for tiergate's tests; safe to run again (reruns are fast).
#   - Debian packages: the engines and what the integration tests drive
#     (skipped when dpkg-query already shows every one installed);
#   - ./.venv made with the system interpreter /usr/bin/python3 (never a
#     version-manager shim), with tiergate installed editable plus its test extra.
# Run as root on Debian 12: bash integration/setup.sh. Exports nothing:
# later steps call .venv/bin/python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

PACKAGES=(
  podman runc crun nftables apparmor busybox-static docker.io
  libcap-dev python3-venv python3-dev python3-nftables libseccomp-dev
  gcc libc6-dev iproute2 git containernetworking-plugins
  # the Debian package (packaging/build-deb.sh, integration/test_deb.py): build tools, and the
  # Depends it takes from Debian, so installing and purging it leaves the package set as it was
  debhelper dh-python python3-all python3-setuptools python3-wheel python3-pip dpkg-dev fakeroot
  python3-prctl python3-pyroute2
  debootstrap openssl  # test_roles_software.py: the Debian image of nginx, postgres... and a test CA
  valgrind  # test_hook_cost.py: the hook's instruction count (callgrind), deterministic where time is not
  linux-perf  # bench/bench.py: which processes a parallel batch's CPU goes to (perf record -a)
)
PYTHON=/usr/bin/python3
VENV=.venv

# --- system packages ---------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  [ "$status" = installed ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  say "all ${#PACKAGES[@]} Debian packages already installed; skipping apt-get"
else
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}): run as root"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting docker/containerd services: a system
  # dockerd would change the host's firewall and bridges. Removed afterwards.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "apt-get update"
  apt-get -o DPkg::Lock::Timeout=300 update -q
  say "apt-get install -y ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 install -y -q "${missing[@]}"
  if [ -n "$made_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# --- virtualenv --------------------------------------------------------------
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3)"
if [ -x "$VENV/bin/python" ] && grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null \
    && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "$VENV exists (made with $PYTHON)"
else
  say "creating $VENV with $PYTHON"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml (or this script) changed, or the install broke.
stamp_file="$VENV/.tiergate-setup-stamp"
stamp="$(cat pyproject.toml integration/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null || true)" = "$stamp" ] \
    && "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("tiergate"); import pytest' 2>/dev/null; then
  say "tiergate and test dependencies already installed in $VENV"
else
  say "pip install wheel (python-prctl then builds a wheel, not a legacy install)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check wheel
  say "pip install -e '.[test]'"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  printf '%s\n' "$stamp" > "$stamp_file"
fi

# python3-nftables (libnftables bindings) is a Debian package, not on PyPI: make
# just that package importable from the isolated venv.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -d /usr/lib/python3/dist-packages/nftables ] && [ ! -e "$site/nftables" ]; then
  say "linking Debian's nftables bindings into $VENV"
  ln -s /usr/lib/python3/dist-packages/nftables "$site/nftables"
fi

say "ready: $("$VENV/bin/python" -V), $(podman --version 2>/dev/null || echo 'no podman'), $(runc --version 2>/dev/null | head -n1 || echo 'no runc'), $(/usr/bin/docker --version 2>/dev/null || echo 'no docker')"
