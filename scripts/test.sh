#!/usr/bin/env bash
# The README's test command: installs what is needed, then runs every check and every test.
# Exits non-zero on any failure (pytest's "no tests collected" included).
#
#   scripts/test.sh            # everything: lint, protos, host tests, kernel module tests in QEMU
#   CHITAL_SKIP_VM=1 scripts/test.sh   # everything but the QEMU guests (quick local loop)
#   CHITAL_SKIP_ROLLOUT=1 scripts/test.sh     # everything but the playbooks over SSH into two
#                                      # systemd guests (make test-rollout; about 15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n\033[1m==> %s (%ss)\033[0m\n' "$*" "$(( $(date +%s) - start ))"; }

vm=1
[ "${CHITAL_SKIP_VM:-0}" = 1 ] && vm=0
# The rollout guest suite runs in its own step below, never inside the host tests' pytest run.
rollout=1
[ "${CHITAL_SKIP_ROLLOUT:-0}" = 1 ] && rollout=0
unset CHITAL_ROLLOUT_GUESTS
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
# The rollout guest suite is its own step below (--ignore: not collected here, not skipped).
.venv/bin/pytest -p no:cacheprovider --timeout=300 --ignore=tests/integration/test_rollout_guests.py

if [ $vm = 1 ]; then
    step "kernel module: build, and tests in QEMU guests"
    make --no-print-directory test-vm
else
    echo "CHITAL_SKIP_VM=1: the kernel module's guest tests were NOT run" >&2
fi

# The rollout guest suite: site.yml over SSH into two bare systemd guests (DKMS), a second
# idempotent run, upgrade.yml N -> N+1 of one host while a container runs on the other, and a
# failing DKMS build through the controller's RolloutService.
if [ $vm = 1 ] && [ $rollout = 1 ]; then
    step "rollout: the playbooks over SSH into two systemd guests"
    CHITAL_ROLLOUT_GUESTS=1 .venv/bin/pytest -p no:cacheprovider -s tests/integration/test_rollout_guests.py
else
    echo "the rollout guest suite was NOT run (CHITAL_SKIP_VM=1 or CHITAL_SKIP_ROLLOUT=1)" >&2
fi
step "all checks passed"
