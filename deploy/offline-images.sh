#!/usr/bin/env bash
# Local stand-ins for the three images the stack is built from, for machines that reach no container registry
# (test infrastructure: the compose file a site runs names the official images).
#   deploy/offline-images.sh [--rebuild]      then, in the same shell:  eval "$(deploy/offline-images.sh)"
# Builds, from Debian's packages only (debootstrap and apt, which these machines do reach):
#   - a Python 3.11 base (debootstrap --variant=minbase bookworm, docker import), standing in for
#     python:3.11-slim-bookworm: python, pip and a venv on PATH, this machine's CA bundle so pip reaches its index;
#   - Redis (redis-server, port 6379, /data, protected mode off), standing in for redis:7-alpine;
#   - PostgreSQL 15 (POSTGRES_USER/PASSWORD/DB and their _FILE forms, PGDATA, /docker-entrypoint-initdb.d,
#     port 5432, pg_isready), standing in for postgres:15.
# An image that already exists is kept (dockerd keeps them in /var/lib/docker between runs); --rebuild makes all three.
# Prints PNEUMOSCAN_BASE_IMAGE=..., REDIS_IMAGE=... and POSTGRES_IMAGE=... on standard output; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tag=${PNEUMOSCAN_OFFLINE_TAG:-pneumoscan-offline}
base="$tag/python:3.11-slim-bookworm"
redis="$tag/redis:7"
postgres="$tag/postgres:15"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${PNEUMOSCAN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
rebuild=0
[[ ${1:-} == --rebuild ]] && rebuild=1

log() { echo "offline-images: $*" >&2; }
have() { ((rebuild == 0)) && docker image inspect "$1" >/dev/null 2>&1; }

if have "$base"; then
  log "$base exists"
else
  command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  root="$(mktemp -d /var/tmp/pneumoscan-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  log "debootstrap bookworm into $root (a few minutes)"
  nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
    >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  # The slim image's contract: python, python3 and pip on PATH, installing into a writable prefix.
  chroot "$root" /usr/bin/python3 -m venv /usr/local/python >&2
  # pip here reaches its index through a proxy whose CA this machine trusts; the stand-in carries that bundle.
  if [[ -s $ca_bundle ]]; then
    cp "$ca_bundle" "$root/etc/ssl/certs/pneumoscan-host-ca.crt"
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  printf '[global]\ncert = /etc/ssl/certs/pneumoscan-host-ca.crt\n' > "$root/etc/pip.conf"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$root/etc/apt/apt.conf.d/90-slim"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
  log "docker import -> $base"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/pneumoscan-host-ca.crt' \
    --change 'CMD ["python3"]' - "$base" >&2
  rm -rf "$root"
  trap - EXIT
fi

build() {  # build IMAGE DOCKERFILE
  if have "$1"; then log "$1 exists"; return; fi
  log "building $1 from Debian's packages"
  DOCKER_BUILDKIT=0 nice docker build -q --build-arg "BASE=$base" -t "$1" -f "$here/offline/$2" "$here/offline" >&2
}
build "$redis" redis.Dockerfile
build "$postgres" postgres.Dockerfile

echo "PNEUMOSCAN_BASE_IMAGE=$base"
echo "REDIS_IMAGE=$redis"
echo "POSTGRES_IMAGE=$postgres"
