# herald's image for docker-compose.yml. rdkafka builds librdkafka from source,
# which needs the C toolchain and make that rust:bookworm has.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY schemas /usr/share/herald/schemas
USER 65534
ENTRYPOINT ["/usr/local/bin/herald"]
