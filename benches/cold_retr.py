#!/usr/bin/env python3
"""Greeting delay while cold RETRs run on the same core (issue 15, item 2).

Starts the relay (`server.cores = 1`, `spool.fsync = true`) on a temporary spool, stores
USERS x PER_USER messages of SIZE MiB over SMTP, logs every user in over POP3, drops the page
cache of the spool's segment files (posix_fadvise DONTNEED; `warm` skips it), sends `RETR n`
for every message on every session at once, and measures the time from connect to greeting of
new POP3 connections opened one after another while the RETRs are in progress: the first (right
behind the RETRs) and the worst. Each session reads its RETRs whole. Loopback only; bounded.

Usage: python3 benches/cold_retr.py IO [cold|warm] [USERS] [PER_USER] [SIZE_MIB] [ROUNDS]
       RELAY_BIN names the binary (default $CARGO_TARGET_DIR/release/relay).
"""
import os, re, smtplib, socket, subprocess, sys, tempfile, threading, time

IO = sys.argv[1] if len(sys.argv) > 1 else "uring"
COLD = (sys.argv[2] if len(sys.argv) > 2 else "cold") == "cold"
USERS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
PER_USER = int(sys.argv[4]) if len(sys.argv) > 4 else 1
SIZE = (int(sys.argv[5]) if len(sys.argv) > 5 else 20) << 20
ROUNDS = int(sys.argv[6]) if len(sys.argv) > 6 else 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RELAY_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "relay")
HASH = "$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw"
NAMES = [f"u{i}" for i in range(USERS)]


def start(tmp):
    cfg = os.path.join(tmp, "relay.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nio = "{IO}"\ncores = 1\nhostname = "bench.test"\n'
                f'[smtp]\nlisten = ["127.0.0.1:0"]\nmessage_size_max = "{(SIZE >> 20) + 5}MiB"\n'
                f'[spool]\ndir = "{tmp}/spool"\nfsync = true\n'
                f'[pop3]\nlisten = ["127.0.0.1:0"]\n[imap]\nlisten = []\n'
                f'[relay]\nallowed_networks = ["127.0.0.0/8"]\n[local]\ndomains = ["bench.test"]\n')
        for name in NAMES:
            f.write(f'[[local.users]]\nname = "{name}"\npassword = "{HASH}"\n')
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RELAY_LOG": "info"})
    ports = {}
    deadline = time.time() + 60
    for line in proc.stderr:
        m = re.search(r'protocol="(\w+)" addr=127\.0\.0\.1:(\d+)', line)
        if m:
            ports[m.group(1)] = int(m.group(2))
        if "relay ready" in line or time.time() > deadline:
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, ports["smtp"], ports["pop3"]


def message(marker):
    line = ("0123456789abcdef" * 6).encode()
    head = f"From: <s@bench.test>\r\nSubject: {marker}\r\n\r\n".encode()
    n = (SIZE - len(head)) // (len(line) + 2) + 1
    return head + (line + b"\r\n") * n


class Pop:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.greeting = self.line()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text):
        self.s.sendall(text.encode() + b"\r\n")
        return self.line()

    def body(self):
        # Through CRLF.CRLF; returns the octets before the terminator (kept: only a tail).
        n = 0
        while True:
            at = self.buf.find(b"\r\n.\r\n")
            if at >= 0:
                n += at + 2
                self.buf = self.buf[at + 5:]
                return n
            n += max(0, len(self.buf) - 4)
            self.buf = self.buf[-4:]
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed in body")
            self.buf += chunk


def greeting_delay(port):
    t = time.perf_counter()
    p = Pop(port)
    d = time.perf_counter() - t
    assert p.greeting.startswith(b"+OK"), p.greeting
    p.s.close()
    return d


def drop_cache(tmp):
    for d, _, files in os.walk(os.path.join(tmp, "spool")):
        for name in files:
            if name.endswith(".seg"):
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


def main():
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/work")) as tmp:
        proc, smtp_port, pop_port = start(tmp)
        try:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=120) as smtp:
                for name in NAMES:
                    for k in range(PER_USER):
                        smtp.sendmail("s@bench.test", [f"{name}@bench.test"], message(f"{name}-{k}"))
            firsts, worsts, totals = [], [], []
            for _ in range(ROUNDS):
                sessions = []
                for name in NAMES:
                    p = Pop(pop_port)
                    assert p.cmd(f"USER {name}").startswith(b"+OK")
                    assert p.cmd("PASS password").startswith(b"+OK"), name
                    sessions.append(p)
                if COLD:
                    drop_cache(tmp)
                cmds = "".join(f"RETR {k + 1}\r\n" for k in range(PER_USER)).encode()
                t0 = time.perf_counter()
                for p in sessions:
                    p.s.sendall(cmds)
                errors = []

                def read(p):
                    try:
                        for _ in range(PER_USER):
                            assert p.line().startswith(b"+OK")
                            assert p.body() >= SIZE - 1024
                        p.cmd("QUIT")
                    except Exception as e:  # reported below
                        errors.append(e)
                threads = [threading.Thread(target=read, args=(p,)) for p in sessions]
                for t in threads:
                    t.start()
                delays = []
                while (not delays or any(t.is_alive() for t in threads)) and len(delays) < 1000:
                    delays.append(greeting_delay(pop_port))
                for t in threads:
                    t.join()
                totals.append(time.perf_counter() - t0)
                if errors:
                    raise SystemExit(f"RETR failed: {errors[0]!r}")
                firsts.append(delays[0])
                worsts.append(max(delays))
            ms = lambda xs: "/".join(f"{x * 1000:.1f}" for x in xs)
            print(f"io={IO} {'cold' if COLD else 'warm'} {USERS}x{PER_USER}x{SIZE >> 20}MiB RETR: "
                  f"first greeting ms {ms(firsts)}; worst ms {ms(worsts)}; all RETRs done ms {ms(totals)}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


main()
