# One image for every roomfleet role: router, ws-node, archiver and fleet.
# Build once (release, locked), run as a non-root user on a slim base.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin router --bin ws-node --bin archiver --bin fleet \
 && mkdir /out \
 && cp target/release/router target/release/ws-node target/release/archiver \
       target/release/fleet /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home roomfleet
COPY --from=build /out/ /usr/local/bin/
COPY deploy/ /etc/roomfleet/
USER roomfleet
# Nodes serve /healthz on their listener (7001); compose overrides this for the router,
# whose /healthz is on the admin listener.
ENV HEALTH_URL=http://127.0.0.1:7001/healthz
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS "$HEALTH_URL" >/dev/null || exit 1
EXPOSE 7001 8080 9090
CMD ["ws-node", "--config", "/etc/roomfleet/ws-node.toml"]
