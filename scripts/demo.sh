#!/usr/bin/env bash
# The README's main command: installs what is needed, starts a local multi-host cluster (a
# controller and three hollow agents on loopback ports), and runs a scripted scenario through
# the `chital` CLI. Everything it starts is stopped at the end, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

export PATH="$PWD/.venv/bin:$PATH" GRPC_VERBOSITY=ERROR
work=$(mktemp -d -t chital-demo-XXXXXX)
fleet_pid=
cleanup() {
    if [ -n "$fleet_pid" ] && kill -0 "$fleet_pid" 2>/dev/null; then
        kill -TERM "$fleet_pid" && wait "$fleet_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }
show() { printf '\033[1m$'; printf ' %q' "$@"; printf '\033[0m\n'; "$@"; }

say "Starting a controller and 3 hollow agents (FakeDevice: processes are real but NOT sandboxed)"
python -m chital.devcluster.hollow --agents 3 --workdir "$work/fleet" --ready-file "$work/ready" &
fleet_pid=$!
for _ in $(seq 300); do
    [ -s "$work/ready" ] && break
    kill -0 "$fleet_pid" 2>/dev/null || { echo "demo: the fleet failed to start" >&2; exit 1; }
    sleep 0.1
done
[ -s "$work/ready" ] || { echo "demo: the fleet did not start in 30 s" >&2; exit 1; }
export CHITAL_CONTROLLER=$(cat "$work/ready")

say "The hosts the controller knows"
show chital hosts ls

say "Three containers, each running a process with environment variables"
for i in 1 2 3; do
    show chital run --name "demo-$i" --memory 64M --pids 32 -e GREETING=hello -e N="$i" -d -- \
        sh -c 'echo "$GREETING from container $N, pid $$"; echo "a warning" >&2; exit $N'
done

say "A process whose output and exit code the CLI waits for (exit code 7 is expected)"
set +e
show chital run --name demo-wait -e WHO=world -- sh -c 'echo "hello, $WHO"; exit 7'
rc=$?
set -e
echo "chital run exited with $rc"
[ "$rc" = 7 ] || { echo "demo: expected exit code 7, got $rc" >&2; exit 1; }

say "Where the containers landed (one host each, fewest containers first)"
show chital ls
hosts_used=$(chital ls -o json | python3 -c 'import json,sys; print(len({c["host_id"] for c in json.load(sys.stdin)}))')
echo "containers are spread over $hosts_used hosts"
[ "$hosts_used" -ge 3 ] || { echo "demo: expected containers on 3 hosts" >&2; exit 1; }

say "Processes and their exit codes"
for _ in $(seq 50); do
    running=$(chital ps -a -o json | python3 -c 'import json,sys; print(sum(p["state"] != "EXITED" for p in json.load(sys.stdin)))')
    [ "$running" = 0 ] && break
    sleep 0.1
done
show chital ps -a

say "The logs of the process in demo-2"
proc=$(chital ps demo-2 -a -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["uid"])')
show chital logs "$proc"

say "Stopping and removing every container"
for c in demo-1 demo-2 demo-3 demo-wait; do
    show chital stop "$c"
    show chital rm "$c"
done

say "End state"
show chital ls
show chital hosts ls
say "Demo complete: containers ran on $hosts_used hosts; every exit code was reported."
