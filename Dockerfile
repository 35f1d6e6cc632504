# syntax=docker/dockerfile:1
#
# giftd container image.
#
# Build (BuildKit is required for the cache mounts; it is the default builder since Docker 23):
#
#   docker build -t giftd .
#
# Run. The image bakes NO secrets. giftd refuses to start on a non-loopback listen address
# (this image listens on 0.0.0.0:8080 for clients and 0.0.0.0:9090 for operators) while
# auth.jwt_secret or auth.admin_token still have their development defaults, so both MUST be
# supplied at run time, each at least 16 bytes:
#
#   docker run -d --name giftd -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -e GIFTD_AUTH__JWT_SECRET="$(openssl rand -hex 32)" \
#     -e GIFTD_AUTH__ADMIN_TOKEN="$(openssl rand -hex 32)" \
#     -v giftd-data:/var/lib/giftd \
#     --stop-timeout 15 \
#     giftd
#
# (In production, pass them from a secret store or `--env-file`, not your shell history.)
#
# Any other setting can be overridden the same way, GIFTD_<SECTION>__<FIELD>, or with a TOML
# file mounted into the container: `... giftd serve --config /etc/giftd/giftd.toml`.
#
# The SQLite ledger (plus its -wal/-shm files) lives in the /var/lib/giftd volume, owned by
# uid/gid 10001; a host bind mount there must be writable by that uid.
#
# Shutdown: SIGTERM starts a graceful drain bounded by server.shutdown_grace_ms (default
# 10 s), the same as `docker stop`'s default timeout, so give the container a little more
# (`--stop-timeout 15`, or `stop_grace_period: 15s` in Compose) so it is not SIGKILLed mid-drain.
#
# Ports: 8080 is the public listener (client WebSockets at /ws, /rooms, /stickers). 9090 is the
# admin listener (GIFTD_SERVER__ADMIN_LISTEN): /healthz, /readyz, /metrics and /admin/*, with its
# own connection limit so client load cannot starve probes. Publish 9090 only to your private
# network (the example above binds it to the host's loopback).
#
# Probes, on 9090: GET /healthz (liveness, always 200 while the process serves HTTP) and
# GET /readyz (readiness: 503 while the ledger's last write failed, its disk is below
# ledger.disk_reserve_bytes free, or shutdown has started). Kubernetes and other orchestrators
# should probe those directly; the HEALTHCHECK below covers plain Docker and assumes the default
# admin port 9090. Metrics: GET /metrics on 9090 (Prometheus text format).

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder

WORKDIR /src

# The whole workspace manifest set: the root crate plus the load-tests member (its sources must
# exist for the workspace to load), and the benches the root manifest's [[bench]] entries name.
COPY Cargo.toml Cargo.lock ./
COPY load-tests/Cargo.toml load-tests/Cargo.toml
COPY load-tests/src load-tests/src
COPY benches benches
COPY src src

# Registry, git checkouts and target/ are BuildKit cache mounts, so dependencies are compiled
# once and reused across builds. The target/ mount is not part of the image layer, hence the
# binary is copied out of it in the same RUN. rusqlite's bundled SQLite is compiled with the
# C toolchain that ships in the rust image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p giftd --bin giftd \
    && install -D -m 0755 target/release/giftd /out/giftd

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# curl is only for the HEALTHCHECK; giftd itself needs nothing beyond libc and CA roots.
# Versions are not pinned: bookworm's point releases only carry security and bug fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 giftd \
    && useradd --system --uid 10001 --gid giftd --no-create-home \
        --home-dir /var/lib/giftd --shell /usr/sbin/nologin giftd \
    && install -d -o giftd -g giftd -m 0750 /var/lib/giftd

COPY --from=builder /out/giftd /usr/local/bin/giftd

WORKDIR /var/lib/giftd
VOLUME ["/var/lib/giftd"]

ENV GIFTD_SERVER__LISTEN=0.0.0.0:8080 \
    GIFTD_SERVER__ADMIN_LISTEN=0.0.0.0:9090 \
    GIFTD_LEDGER__PATH=/var/lib/giftd/giftd.db

USER 10001:10001

EXPOSE 8080 9090
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9090/healthz"]

# giftd installs its own SIGTERM/SIGINT handlers and spawns no children, so it runs fine as
# PID 1 without an init; add `docker run --init` if you want one anyway.
ENTRYPOINT ["giftd"]
CMD ["serve"]
