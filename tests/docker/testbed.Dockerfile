# The container test's other parts, from the same local Debian base as pgsidecar's image:
# PostgreSQL 15 with pgvector 0.8.0 (its files copied from the host, where scripts/setup.sh built
# them) for the database container, and Python with psycopg for the stand-in application.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-15 python3-psycopg \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY vector.so /usr/lib/postgresql/15/lib/
COPY extension/ /usr/share/postgresql/15/extension/
COPY app.py /usr/local/bin/app.py
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
