# syntax=docker/dockerfile:1
# Multi-stage build of idstack.
#   all roles:          docker build -t idstack .
#   one role per image: docker build --build-arg FEATURES=verifier -t idstack-verifier .
#   cluster-capable:    docker build --build-arg FEATURES="issuer,verifier,wallet,mediator,cluster,swagger-ui" .

FROM rust:1.95-bookworm AS builder
ARG FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY web ./web
RUN if [ -z "$FEATURES" ]; then \
      cargo build --release --locked; \
    else \
      cargo build --release --locked --no-default-features --features "$FEATURES"; \
    fi

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin idstack \
 && mkdir -p /data && chown idstack:idstack /data
COPY --from=builder /src/target/release/idstack /usr/local/bin/idstack
USER idstack
WORKDIR /data
ENV IDSTACK__SERVER__BIND=0.0.0.0:8080 \
    IDSTACK__STORE__PATH=/data \
    IDSTACK__LOG__FORMAT=json
VOLUME ["/data"]
# 8080: HTTP (API, protocols, console); 7946/udp: cluster gossip, 7946/tcp: internal RPC (cluster mode only)
EXPOSE 8080 7946/tcp 7946/udp
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["idstack", "healthcheck", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["idstack"]
CMD ["serve"]
