#!/usr/bin/env bash
# Build the qsm_bids container image with podman (no Docker engine, no Docker Hub) and check
# it: `qsm-bids --version` and `qsm-bids demo` inside the container, as the image's
# non-root user, with the image mounted read-only and the output on a tmpfs.
#
# The base image is built locally from Debian with debootstrap (python3 + venv included) and
# passed to the Dockerfile as BASE; the rootfs tarball and podman's storage are cached under
# $QSM_BIDS_CONTAINER_CACHE (default /var/tmp/qsm_bids_container). Needs root (apt-get,
# debootstrap). Exits non-zero on any failure.
#
# Environment:
#   QSM_BIDS_CONTAINER_CACHE  cache folder (default /var/tmp/qsm_bids_container)
#   QSM_BIDS_IMAGE            image name (default localhost/qsm_bids:<version>)
#   DEBIAN_MIRROR             mirror for debootstrap (default: from /etc/apt, else deb.debian.org)
#   HOST_CA                   CA bundle handed to pip in the build (default
#                             /etc/ssl/certs/ca-certificates.crt; empty: none)
#   DEMO_ARGS                 extra arguments of `qsm-bids demo` (default none)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${QSM_BIDS_CONTAINER_CACHE:-/var/tmp/qsm_bids_container}
SUITE=bookworm
BASE_IMAGE=localhost/qsm_bids-base:${SUITE}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
IMAGE=${QSM_BIDS_IMAGE:-localhost/qsm_bids:${VERSION}}
HOST_CA=${HOST_CA-/etc/ssl/certs/ca-certificates.crt}

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'container_check: FAILED: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || echo "container_check: FAILED (exit $rc)" >&2' EXIT

# --- tools ---------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

# --- podman configuration: runc, explicit ulimits, own storage (see HPC_NOTES) ----------
mkdir -p "$CACHE/storage" "$CACHE/run"
cat >"$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf"

# --- base image: Debian minbase + python3 (cached) -----------------------------------
ROOTFS_TAR="$CACHE/debian-${SUITE}-python3.tar"
if [ ! -s "$ROOTFS_TAR" ]; then
    if [ -z "${DEBIAN_MIRROR:-}" ]; then
        # first non-security Debian URI of an active (uncommented) apt source
        DEBIAN_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
            /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -E '^[[:space:]]*(URIs:|deb )' | grep -oE 'https?://[^ ]*/debian/?' \
            | grep -v security | head -n1 || true)
        DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    fi
    say "debootstrap $SUITE from $DEBIAN_MIRROR"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    t0=$(date +%s)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$ROOTFS_TAR.part" .
    mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$rootfs"
    echo "rootfs in $(($(date +%s) - t0)) s: $ROOTFS_TAR"
fi
if ! podman image exists "$BASE_IMAGE"; then
    say "importing $BASE_IMAGE"
    podman import "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
fi

# --- build -----------------------------------------------------------------------------
say "building $IMAGE (BASE=$BASE_IMAGE)"
build_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "VERSION=$VERSION")
if [ -n "$HOST_CA" ] && [ -s "$HOST_CA" ]; then
    build_args+=(-v "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
t0=$(date +%s)
podman build --pull=never -f "$REPO/Dockerfile" -t "$IMAGE" "${build_args[@]}" "$REPO"
build_s=$(($(date +%s) - t0))

# --- checks ----------------------------------------------------------------------------
# Read-only image, non-root user from the image, no network, output on a tmpfs.
run=(podman run --rm --read-only --network=none --tmpfs /tmp:rw,mode=1777,size=2g)

say "image"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || die "image runs as '$user'"
podman image inspect --format '{{range $k, $v := .Labels}}{{$k}}={{$v}}{{println}}{{end}}' \
    "$IMAGE" | grep '^org.opencontainers' || true
echo "user: $("${run[@]}" --entrypoint id "$IMAGE" -un)"
if "${run[@]}" --entrypoint sh "$IMAGE" -c 'command -v gcc cc make' >/dev/null 2>&1; then
    die "a compiler is present in the final image"
fi

say "qsm-bids --version"
got=$("${run[@]}" "$IMAGE" --version)
echo "$got"
case "$got" in *"$VERSION"*) ;; *) die "--version printed '$got', expected $VERSION" ;; esac

say "built-in recipes"
"${run[@]}" --entrypoint python "$IMAGE" \
    -c "from qsm_bids.recipe import builtin_recipes as b; r = b(); print(r); assert 'default' in r"

say "qsm-bids demo /tmp/demo_out ${DEMO_ARGS:-}"
t0=$(date +%s)
# shellcheck disable=SC2086  # DEMO_ARGS is split on purpose
set +e
"${run[@]}" "$IMAGE" demo /tmp/demo_out ${DEMO_ARGS:-} 2>&1 | tee "$CACHE/demo.log"
demo_rc=${PIPESTATUS[0]}
set -e
demo_s=$(($(date +%s) - t0))
[ "$demo_rc" -eq 0 ] || die "demo exited with $demo_rc"
grep -q "NRMSE against the phantom's truth" "$CACHE/demo.log" || die "demo printed no summary"

say "summary"
echo "image:      $IMAGE"
echo "size:       $(podman image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "build time: ${build_s} s"
echo "demo time:  ${demo_s} s"
sed -n "/^NRMSE against/,\$p" "$CACHE/demo.log"
echo "container_check: OK"
