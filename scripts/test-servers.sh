#!/usr/bin/env bash
# The system programs that the tests start for real, and their installation.
#
#   scripts/test-servers.sh          install what is missing (apt-get, as root or via sudo -n),
#                                    then stop any service the package manager started
#   scripts/test-servers.sh --check  only report what is missing (exit 1 if anything is)
#
# The tests start their own instances on loopback or in network namespaces they create:
# redis-server for the Redis store, sshd inside namespaces standing for Raspberry Pis, and
# slurmctld/slurmd/munged for a one-node Slurm cluster, and headless chromium loads the page of
# parsl-visualize over a run's monitoring database. Nothing is skipped when a program is
# missing: this script installs it or stops `make test` with the command that would.
set -euo pipefail

# program  Debian package  (one line each; this list is the only one)
PROGRAMS="
redis-server redis-server
sshd openssh-server
ssh openssh-client
ip iproute2
tc iproute2
slurmctld slurm-wlm
slurmd slurm-wlm
munged munge
chromium chromium
"
# Services that Debian's packages may start on install; the tests run their own.
SERVICES="redis-server ssh slurmctld slurmd munge"

# sshd, slurmd and friends live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing_programs=()
missing_packages=()
while read -r program package; do
    [[ -z "$program" ]] && continue
    if ! command -v "$program" >/dev/null 2>&1; then
        missing_programs+=("$program")
        [[ " ${missing_packages[*]:-} " == *" $package "* ]] || missing_packages+=("$package")
    fi
done <<<"$PROGRAMS"

((${#missing_programs[@]})) || exit 0

install_command="apt-get update && apt-get install -y --no-install-recommends ${missing_packages[*]}"
fail() {  # one line: what is missing, why, and the command that installs it
    echo "make test: ${missing_programs[*]} missing (the tests start them); $1" >&2
    exit 1
}

[[ "${1:-}" == "--check" ]] && fail "install them as root: $install_command"

if ! command -v apt-get >/dev/null 2>&1; then
    fail "not a Debian-like system: install them with its package manager (on Debian: $install_command)"
fi
if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "not root and no password-less sudo: run as root: $install_command"
fi

echo "make test: installing ${missing_packages[*]} (for ${missing_programs[*]}, which the tests start)" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >/dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >/dev/null
for service in $SERVICES; do
    "${as_root[@]}" systemctl stop "$service" >/dev/null 2>&1 \
        || "${as_root[@]}" service "$service" stop >/dev/null 2>&1 || true
done
# A package's post-install may start a daemon even without an init system.
for daemon in redis-server slurmctld slurmd munged; do
    "${as_root[@]}" pkill -x "$daemon" >/dev/null 2>&1 || true
done

still_missing=()
for program in "${missing_programs[@]}"; do
    command -v "$program" >/dev/null 2>&1 || still_missing+=("$program")
done
if ((${#still_missing[@]})); then
    missing_programs=("${still_missing[@]}")
    fail "still missing after installing: $install_command"
fi
