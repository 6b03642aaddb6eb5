# relay container image: build with `docker build -t relay .` from the repository root.
# README.md "Container image" says how to run it; tests/container.sh builds and runs it when
# a container engine is present.

# Builder: the toolchain the project is tested with (rustc 1.95 on Debian 12, as CI).
# The official image has gcc and libc6-dev, which ring and mimalloc compile with.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of the committed Cargo.lock.
RUN cargo build --release --locked --bin relay \
    && install -D -m 0755 target/release/relay /out/relay

# Runtime: the same Debian release as the builder (glibc), nothing else installed.
FROM ${RUNTIME_IMAGE}
# A fixed UID/GID, so a bind-mounted spool can be given to it on the host
# (`chown 10025:10025 DIR`) and it never collides with a user the base image adds.
ARG RELAY_UID=10025
ARG RELAY_GID=10025
RUN groupadd --system --gid "${RELAY_GID}" relay \
    && useradd --system --uid "${RELAY_UID}" --gid relay --home-dir /var/spool/relay \
        --no-create-home --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0700 /var/spool/relay \
    && install -d -m 0755 /etc/relay
COPY --from=build /out/relay /usr/local/bin/relay
COPY packaging/container/relay.toml /etc/relay/relay.toml
# The image's config must load: a mistake fails the build, not the first start.
RUN ["relay", "check", "--config", "/etc/relay/relay.toml"]

# Created before VOLUME with its owner and mode, which Docker copies into a new named volume.
VOLUME /var/spool/relay
USER relay:relay
WORKDIR /var/spool/relay
ENV RELAY_LOG=info
# SMTP, POP3 (unprivileged ports; publish them as 25 and 110).
EXPOSE 2525/tcp 1110/tcp 1143/tcp
# `relay stat` asks the running server over its admin socket (0600, this user's) and exits
# non-zero with one line when no server answers; it waits at most 10 s.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["relay", "stat", "--config", "/etc/relay/relay.toml"]
# SIGTERM (Docker's stop signal) drains within server.drain_timeout and exits 0.
STOPSIGNAL SIGTERM
# No ENTRYPOINT: `docker run IMAGE relay check|stat|queue|user ...` runs the other commands.
CMD ["relay", "serve", "--config", "/etc/relay/relay.toml"]
