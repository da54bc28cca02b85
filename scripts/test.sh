#!/usr/bin/env bash
# The README's test command: installs what is needed, then runs every check and every test.
# Exits non-zero on any failure (pytest's "no tests collected" included).
#
#   scripts/test.sh            # everything: lint, protos, host tests, kernel module tests in QEMU
#   CHITAL_SKIP_VM=1 scripts/test.sh   # everything but the QEMU guests (quick local loop)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n\033[1m==> %s (%ss)\033[0m\n' "$*" "$(( $(date +%s) - start ))"; }

vm=1
[ "${CHITAL_SKIP_VM:-0}" = 1 ] && vm=0
CHITAL_VM=$vm scripts/bootstrap.sh

step "lint"
make --no-print-directory lint
step "generated code is fresh"
make --no-print-directory check-protos

step "host tests: unit, integration, conformance against FakeDevice"
export GRPC_VERBOSITY=ERROR
# The controller's integration tests run on SQLite and on a throwaway PostgreSQL server: here a
# missing PostgreSQL is a failure, not a skip.
export CHITAL_REQUIRE_POSTGRES=1
# pytest exits 5 when it collects nothing: that is a failure here too (set -e).
.venv/bin/pytest -p no:cacheprovider --timeout=300

if [ $vm = 1 ]; then
    step "kernel module: build, and tests in QEMU guests"
    make --no-print-directory test-vm
else
    echo "CHITAL_SKIP_VM=1: the kernel module's guest tests were NOT run" >&2
fi
step "all checks passed"
