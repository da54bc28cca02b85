#!/usr/bin/env bash
# The README's main command: installs what is needed, starts a local multi-host cluster and runs a
# scripted scenario through the `chital` CLI. Everything it starts is stopped at the end, by pid.
# The cluster is secured as a deployment is: its own PKI, mutual TLS between the controller and the
# agents, TLS and an admin token for the CLI (read from the cluster's config file, CHITAL_CONFIG).
#
#   scripts/demo.sh                       # 2 bare QEMU hosts (systemd, sshd): the controller rolls
#                                         # the module and the agent out with Ansible, then the
#                                         # scenario, then a rolling upgrade of one host (~10 min)
#   CHITAL_DEMO_DKMS=1 scripts/demo.sh    # the module built by DKMS in each host (slower under
#                                         # emulation) rather than once here
#   CHITAL_DEMO=qemu scripts/demo.sh      # 2 QEMU guests that run this checkout's agent and
#                                         # module directly, no Ansible (about 2 min)
#   CHITAL_DEMO=hollow scripts/demo.sh    # a controller and 3 hollow agents (no kernel module; fast)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${CHITAL_DEMO:-rollout}
demo_start=$(date +%s)  # the wall time printed with each step counts the bootstrap too
case "$mode" in
    qemu|rollout) CHITAL_VM=1 scripts/bootstrap.sh ;;
    hollow) scripts/bootstrap.sh ;;
    *) echo "demo: CHITAL_DEMO must be rollout (the default), qemu or hollow" >&2; exit 2 ;;
esac

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

say() { printf '\n\033[1;34m### %s\033[0m \033[2m(%ss)\033[0m\n' "$*" "$(( $(date +%s) - demo_start ))"; }
show() { printf '\033[1m$'; printf ' %q' "$@"; printf '\033[0m\n'; "$@"; }
fail() { echo "demo: $*" >&2; exit 1; }

kmod_vars=()
if [ "$mode" = rollout ]; then
    # What the playbooks install: the wheelhouse (the agent and every dependency) and the launcher.
    make --no-print-directory -s wheelhouse launcher
    if [ "${CHITAL_DEMO_DKMS:-0}" != 1 ]; then
        # The hosts run identical kernels: build chital.ko once, here, for theirs; the playbooks then
        # install that file instead of a DKMS build in each (CHITAL_DEMO_DKMS=1 for DKMS).
        say "Building chital.ko once for the hosts' kernel (they all run the same one)"
        python -m chital.devcluster.release --prebuilt "$work/prebuilt"
        kmod_vars=(-e "chital_kmod_prebuilt_dir=$work/prebuilt")
    fi
    say "Booting 2 bare Debian hosts in QEMU (systemd, sshd; nothing of chital) and a controller on this host"
    echo "(the first run also builds the hosts' disk image with mmdebstrap: a few minutes, then cached)"
    python -m chital.devcluster.ssh_fleet --guests 2 --workdir "$work/fleet" --ready-file "$work/ready" \
        --busybox-root &
    root_args=(--root /srv/chital/roots/busybox)
    hosts_wanted=2
elif [ "$mode" = qemu ]; then
    say "Booting 2 QEMU guests with chital.ko and an agent each, and a controller on this host (~1 min)"
    python -m chital.devcluster.qemu_fleet --guests 2 --workdir "$work/fleet" --ready-file "$work/ready" &
    root_args=(--root /tmp/roots/busybox)
    hosts_wanted=2
else
    say "Starting a controller and 3 hollow agents (no kernel module: processes are NOT sandboxed)"
    python -m chital.devcluster.hollow --agents 3 --workdir "$work/fleet" --ready-file "$work/ready" &
    root_args=()
    hosts_wanted=3
fi
fleet_pid=$!
for _ in $(seq 18000); do
    [ -s "$work/ready" ] && break
    kill -0 "$fleet_pid" 2>/dev/null || fail "the cluster failed to start"
    sleep 0.1
done
[ -s "$work/ready" ] || fail "the cluster did not start in 30 minutes"
# The cluster's client config: a context with its controller, its CA and an admin token (mode 0600).
export CHITAL_CONFIG="$work/fleet/client/config.toml"

# An agent host's address (HOST:PORT, as the controller dials it) from the fleet's inventory.
agent_address() {
    python3 -c 'import json,sys; h=json.load(open(sys.argv[1]))["all"]["children"]["chital_agents"]["hosts"][sys.argv[2]]; print("%s:%s" % (h["chital_agent_address"], h["chital_agent_port"]))' \
        "$work/fleet/inventory.yml" "$1"
}

if [ "$mode" = rollout ]; then
    say "Rolling chital out to the 2 hosts through the controller's RolloutService (site.yml over SSH)"
    echo "Per host: chital.ko is installed for the running kernel (built by DKMS with CHITAL_DEMO_DKMS=1)"
    echo "and loaded; the agent is installed from the wheelhouse into a venv and runs under systemd;"
    echo "the controller registers the host once it is healthy. Most of the time is Ansible's cost per"
    echo "task in hosts under software emulation."
    show chital rollout start site.yml -i "$work/fleet/inventory.yml" --register-hosts "${kmod_vars[@]}" \
        || fail "the rollout of site.yml did not succeed"
