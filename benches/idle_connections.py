#!/usr/bin/env python3
"""Memory per idle connection (targets: <= 8 KiB plaintext, <= 16 KiB inside TLS,
docs/ARCHITECTURE.md §12).

Starts the relay on temporary spools, opens N connections that read the greeting (and, with
`tls`, run STARTTLS/STLS and a handshake) and then stay silent, and reports the relay's
memory growth per connection: RSS from /proc/PID/status and PSS from /proc/PID/smaps_rollup,
taken once a warm-up share of the connections is open and again once all are, so what the
process holds anyway (its runtime, caches, the first pages of each allocator size class) is
not counted. Loopback only; bounded by N and a timeout per step.

One process may hold only as many descriptors as its hard `nofile` limit: when N does not
fit, the connections are spread over as many relay processes as needed (each with its own
spool) and their growth is summed; the report says how many. The clients run in worker
processes (each under the same limit), each from its own loopback source address so the
ephemeral ports of one address (about 28,000) are never the bound.

Usage: python3 benches/idle_connections.py [N] [io] [plain|tls] [smtp|pop3|imap]
       (default 5000 uring plain smtp; io: uring or epoll). RELAY_BIN names the binary
       (default: $CARGO_TARGET_DIR/release/relay).
"""
import multiprocessing as mp
import os, re, resource, socket, ssl, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
IO = sys.argv[2] if len(sys.argv) > 2 else "uring"
TLS = len(sys.argv) > 3 and sys.argv[3] == "tls"
PROTOCOL = sys.argv[4] if len(sys.argv) > 4 else "smtp"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RELAY_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "relay")
STEP_TIMEOUT = 1800  # seconds for opening every connection
# The IP_BIND_ADDRESS_NO_PORT socket option (Linux): the port is picked at connect, per
# destination, so one source address is not limited to one use of each ephemeral port.
IP_BIND_ADDRESS_NO_PORT = 24

if PROTOCOL not in ("smtp", "pop3", "imap"):
    raise SystemExit(f"unknown protocol {PROTOCOL!r}")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard == resource.RLIM_INFINITY:
    hard = 1 << 20
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
# Per process: the relay's own descriptors (spool, listeners, rings) and the client's
# pipes need headroom.
PER_PROCESS = max(1000, hard - 512)


def memory_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss = int(re.search(r"^Pss:\s+(\d+)", f.read(), re.M).group(1))
    return rss, pss


def start_relay(tmp, index, count):
    spool = os.path.join(tmp, f"spool{index}")
    cfg = os.path.join(tmp, f"relay{index}.toml")
    listen = '["127.0.0.1:0"]'
    # SMTP always listens (the relay needs it); the others only when measured.
    sections = {p: (listen if p in (PROTOCOL, "smtp") else "[]") for p in ("smtp", "pop3", "imap")}
    with open(cfg, "w") as f:
        f.write(f'[server]\nio = "{IO}"\ncores = 2\nhostname = "bench.test"\n'
                f'connections_per_core_max = {count}\nconnections_per_ip_max = {count}\n'
                f'[smtp]\nlisten = {sections["smtp"]}\n[pop3]\nlisten = {sections["pop3"]}\n'
                f'[imap]\nlisten = {sections["imap"]}\n'
                f'[spool]\ndir = "{spool}"\nfsync = true\n[admin]\nlisten = "127.0.0.1:0"\n')
        if TLS:
            f.write(f'[tls]\ncert = "{tmp}/cert.pem"\nkey = "{tmp}/key.pem"\n')
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RELAY_LOG": "info"})
    port = None
    deadline = time.time() + 60
    for line in proc.stderr:
        m = re.search(rf'protocol="{PROTOCOL}" addr=127\.0\.0\.1:(\d+)', line)
        if m:
            port = int(m.group(1))
        if "relay ready" in line or time.time() > deadline:
            break
    if port is None:
        proc.kill()
        raise SystemExit(f"relay {index} did not report its {PROTOCOL} listener")
    # Keep reading its log so a full pipe never blocks the relay.
    drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc, port, drain


def read_until(s, done):
    got = b""
    while not done(got):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {got[-200:]!r}")
        got += chunk
    return got


