# One image with every OpsSentinal binary; docker-compose.yml picks the one to run.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && cp target/release/opssentinal target/release/opssentinal-ingest \
       target/release/opssentinal-worker target/release/opssentinal-query-api /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 opssentinal
COPY --from=build /usr/local/bin/opssentinal* /usr/local/bin/
USER opssentinal
ENV LOG_FORMAT=json
