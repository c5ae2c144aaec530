#!/usr/bin/env bash
# Build graft's Bento and, unless BENTO_ONLY=1, its container image, through BentoML's own path:
# graft's wheel -> `graft register MODEL` -> `bentoml build` -> `bentoml containerize`.
# Prints the Bento tag (BENTO_ONLY=1) or the image's name last.
#
# Usage: deploy/container/image.sh cpu|gpu MODEL_DIR_OR_TAG
# Environment: PY (the venv's python; default .venv/bin/python),
#   CONTAINER_ENGINE (podman or docker; default: whichever runs), IMAGE (default localhost/graft:VARIANT).
set -euo pipefail
variant=${1:?usage: image.sh cpu|gpu MODEL}
model=${2:?usage: image.sh cpu|gpu MODEL}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
py=${PY:-.venv/bin/python}
dist=dist  # where the bentofiles' `python.wheels` look
case "$variant" in
    cpu) bentofile=bentofile.yaml ;;
    gpu) bentofile=bentofile.gpu.yaml ;;
    *) echo "image.sh: expected cpu or gpu, got $variant" >&2; exit 2 ;;
esac

# A reproducible wheel (fixed zip timestamps): unchanged sources give the same bytes, so the
# container build reuses its package-install layer.
rm -rf "$dist" && mkdir -p "$dist"
SOURCE_DATE_EPOCH=315532800 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dist" . >/dev/null
tag=$("$py" -m graft.cli register "$model" | tail -n 1)
printf 'models: "%s"\n' "$tag" > "$dist/bento-args.yaml"
bento=$("$py" -m bentoml build -f "$bentofile" --arg-file "$dist/bento-args.yaml" -o tag . | tail -n 1)
bento=${bento#__tag__:}
if [ "${BENTO_ONLY:-0}" = 1 ]; then
    echo "$bento"
    exit 0
fi

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
if [ "$engine" = podman ]; then
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
fi
"$here/base-image.sh" "$engine"
image=${IMAGE:-localhost/graft:$variant}
opts=()
# Builds that reach PyPI through a proxy with its own CA need the host's bundle; podman can mount
# it into RUN steps (docker build cannot, and docker hosts rarely need it).
if [ "$engine" = podman ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    opts+=(--opt "volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro")
fi
"$py" -m bentoml containerize "$bento" --backend "$engine" -t "$image" "${opts[@]}" >&2
echo "$image"
