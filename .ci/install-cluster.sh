#!/usr/bin/env bash
# Install the Debian packages of the single-node test cluster (tests/cluster/slurm-cluster.sh):
# SLURM 22.05 (slurmctld, slurmd, client commands), munge (authentication), slurmdbd and
# MariaDB (accounting, so that `sacct` works and the executor plugin runs with its defaults).
#
# Non-interactive and idempotent: when every package is already installed it returns in
# well under a second without touching apt.  Nothing is started here (no systemd on the
# development machines and CI): `tests/cluster/slurm-cluster.sh up` starts the daemons.
set -euo pipefail

packages=(slurm-wlm slurm-client slurmdbd munge mariadb-server)

missing=()
for p in "${packages[@]}"; do
    # `dpkg-query` prints "install ok installed" for a fully installed package.
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-cluster: all packages present (${packages[*]})"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-cluster: missing packages ${missing[*]}; run as root (or with sudo)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's maintainer scripts try to start services; with no init system they fail or
# start daemons we do not want.  policy-rc.d exit 101 = "action not allowed", which
# invoke-rc.d honours; it is removed again afterwards if we created it.
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

echo "install-cluster: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-cluster: done"
