#!/usr/bin/env python3
"""POP3 interop checks of relay against Python's stdlib poplib (an independent POP3 client).

Called by tests/pop3_server.rs with the relay's POP3 port, a user, a password and an action:

  fetch   [--top-lines K]    CAPA, STAT, LIST, UIDL, then RETR, TOP n 0 and TOP n K of every
                             message; QUIT (nothing deleted)
  dele    --msgs 1,3 [--drop] DELE each, STAT; then QUIT, or (--drop) close the socket
                             without QUIT
  rset    --msgs 1,2         DELE each, STAT, RSET, STAT, QUIT
  login                      USER/PASS only; on success STAT and QUIT
  auth-plain [--authzid A] [--two-step]
                             AUTH PLAIN (RFC 5034) through poplib's _shortcmd, with an initial
                             response or (--two-step) after the "+ " continuation; then STAT
  in-use                     logs in twice at once: the second must be refused; then QUITs
                             the first and retries the second until it gets the lock
  apop                       APOP (RFC 1939 §7) with poplib's own digest of the greeting's
                             timestamp and --password as the shared secret; then STAT

It prints ONE JSON document on stdout (message bytes base64-encoded, so they are compared
byte for byte); the Rust test makes every assertion. poplib returns the lines of a multi-line
response unstuffed and without their CRLF; since every stored message ends with CRLF, the
message is b"\\r\\n".join(lines) + b"\\r\\n". On an exception it prints {"error": traceback}
and exits 1.
"""

import argparse
import base64
import json
import poplib
import socket
import sys
import time
import traceback

TIMEOUT = 20  # seconds, for connect and every response


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def joined(lines):
    return b"".join(line + b"\r\n" for line in lines)


def connect(args):
    return poplib.POP3(args.host, args.port, timeout=TIMEOUT)


def login(p, args):
    p.user(args.user)
    return text(p.pass_(args.password))


