#!/usr/bin/env bash
# Builds the Dynamo image offline: the Dockerfile's `prebuilt` target, with binaries
# already built on this host, on a Debian base made from apt's own mirror (no container
# registry is needed). The base is built once and kept as dynamo-base:bookworm.
#
#   scripts/docker-image.sh [BIN_DIR] [TAG]     (defaults: target/release dynamo:latest)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=${1:-target/release}
TAG=${2:-dynamo:latest}
BASE=${DYNAMO_BASE_IMAGE:-dynamo-base:bookworm}

for bin in dynamo dynamo-ring dynamo-storage dynamo-coordinator dynamo-operator; do
    if [[ ! -x "$BIN_DIR/$bin" ]]; then
        echo "docker-image: $BIN_DIR/$bin is missing: build the binaries first (cargo build --workspace --bins)" >&2
        exit 1
    fi
done

# The mirror apt is configured with (deb822 sources first, then the classic list).
apt_mirror() {
    local m
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z "$m" ]]; then
        m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    echo "$m"
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "docker-image: the base image $BASE is missing and debootstrap is not installed (apt-get install debootstrap)" >&2
        exit 1
    fi
    mirror=$(apt_mirror)
    if [[ -z "$mirror" ]]; then
        echo "docker-image: no Debian mirror found in apt's sources" >&2
        exit 1
    fi
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "docker-image: making $BASE from $mirror (a few minutes, once)"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

echo "docker-image: building $TAG from $BIN_DIR on $BASE"
docker build --quiet --target prebuilt \
    --build-arg BIN_DIR="$BIN_DIR" \
    --build-arg LAYOUT_IMAGE="$BASE" \
    --build-arg RUNTIME_IMAGE="$BASE" \
    --label io.dynamo.built-from=prebuilt \
    -t "$TAG" . >/dev/null
echo "docker-image: $TAG is ready"
