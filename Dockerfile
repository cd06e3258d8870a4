# pgsidecar's container image: the proxy, the migration runner and the backup tool in one binary,
# on a slim Debian 12 with PostgreSQL 15's pg_dump / pg_restore (the backup commands drive them;
# their major version must be at least the server's).
#
# Build from source (public bases, the `runtime` stage is the default target):
#   docker build -t pgsidecar .
# Build around a binary compiled on the host (no Rust toolchain in a container), as
# scripts/docker-image.sh does with bases made locally by scripts/docker-bases.sh:
#   docker build --target prebuilt --build-arg RUNTIME_BASE=... -t pgsidecar .
# The base images are build arguments so that a machine without a registry can bring its own.
ARG BUILD_BASE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_BASE=docker.io/library/debian:bookworm-slim
ARG PG_MAJOR=15

# What every image runs on: a non-root user, pg_dump/pg_restore, the CA bundle for TLS to the
# database and the collector.
FROM ${RUNTIME_BASE} AS runtime-base
ARG PG_MAJOR
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates postgresql-client-${PG_MAJOR} \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin pgsidecar
# The document-retrieval schema pgsidecar ships, for `migrate apply --dir /usr/share/pgsidecar/migrations`.
COPY migrations /usr/share/pgsidecar/migrations
ENV PG_BINDIR=/usr/lib/postgresql/${PG_MAJOR}/bin \
    PGSIDECAR_LISTEN=127.0.0.1:6432
# 6432: the PostgreSQL protocol; 9187: health, metrics and the admin API when admin_listen is set.
EXPOSE 6432 9187
USER 10001:10001
ENTRYPOINT ["pgsidecar"]
CMD ["proxy"]

# A binary built on the host (already without debug info), copied in: target/docker/pgsidecar.
FROM runtime-base AS prebuilt
COPY target/docker/pgsidecar /usr/local/bin/pgsidecar

# The toolchain stage: libclang for the SQL parser's bindings, the lock file honoured, debug
# info left out of the shipped binary (the repository's release profile keeps it for profiling).
FROM ${BUILD_BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev clang \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked --bin pgsidecar \
 && cp target/release/pgsidecar /pgsidecar

FROM runtime-base AS runtime
COPY --from=build /pgsidecar /usr/local/bin/pgsidecar
