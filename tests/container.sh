#!/usr/bin/env bash
# Builds the container image (Dockerfile) and runs it under the engine's default seccomp
# profile: it must become healthy (HEALTHCHECK: `relay stat` over the admin socket), greet on
# SMTP and POP3, say which engine it runs on, and stop cleanly on `docker stop`.
# tests/run.sh calls this; without a container engine it only says so (the io_uring denial
# itself is tested without one by tests/seccomp_fallback.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "tests/container.sh: skipping: no container engine"
    exit 0
fi

image="relay-test:$$"
name="relay-test-$$"
volume="relay-test-spool-$$"
cleanup() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker volume rm "$volume" >/dev/null 2>&1 || true
    docker image rm "$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker build --tag "$image" .
docker volume create "$volume" >/dev/null
# Ports published on loopback only, to ports the engine picks.
docker run --detach --name "$name" --volume "$volume:/var/spool/relay" \
    --publish 127.0.0.1::2525 --publish 127.0.0.1::1110 "$image" >/dev/null

# Healthy within 90 s (start period 30 s, checks every 30 s; the first one runs at once).
status=starting
for _ in $(seq 1 90); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$name")
    [ "$status" = starting ] || break
    sleep 1
done
if [ "$status" != healthy ]; then
    echo "tests/container.sh: the container is $status" >&2
    docker logs "$name" >&2
    exit 1
fi

smtp_port=$(docker port "$name" 2525/tcp | head -n1 | sed 's/.*://')
pop3_port=$(docker port "$name" 1110/tcp | head -n1 | sed 's/.*://')
python3 - "$smtp_port" "$pop3_port" <<'EOF'
import poplib, smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as smtp:
    code, _ = smtp.ehlo("container-test.example")
    assert code == 250, code
pop = poplib.POP3("127.0.0.1", int(sys.argv[2]), timeout=30)
assert pop.getwelcome().startswith(b"+OK"), pop.getwelcome()
pop.quit()
EOF

# It runs as the image's user, and its log names the engine (epoll under the default
# profile of Docker 25 and later, which denies io_uring; io_uring under an older one).
[ "$(docker exec "$name" id -u)" = 10025 ] || { echo "not running as 10025" >&2; exit 1; }
docker logs "$name" 2>&1 | grep -E 'relay ready engine=(epoll|io_uring)'
if docker logs "$name" 2>&1 | grep -E ' ERROR '; then
    echo "tests/container.sh: the relay logged an error" >&2
    exit 1
fi

docker stop --time 20 "$name" >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$name")
docker logs "$name" 2>&1 | grep -q 'stopped: spool is durable'
[ "$code" = 0 ] || { echo "tests/container.sh: exit code $code after docker stop" >&2; exit 1; }
echo "tests/container.sh: image built, healthy, served SMTP and POP3, stopped cleanly"
