#!/usr/bin/env bash
# Makes the Debian 12 base image the Dockerfile builds on, on a machine that cannot pull from a
# registry: debootstrap a minimal bookworm into a folder, drop what a container never reads
# (documentation, manuals, locales, apt lists), and `docker import` it. Idempotent: an image that
# already exists is kept (FORCE=1 rebuilds it). Prints the image's name.
#
#   scripts/docker-bases.sh            -> pgsidecar-local/debian:bookworm-slim
set -euo pipefail

IMAGE=${DEBIAN_BASE_IMAGE:-pgsidecar-local/debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (scripts/setup.sh installs it)" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

root=$(mktemp -d)
trap '$SUDO rm -rf "$root"' EXIT
$SUDO debootstrap --variant=minbase bookworm "$root/fs" "$MIRROR" >"$root/debootstrap.log" 2>&1 \
  || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
# The security and update suites, as Debian's own images carry them.
printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$MIRROR" \
  | $SUDO tee "$root/fs/etc/apt/sources.list.d/debian.sources" >/dev/null
$SUDO rm -f "$root/fs/etc/apt/sources.list"
$SUDO rm -rf "$root"/fs/usr/share/{doc,man,info,locale}/* "$root"/fs/var/lib/apt/lists/* \
  "$root"/fs/var/cache/apt/*.bin "$root"/fs/var/log/*.log
# Keep them out of later `apt-get install`s too, as Debian's slim images do.
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
  | $SUDO tee "$root/fs/etc/dpkg/dpkg.cfg.d/slim" >/dev/null
$SUDO tar -C "$root/fs" -c . | docker import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "$IMAGE"
