#!/bin/sh
# As the official image's: options alone mean redis-server; drop root for the redis user; protected mode off,
# since the container's network is the boundary (the official image builds it off).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  if [ "${1%.conf}" != "${1:-}" ]; then conf=$1; shift; set -- "$conf" --protected-mode no "$@"
  else set -- --protected-mode no "$@"; fi
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$@"
  fi
  exec redis-server "$@"
fi
exec "$@"
