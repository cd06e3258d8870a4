#!/usr/bin/env bash
# Installs what pgsidecar and its test suite need on Debian 12: PostgreSQL 15 (server, server-dev,
# contrib with pgbench), pgvector 0.8.0 built from Debian's trixie source package, PgBouncer for the
# benchmarks, libclang for the pg_query parser bindings, debootstrap for the container tests' base
# image, and the Python packages the tests drive (psycopg, kubernetes-validate with the Kubernetes
# schemas for offline validation). kubectl (for `kubectl kustomize`) and Docker must already be
# on the machine. Idempotent: a second run only checks.
set -euo pipefail

PG_MAJOR=15
PGVECTOR_VERSION=0.8.0
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[setup] %s\n' "$*"; }

need_pkgs=()
for pkg in postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR} postgresql-contrib postgresql-server-dev-${PG_MAJOR} \
           pgbouncer build-essential dpkg-dev python3-pip libclang1-14 libclang-common-14-dev debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The Debian packages start a system cluster and a pgbouncer service; pgsidecar never uses them.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
  $SUDO systemctl stop pgbouncer || true
fi

ext_dir=$($PG_CONFIG --sharedir)/extension
if ! grep -qs "default_version = '${PGVECTOR_VERSION}'" "$ext_dir/vector.control"; then
  log "building pgvector ${PGVECTOR_VERSION} from Debian's trixie source package"
  src_list=/etc/apt/sources.list.d/pgsidecar-trixie-src.sources
  if [ ! -f "$src_list" ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee "$src_list" >/dev/null
  fi
  $SUDO apt-get update -qq
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get source -qq --download-only "pgvector=${PGVECTOR_VERSION}-*" >/dev/null 2>&1 \
     || apt-get source -qq --download-only pgvector >/dev/null)
  (cd "$work" && dpkg-source -x --no-check ./*.dsc src >/dev/null)
  grep -q "default_version = '${PGVECTOR_VERSION}'" "$work/src/vector.control" \
    || { echo "pgvector source is not ${PGVECTOR_VERSION}" >&2; exit 1; }
  make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" -j"$(nproc)" >/dev/null
  $SUDO make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" install >/dev/null
fi

# The Python test clients run in a virtual environment of the project's own.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  log "creating $venv with psycopg"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'psycopg[binary]>=3.2,<4'
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
for tool in kubectl docker; do
  command -v "$tool" >/dev/null || log "warning: $tool is missing; the deployment tests need it"
done
log "ready: PostgreSQL ${PG_MAJOR}, pgvector ${PGVECTOR_VERSION}, pgbench, pgbouncer, psycopg, kubernetes-validate"
