# syntax=docker/dockerfile:1
# A static secretsync binary on distroless: no shell, no package manager, runs as 65532 (nonroot).
# Build: docker build -t secretsync:dev .   (e2e/run-kind.sh does, then loads it into kind)
FROM rust:1.95-bookworm AS build
# musl makes the binary static; aws-lc (TLS) is C, built with musl-gcc.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
# Cargo checks every target the manifest declares, so the tests and benches come along.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY src src
COPY benches benches
COPY tests tests
COPY e2e e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin secretsync --target "$(uname -m)-unknown-linux-musl" \
    && cp "target/$(uname -m)-unknown-linux-musl/release/secretsync" /secretsync && strip /secretsync

# Static, with CA certificates for the API server and AWS, and the nonroot user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /secretsync /secretsync
USER 65532:65532
ENTRYPOINT ["/secretsync"]
CMD ["run"]
