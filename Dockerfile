# rollout-host: the server and the calculator plugin in a small image.
#
#   docker build -t rollout-host .
#   docker run -p 9000:9000 rollout-host                       # the calculator
#   docker run -p 9000:9000 -v $PWD/my_agent.wasm:/plugins/agent.wasm:ro \
#     rollout-host --plugin /plugins/agent.wasm                 # your plugin
#
# Build stage: the host (release) and the Rust plugins (wasm32-wasip2).
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release --locked -p rollout-host --bin rollout-host \
 && cargo build --release --locked --target wasm32-wasip2 \
      --manifest-path plugins/Cargo.toml -p calc

# Runtime stage: the binary, CA certificates (an https trainer) and the
# plugin; runs as an unprivileged user, its compile cache in its home.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/rollout-host rollout
COPY --from=build /src/target/release/rollout-host /usr/local/bin/rollout-host
COPY --from=build /src/plugins/target/wasm32-wasip2/release/calc.wasm /plugins/calc.wasm
USER 10001
ENV ROLLOUT_CACHE_DIR=/var/lib/rollout-host/cache
EXPOSE 9000
ENTRYPOINT ["rollout-host"]
CMD ["--plugin", "/plugins/calc.wasm"]
