#!/usr/bin/env python3
"""TLS session resumption against the relay, with Python's ssl module (OpenSSL) as client.

Usage: tls_resume.py PORT MODE VERSION [OTHERS]
  MODE: "smtp" (STARTTLS after EHLO) or "implicit" (TLS from the first byte, then the
  greeting is read inside it).
  VERSION: "1.3" or "1.2" (the highest version the client offers).
  OTHERS: full handshakes of other clients (fresh contexts) between the first connection
  and its return (default 0).

Opens three connections in a row, each offering the session the previous one left (TLS 1.3
tickets arrive after the handshake, so each connection reads a reply inside TLS before it
keeps its session), and prints one JSON line: {"reused": [false, true, true],
"version": "TLSv1.3"}.
"""

import json
import socket
import ssl
import sys

TIMEOUT = 10


def reply(f):
    """One SMTP reply (its last line), or the POP3/IMAP greeting line."""
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("connection closed")
        if len(line) < 4 or line[3:4] != b"-":
            return line


def one(port, mode, ctx, session):
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if mode == "smtp":
        f = raw.makefile("rb")
        reply(f)
        raw.sendall(b"EHLO resume.test\r\n")
        reply(f)
        raw.sendall(b"STARTTLS\r\n")
        line = reply(f)
        if not line.startswith(b"220"):
            raise RuntimeError("STARTTLS refused: %r" % line)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    f = tls.makefile("rb")
    if mode == "smtp":
        tls.sendall(b"EHLO resume.test\r\n")
        reply(f)
        tls.sendall(b"QUIT\r\n")
        reply(f)
    else:
        reply(f)
    reused = tls.session_reused
    version = tls.version()
    session = tls.session
    tls.close()
    return reused, version, session


def main():
    port, mode, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    others = int(sys.argv[4]) if len(sys.argv) > 4 else 0

    def context():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = (
            ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        return ctx

    ctx = context()
    session = None
    reused = []
    seen = None
    for i in range(3):
        r, seen, session = one(port, mode, ctx, session)
        reused.append(r)
        if i == 0:
            for _ in range(others):
                one(port, mode, context(), None)
    print(json.dumps({"reused": reused, "version": seen}))


if __name__ == "__main__":
    main()
