#!/usr/bin/env bash
# Install the Debian packages of a single-node SLURM cluster (controller, node daemon, client tools, munge)
# for `pytest -m slurm` (tests/slurm_cluster.py starts the daemons by hand; nothing is enabled as a service).
# Idempotent: does nothing when the binaries are already present. Needs root (CI containers run as root).
set -euo pipefail

needed=(slurmctld slurmd sbatch squeue sinfo scontrol munged)
missing=()
for bin in "${needed[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_slurm: SLURM and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: missing ${missing[*]} and not root; cannot install (the slurm tests will skip)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian 12: SLURM 22.05. No systemd here: the postinst scripts may fail to start services; that is expected.
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "install_slurm: installed $(dpkg-query -W -f='${Package} ${Version}' slurmctld)"