def open_one(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((source, 0))
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    if PROTOCOL == "smtp":
        if read_until(s, lambda b: b.endswith(b"\r\n"))[:3] != b"220":
            raise ConnectionError("no greeting")
        if TLS:
            s.sendall(b"EHLO bench.test\r\n")
            read_until(s, lambda b: re.search(rb"(^|\n)250 [^\n]*\r\n$", b) is not None)
            s.sendall(b"STARTTLS\r\n")
            if read_until(s, lambda b: b.endswith(b"\r\n"))[:3] != b"220":
                raise ConnectionError("STARTTLS refused")
    elif PROTOCOL == "pop3":
        if read_until(s, lambda b: b.endswith(b"\r\n"))[:3] != b"+OK":
            raise ConnectionError("no greeting")
        if TLS:
            s.sendall(b"STLS\r\n")
            if read_until(s, lambda b: b.endswith(b"\r\n"))[:3] != b"+OK":
                raise ConnectionError("STLS refused")
    else:
        if read_until(s, lambda b: b.endswith(b"\r\n"))[:4] != b"* OK":
            raise ConnectionError("no greeting")
        if TLS:
            s.sendall(b"a STARTTLS\r\n")
            if b"a OK" not in read_until(s, lambda b: b"a " in b and b.endswith(b"\r\n")):
                raise ConnectionError("STARTTLS refused")
    return s


def client(worker, port, count, ready, go):
    """Opens `count` connections to `port` from its own source address, reports, holds them
    until told, then closes them."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    source = f"127.1.{worker // 250}.{worker % 250 + 1}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    held = []
    try:
        for _ in range(count):
            s = open_one(port, source)
            if TLS:
                s = context.wrap_socket(s, server_hostname="bench.test")
            held.append(s)
            if len(held) % 1000 == 0:
                ready.put(("progress", worker, 1000))
        ready.put(("progress", worker, len(held) % 1000))
        ready.put(("open", worker, len(held)))
    except Exception as e:  # reported to the parent, which stops the run
        ready.put(("failed", worker, f"{type(e).__name__}: {e}"))
    go.wait()
    for s in held:
        s.close()


def open_connections(plan, ready, go, first=0):
    """Starts one worker per (relay port, share), numbered from `first` (its source address);
    returns them once all have opened theirs."""
    workers = []
    for worker, (port, count) in enumerate(plan, start=first):
        p = mp.Process(target=client, args=(worker, port, count, ready, go))
        p.start()
        workers.append(p)
    done = 0
    deadline = time.time() + STEP_TIMEOUT
    while done < len(workers):
        kind, worker, value = ready.get(timeout=max(1, deadline - time.time()))
        if kind == "failed":
            go.set()
            raise SystemExit(f"client {worker}: {value}")
        if kind == "open":
            done += 1
    return workers


def shares(total, per):
    out = []
    while total > 0:
        out.append(min(per, total))
        total -= out[-1]
    return out


def main():
    # A client worker per 10,000 connections (both TLS sides cost CPU), never more than a
    # process's descriptors.
    per_worker = min(PER_PROCESS, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        if TLS:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                            "/CN=bench.test", "-keyout", f"{tmp}/key.pem", "-out",
                            f"{tmp}/cert.pem"], check=True, capture_output=True)
        relays = []
        for index, count in enumerate(shares(N, PER_PROCESS)):
            proc, port, drain = start_relay(tmp, index, count)
            relays.append((proc, port, drain, count))
        # Warm-up: a tenth of each relay's connections (at least 200), then the rest.
        warm_plan, rest_plan = [], []
        for proc, port, _, count in relays:
            warm = min(count, max(200, count // 10))
            warm_plan += [(port, c) for c in shares(warm, per_worker)]
            rest_plan += [(port, c) for c in shares(count - warm, per_worker)]
        ready = mp.Queue()
        go = mp.Event()
        started = time.time()
        workers = open_connections(warm_plan, ready, go)
        time.sleep(1)  # let the shards settle their bookkeeping before sampling
        before = [memory_kib(proc.pid) for proc, *_ in relays]
        warm_total = sum(c for _, c in warm_plan)
        workers += open_connections(rest_plan, ready, go, first=len(warm_plan))
        time.sleep(1)
        after = [memory_kib(proc.pid) for proc, *_ in relays]
        opened = time.time() - started
        added = N - warm_total
        rss = sum(a[0] - b[0] for a, b in zip(after, before))
        pss = sum(a[1] - b[1] for a, b in zip(after, before))
        total_rss = sum(a[0] for a in after)
        print(f"protocol={PROTOCOL} io={IO} tls={TLS} connections={N} relays={len(relays)} "
              f"(hard nofile {hard}) warm={warm_total} rss_total={total_rss}KiB "
              f"rss_growth={rss}KiB pss_growth={pss}KiB "
              f"per_connection_rss={rss / added:.1f}KiB per_connection_pss={pss / added:.1f}KiB "
              f"open_time={opened:.0f}s", flush=True)
        go.set()
        for p in workers:
            p.join(timeout=120)
        for proc, _, drain, _ in relays:
            proc.terminate()
        for proc, _, drain, _ in relays:
            proc.wait(timeout=60)
            drain.wait(timeout=10)


if __name__ == "__main__":
    main()
