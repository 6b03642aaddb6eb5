#!/usr/bin/env python3
"""Memory per idle SMTP connection (target: <= 32 KiB, docs/ARCHITECTURE.md §12).

Starts the release relay on a temporary spool, opens N connections that read the greeting
and then stay silent, and reports the relay's RSS growth per connection (from
/proc/PID/status). Loopback only; bounded by N and a timeout.

With a third argument `tls`, each connection first runs STARTTLS (a certificate made with
the openssl CLI) and then idles inside the TLS session: the cost of rustls's state on top.

Usage: python3 benches/idle_connections.py [N] [io] [tls]   (io: uring or epoll; default 5000 uring)
"""
import os, re, resource, socket, ssl, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
IO = sys.argv[2] if len(sys.argv) > 2 else "uring"
TLS = len(sys.argv) > 3 and sys.argv[3] == "tls"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "relay")

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = min(hard, N * 2 + 256)
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

with tempfile.TemporaryDirectory() as tmp:
    cfg = os.path.join(tmp, "relay.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nio = "{IO}"\ncores = 2\nhostname = "bench.test"\n'
                f'connections_per_core_max = {N}\nconnections_per_ip_max = {N}\n'
                f'[smtp]\nlisten = ["127.0.0.1:0"]\n[pop3]\nlisten = []\n[imap]\nlisten = []\n'
                f'[spool]\ndir = "{tmp}/spool"\n[admin]\nlisten = "127.0.0.1:0"\n')
        if TLS:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                            "/CN=bench.test", "-keyout", f"{tmp}/key.pem", "-out",
                            f"{tmp}/cert.pem"], check=True, capture_output=True)
            f.write(f'[tls]\ncert = "{tmp}/cert.pem"\nkey = "{tmp}/key.pem"\n')
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RELAY_LOG": "info"})
    port = None
    deadline = time.time() + 30
    for line in proc.stderr:
        m = re.search(r'protocol="smtp" addr=127\.0\.0\.1:(\d+)', line)
        if m:
            port = int(m.group(1))
        if "relay ready" in line or time.time() > deadline:
            break
    before = rss_kib(proc.pid)
    socks = []
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if s.recv(512)[:3] != b"220":
            raise SystemExit(f"connection {i}: no greeting")
        if TLS:
            s.sendall(b"EHLO bench.test\r\n")
            reply = b""
            while not reply.endswith(b"250 HELP\r\n"):
                reply += s.recv(4096)
            s.sendall(b"STARTTLS\r\n")
            if s.recv(512)[:3] != b"220":
                raise SystemExit(f"connection {i}: STARTTLS refused")
            s = context.wrap_socket(s, server_hostname="bench.test")
        socks.append(s)
    time.sleep(0.5)  # let both shards settle their task bookkeeping before sampling
    after = rss_kib(proc.pid)
    per = (after - before) / N
    print(f"io={IO} tls={TLS} connections={N} rss_before={before}KiB rss_after={after}KiB "
          f"per_connection={per:.1f}KiB")
    for s in socks:
        s.close()
    proc.terminate()
    proc.wait(timeout=30)
