#!/usr/bin/env bash
# Make sure the base image the bentofiles name (localhost/graft-base:3.11-bookworm) exists:
#   1. already there: nothing to do (delete it to rebuild);
#   2. a registry is reachable: pull python:3.11-slim-bookworm and tag it;
#   3. air-gapped (only Debian's and PyPI's mirrors reachable): debootstrap Debian bookworm (its
#      Python is 3.11) and import the tree. Debian's Python refuses pip installs into it (PEP 668)
#      and podman 4.3 ignores `--opt env=` in RUN steps, so the variables are baked into the image.
# Usage: base-image.sh podman|docker
set -euo pipefail
engine=${1:?usage: base-image.sh podman|docker}
name=localhost/graft-base:3.11-bookworm
upstream=${GRAFT_UPSTREAM_BASE:-docker.io/library/python:3.11-slim-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$engine" image exists "$name" 2>/dev/null || "$engine" image inspect "$name" >/dev/null 2>&1; then
    exit 0
fi
if "$engine" pull -q "$upstream" >/dev/null 2>&1; then
    "$engine" tag "$upstream" "$name"
    echo "base image: $upstream as $name" >&2
    exit 0
fi
echo "base image: no registry reachable; building $name from Debian's packages ($mirror)" >&2
root=$(mktemp -d /var/tmp/graft-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
# What a container never reads: package caches and lists, documentation, locales, man pages.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale
tar -C "$root" -c . | "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    - "$name" >/dev/null
echo "base image: $name built" >&2
