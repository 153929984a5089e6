#!/usr/bin/env bash
# Builds the proxyv2 image on this machine with no Docker engine and no registry (as root):
#   1. debootstrap a Debian bookworm minbase from the machine's own apt mirror and slim it the way
#      the official debian:bookworm-slim is slimmed (docs, man pages, locales, apt lists removed);
#   2. import that root filesystem as a local base image (buildah from scratch + add + commit);
#   3. buildah bud --isolation chroot -f docker/Dockerfile.proxyv2 --build-arg BASE=<that base>.
# Each step is cached: the rootfs and the base image are reused while they exist, and
# `buildah bud --layers` reuses the apt and dependency layers, so a re-run after a code change
# only reinstalls the agent itself.
#
# Environment:
#   IMAGE        name of the built image            (default localhost/agent-proxyv2:latest)
#   BASE_IMAGE   name of the imported base image    (default localhost/agent-base:bookworm-slim)
#   CACHE_DIR    where the debootstrapped rootfs is kept  (default /var/cache/agent-image)
#   MIRROR       Debian mirror for debootstrap     (default: the first URI of this machine's apt sources)
#   REBUILD_BASE=1  throw away the cached rootfs and base image first
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/agent-proxyv2:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/agent-base:bookworm-slim}
CACHE_DIR=${CACHE_DIR:-/var/cache/agent-image}
SUITE=bookworm
ROOTFS="$CACHE_DIR/rootfs-$SUITE"

log() { printf '%s build-local: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "build-local.sh: run as root (debootstrap and buildah need it)" >&2; exit 1; }
# A fresh Debian CI machine may lack the tools: install them from apt (the same mirror).
missing=()
for tool in debootstrap buildah; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The mirror this machine's apt already uses (deb822 or one-line format), so debootstrap works
# wherever apt does, including behind a local mirror.
host_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                          | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${MIRROR:-$(host_mirror)}

if [ "${REBUILD_BASE:-0}" = 1 ]; then
  rm -rf "$ROOTFS"
  buildah rmi "$BASE_IMAGE" >/dev/null 2>&1 || true
fi

start=$(date +%s)

# --- 1. the root filesystem --------------------------------------------------------------------
slim_rootfs() {
  local root=$1
  # What debian:*-slim does (debuerreotype-slimify): never install docs, man pages or locales,
  # keeping only the copyright files, and apply the same rule to what is already installed.
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,lintian,locale,man}/* \
         "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
         "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/*
  # The same apt sources as the public image: the release, its updates and security.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # The official image's apt settings (debuerreotype): downloaded .debs and pkgcache deleted after
  # every install, no translations, compressed indexes, no auto-kept Suggests.
  mkdir -p "$root/etc/apt/apt.conf.d"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # Like the public image: no hostname baked in, an empty resolv.conf (the runtime provides both).
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
}

# Bump when slim_rootfs changes: a cached rootfs is re-slimmed (it is idempotent) and re-imported.
RECIPE=2
if [ -f "$ROOTFS/.complete" ] && [ "$(cat "$ROOTFS/.complete")" != "$RECIPE" ]; then
  log "re-slimming $ROOTFS (recipe $RECIPE)"
  slim_rootfs "$ROOTFS"
  echo "$RECIPE" >"$ROOTFS/.complete"
  buildah rmi "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if [ ! -f "$ROOTFS/.complete" ]; then
  log "debootstrap $SUITE (minbase) from $MIRROR into $ROOTFS"
  rm -rf "$ROOTFS.tmp"
  mkdir -p "$CACHE_DIR"
  debootstrap --variant=minbase "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
  slim_rootfs "$ROOTFS.tmp"
  echo "$RECIPE" >"$ROOTFS.tmp/.complete"
  rm -rf "$ROOTFS"
  mv "$ROOTFS.tmp" "$ROOTFS"
else
  log "reusing rootfs $ROOTFS"
fi

# --- 2. the base image -------------------------------------------------------------------------
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "importing $ROOTFS as $BASE_IMAGE"
  tarball="$CACHE_DIR/rootfs-$SUITE.tar"
  # --numeric-owner: ownership must not be remapped through the host's user names.
  tar --numeric-owner --exclude=./.complete -C "$ROOTFS" -cf "$tarball" .
  ctr=$(buildah from scratch)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah add "$ctr" "$tarball" / >/dev/null   # a local tar archive is extracted, like ADD
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --os linux --arch amd64 \
    --label org.opencontainers.image.description="Debian $SUITE minbase, slimmed like debian:$SUITE-slim" \
    "$ctr"
  buildah commit --rm "$ctr" "$BASE_IMAGE" >/dev/null
  trap - EXIT
  rm -f "$tarball"
else
  log "reusing base image $BASE_IMAGE"
fi

# --- 3. the image ------------------------------------------------------------------------------
# pip inside the build must reach the package index this machine uses. Pass through http(s)
# indexes from the environment or pip's configuration; file:// indexes do not exist in the build.
# pip's own view of its configuration (any pip will do: PATH, the dev venv, python3 -m pip).
pip_config() {
  local pip
  for pip in pip pip3 /opt/agent/bin/pip; do
    command -v "$pip" >/dev/null 2>&1 && { "$pip" config get "global.$1" 2>/dev/null || true; return; }
  done
  python3 -m pip config get "global.$1" 2>/dev/null || true
}
pip_setting() {
  local env=$1 key=$2 value=${!1:-}
  [ -n "$value" ] || value=$(pip_config "$key")
  tr ' ' '\n' <<<"$value" | grep -E '^https?://' | paste -sd' ' - || true
}
build_args=(--build-arg "BASE=$BASE_IMAGE")
index=$(pip_setting PIP_INDEX_URL index-url)
extra=$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url)
trusted=${PIP_TRUSTED_HOST:-$(pip_config trusted-host)}
[ -z "$index" ] || build_args+=(--build-arg "PIP_INDEX_URL=$index")
[ -z "$extra" ] || build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
[ -z "$trusted" ] || build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
# The CA bundle pip trusts here goes in as a build secret (PIP_CERT, pip's `cert` setting, or the
# system bundle): behind a TLS-inspecting proxy the image's own CA store would not verify the index.
cert=${PIP_CERT:-$(pip_config cert)}
[ -s "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
[ ! -s "$cert" ] || build_args+=(--secret "id=pip_cert,src=$cert")

log "buildah bud -> $IMAGE"
# --isolation chroot: no OCI runtime or network namespace setup needed for RUN steps; they use the
# host's network (and its resolver) to reach apt and pip. --layers: cache every step. --force-rm: no
# working containers left behind when a step fails.
buildah bud --isolation chroot --layers --force-rm --pull-never \
  --ignorefile docker/Dockerfile.proxyv2.dockerignore \
  "${build_args[@]}" -f docker/Dockerfile.proxyv2 -t "$IMAGE" .

# No `buildah rmi --prune` here: the build stage's cached layers are untagged ("dangling") and
# pruning them would throw away the layer cache. Reclaim space with `buildah rmi --prune` by hand.

size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n1)
log "built $IMAGE in $(( $(date +%s) - start ))s, size $size"
echo "$IMAGE $size"
