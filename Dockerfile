# authgate: a small runtime image. Build: docker build -t authgate .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p authgate --bin authgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/authgate authgate \
    && mkdir -p /var/lib/authgate && chown authgate /var/lib/authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
USER authgate
WORKDIR /var/lib/authgate
# gRPC and the HTTP port (callback, metrics). Bind 0.0.0.0 only with [[callers]] configured.
EXPOSE 50051 8080
ENTRYPOINT ["authgate"]
CMD ["serve", "--config", "/etc/authgate/authgate.toml"]