def connect_login(args):
    """Connects and logs in; [IN-USE] (the lock of a session that just ended, not released
    yet) is retried for up to 20 s. Returns (client, PASS response)."""
    deadline = time.monotonic() + 20
    while True:
        p = connect(args)
        try:
            return p, login(p, args)
        except poplib.error_proto as e:
            p.close()
            if "[IN-USE]" not in error_text(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def error_text(e):
    # error_proto carries the server's response line (bytes) as its first argument.
    return text(e.args[0]) if e.args else str(e)


def fetch(args):
    out = {}
    p, out["pass"] = connect_login(args)
    out["welcome"] = text(p.getwelcome())
    out["capa"] = {k: v for k, v in p.capa().items()}
    out["stat"] = list(p.stat())
    resp, lines, _ = p.list()
    out["list"] = [[int(n), int(size)] for n, size in (l.split() for l in lines)]
    resp, lines, _ = p.uidl()
    out["uidl"] = [[int(n), text(uid)] for n, uid in (l.split() for l in lines)]
    messages = []
    for n, _size in out["list"]:
        resp, lines, octets = p.retr(n)
        top0 = p.top(n, 0)[1]
        topk = p.top(n, args.top_lines)[1]
        messages.append(
            {
                "n": n,
                "retr": text(resp),
                "octets": octets,
                "bytes": b64(joined(lines)),
                "top0": b64(joined(top0)),
                "topk": b64(joined(topk)),
            }
        )
    out["messages"] = messages
    out["quit"] = text(p.quit())
    return out


def dele(args):
    out = {}
    p, out["pass"] = connect_login(args)
    msgs = [int(m) for m in args.msgs.split(",") if m]
    out["dele"] = [text(p.dele(m)) for m in msgs]
    out["stat"] = list(p.stat())
    if args.drop:
        # A client that dies: no QUIT, so no UPDATE (RFC 1939 §6).
        p.sock.shutdown(socket.SHUT_RDWR)
        p.sock.close()
        out["quit"] = None
    else:
        out["quit"] = text(p.quit())
    return out


def rset(args):
    out = {}
    p, out["pass"] = connect_login(args)
    out["stat_before"] = list(p.stat())
    msgs = [int(m) for m in args.msgs.split(",") if m]
    out["dele"] = [text(p.dele(m)) for m in msgs]
    out["stat_deleted"] = list(p.stat())
    try:
        p.retr(msgs[0])
        out["retr_deleted"] = "+OK"
    except poplib.error_proto as e:
        out["retr_deleted"] = error_text(e)
    out["rset"] = text(p.rset())
    out["stat_after"] = list(p.stat())
    out["quit"] = text(p.quit())
    return out


def try_login(args):
    out = {}
    try:
        p, out["pass"] = connect_login(args)
        out["ok"] = True
        out["stat"] = list(p.stat())
        out["quit"] = text(p.quit())
    except poplib.error_proto as e:
        out["ok"] = False
        out["pass"] = error_text(e)
    return out


def auth_plain(args):
    out = {}
    p = connect(args)
    blob = b64(
        (args.authzid or "").encode() + b"\0" + args.user.encode() + b"\0" + args.password.encode()
    )
    try:
        if args.two_step:
            out["continuation"] = text(p._shortcmd("AUTH PLAIN"))
            out["auth"] = text(p._shortcmd(blob))
        else:
            out["auth"] = text(p._shortcmd("AUTH PLAIN " + blob))
        out["ok"] = True
        out["stat"] = list(p.stat())
        out["quit"] = text(p.quit())
    except poplib.error_proto as e:
        out["ok"] = False
        out["auth"] = error_text(e)
        p.close()
    return out


def in_use(args):
    out = {}
    first = connect(args)
    out["first"] = login(first, args)
    second = connect(args)
    try:
        out["second"] = login(second, args)
    except poplib.error_proto as e:
        out["second"] = error_text(e)
    second.quit()
    out["first_quit"] = text(first.quit())
    # The first session's lock is released when the server has processed its QUIT; retry
    # with a deadline (there is no event a client could wait on).
    deadline = time.monotonic() + 20
    attempts = 0
    while True:
        attempts += 1
        p = connect(args)
        try:
            out["retry"] = login(p, args)
            p.quit()
            break
        except poplib.error_proto as e:
            out["retry"] = error_text(e)
            p.close()
            if time.monotonic() > deadline or "[IN-USE]" not in out["retry"]:
                break
            time.sleep(0.02)
    out["attempts"] = attempts
    return out


def apop(args):
    out = {}
    p = connect(args)
    out["welcome"] = text(p.getwelcome())
    try:
        out["apop"] = text(p.apop(args.user, args.password))
        out["ok"] = True
        out["stat"] = list(p.stat())
        out["quit"] = text(p.quit())
    except poplib.error_proto as e:
        out["ok"] = False
        out["apop"] = error_text(e)
        p.close()
    return out


ACTIONS = {
    "fetch": fetch,
    "dele": dele,
    "rset": rset,
    "login": try_login,
    "auth-plain": auth_plain,
    "in-use": in_use,
    "apop": apop,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--top-lines", type=int, default=2)
    parser.add_argument("--msgs", default="")
    parser.add_argument("--drop", action="store_true")
    parser.add_argument("--authzid", default=None)
    parser.add_argument("--two-step", action="store_true")
    args = parser.parse_args()
    # A refusal with [IN-USE] means the lock of a session that just ended is not released
    # yet: run the action again, for up to 20 s.
    deadline = time.monotonic() + 20
    while True:
        out = ACTIONS[args.action](args)
        refused = out.get("ok") is False and any(
            "[IN-USE]" in str(out.get(key, "")) for key in ("auth", "apop", "pass")
        )
        if not refused or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        print(json.dumps({"error": traceback.format_exc()}))
        sys.exit(1)
