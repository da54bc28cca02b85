#!/usr/bin/env bash
# Installs everything chital needs on a Debian 12 machine (run as root): Debian packages, the
# Python virtual environment in .venv with every distribution installed editable, and the tools
# from requirements-dev.txt. Idempotent and quick when nothing changed.
#
#   scripts/bootstrap.sh          # host tools, venv
#   CHITAL_VM=1 scripts/bootstrap.sh   # also QEMU, a Debian kernel with headers, busybox (VM tests)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# PostgreSQL and Prometheus are real peers in the integration tests; docker-compose 1.29 validates
# docker-compose.yml (no Docker engine is needed for that).
# gcc, make and libc6-dev (static libc) build the agent's launcher.
apt_packages=(python3 python3-venv python3-dev gcc make libc6-dev git ca-certificates postgresql prometheus
    docker-compose)
if [ "${CHITAL_VM:-0}" = 1 ]; then
    # QEMU, a Debian kernel with its build tree, busybox for the initramfs, static libc for the
    # guest test helpers, pahole (dwarves) for BTF, sparse and linux-source (checkpatch.pl) for
    # scripts/kmod-check.sh; mmdebstrap and qemu-utils (qemu-img) for the guests that look like real
    # hosts (chital.devcluster.hostimage, hostvm).
    apt_packages+=(qemu-system-x86 qemu-utils linux-image-amd64 linux-headers-amd64 busybox-static dwarves
        mmdebstrap strace sparse libc6-dev file cpio kmod linux-source)
fi

missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing Debian packages (${missing[*]}); run as root or install them" >&2
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

# Reinstall only when a dependency declaration changed.
stamp=.venv/.chital-bootstrap
want=$(cat requirements-dev.txt ./*/pyproject.toml proto/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Python packages into .venv"
    editables=()
    for d in proto/python agent controller client devcluster; do
        [ -f "$d/pyproject.toml" ] && editables+=(-e "$d")
    done
    pip_log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -r requirements-dev.txt "${editables[@]}"; } >"$pip_log" 2>&1; then
        tail -n 40 "$pip_log" >&2
        echo "bootstrap: pip install failed (full log: $pip_log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
# The agent's process launcher (a small static C program; never committed).
log "building agent/launcher/chital-launch"
make -s -C agent/launcher
log "bootstrap complete"