fi

say "Who the CLI is: the cluster's bootstrap admin token, over TLS checked against the cluster's CA"
show chital whoami
say "A made-up token is refused by the controller (exit code 1 is expected)"
set +e
show chital --token chital_000000000000_this-token-was-never-issued-by-this-cluster hosts ls
rc=$?
set -e
[ "$rc" = 1 ] || fail "expected the controller to refuse an unknown token (exit 1), got $rc"

say "The hosts the controller knows"
show chital hosts ls

say "One container per host, each running a shell pipeline with environment variables"
for i in $(seq "$hosts_wanted"); do
    show chital run --name "demo-$i" "${root_args[@]}" --memory 64M --pids 32 -e GREETING=hello -e N="$i" -d -- \
        sh -c 'echo "$GREETING from container $N" | tr a-z A-Z; echo "a warning" >&2; exit $N'
done

say "A process whose output and exit code the CLI waits for (exit code 7 is expected)"
set +e
show chital run --name demo-wait "${root_args[@]}" -e WHO=world -- sh -c 'echo "hello, $WHO"; exit 7'
rc=$?
set -e
echo "chital run exited with $rc"
[ "$rc" = 7 ] || fail "expected exit code 7, got $rc"

say "Where the containers landed (the ready host with the fewest containers first)"
show chital ls
hosts_used=$(chital ls -o json | python3 -c 'import json,sys; print(len({c["host_id"] for c in json.load(sys.stdin)}))')
echo "containers are spread over $hosts_used hosts"
[ "$hosts_used" -ge "$hosts_wanted" ] || fail "expected containers on $hosts_wanted hosts"

say "Processes and their exit codes"
for _ in $(seq 300); do
    running=$(chital ps -a -o json | python3 -c 'import json,sys; print(sum(p["state"] != "EXITED" for p in json.load(sys.stdin)))')
    [ "$running" = 0 ] && break
    sleep 0.1
done
show chital ps -a

say "The logs of the process in demo-2"
proc=$(chital ps demo-2 -a -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["uid"])')
show chital logs "$proc"

if [ "$mode" != hollow ]; then
    say "An escape attempt from inside a container: the kernel module refuses it"
    set +e
    show chital exec demo-1 -- sh -c 'chroot / /bin/sh -c "echo escaped"; mount -t proc proc /mnt; cat /../../etc/hostname'
    rc=$?
    set -e
    echo "chital exec exited with $rc (non-zero: every attempt was refused)"
    [ "$rc" != 0 ] || fail "an escape attempt was not refused"

    say "Per-container system call counts, from the kernel module"
    show chital stats demo-1 --top 12
fi

if [ "$mode" = rollout ]; then
    say "A rolling upgrade: host1 goes to the next release while a container keeps running on host0"
    if [ ${#kmod_vars[@]} -gt 0 ]; then
        show python -m chital.devcluster.release --out "$work/release" --prebuilt "$work/prebuilt-next"
        kmod_vars=(-e "chital_kmod_prebuilt_dir=$work/prebuilt-next")
    else
        show python -m chital.devcluster.release --out "$work/release"
    fi
    release=$(cat "$work/release/chital/VERSION")
    show chital run --name kept "${root_args[@]}" --host "$(agent_address host0)" -d -- sleep 100000
    show chital run --name drained "${root_args[@]}" --host "$(agent_address host1)" -d -- sleep 100000
    echo "upgrade.yml on host1: cordon, drain (its containers are stopped), stop the agent, install and"
    echo "load module $release, start the new agent, check that the controller sees the new versions, uncordon"
    show chital rollout start upgrade.yml -i "$work/fleet/inventory-host1.yml" "${kmod_vars[@]}" \
        -e chital_source_dir="$work/release/chital" -e chital_upgrade_drain_grace=2 \
        || fail "the rolling upgrade did not succeed"
    show chital hosts ls -o wide
    show chital ls
    running=$(chital ps kept -o json | python3 -c 'import json,sys; print(sum(p["state"] == "RUNNING" for p in json.load(sys.stdin)))')
    [ "$running" = 1 ] || fail "the process in the container on host0 did not keep running"
    show chital ps kept
    echo "the container on host0 kept running through host1's upgrade"
    show chital rm -f kept drained
fi

say "Stopping and removing every container"
for c in $(seq "$hosts_wanted"); do
    show chital stop "demo-$c"
    show chital rm "demo-$c"
done
show chital stop demo-wait
show chital rm demo-wait

say "End state"
show chital ls
show chital hosts ls
say "Demo complete in $(( $(date +%s) - demo_start )) s: containers ran on $hosts_used hosts; every exit code was reported."
