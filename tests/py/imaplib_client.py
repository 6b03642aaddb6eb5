#!/usr/bin/env python3
"""An IMAP client process driven line by line by the Rust tests (tests/imap_*.rs).

It reads one JSON request per line on stdin and answers each with one JSON line on stdout,
so a test can interleave IMAP commands with SMTP deliveries, POP3 sessions and restarts.
The clients are independent implementations: Python's stdlib imaplib and, for IDLE,
imapclient (PyPI).

Requests:
  {"op": "connect", "s": NAME, "port": P, "tls": "none"|"ssl"|"starttls",
   "cafile": PATH, "lib": "imaplib"|"imapclient"}
  {"op": "connect", "s": NAME, "command": CMD}   imaplib over a command's stdin/stdout
      (IMAP4_stream: a preauthenticated server such as `doveadm exec imap`)
  {"op": "call", "s": NAME, "method": M, "args": [...]}   M is a method of the client object
      (imaplib: login, select, uid, store, copy, append, ...); an argument {"b": S} is the
      bytes of S (each char one byte, latin-1), every other argument is passed as is.
  {"op": "auth_plain", "s": NAME, "user": U, "password": P}   imaplib AUTHENTICATE PLAIN
  {"op": "drop", "s": NAME}   close the socket without LOGOUT

Answers: {"typ": ..., "data": ..., "untagged": {...}} for imaplib calls (untagged responses
collected since the last call, then cleared), {"value": ...} for imapclient, or
{"error": CLASS, "msg": TEXT} when the client raised. Bytes are written as latin-1 strings
(one char per byte) so the Rust side compares them byte for byte.
"""

import datetime
import imaplib
import json
import socket
import ssl
import sys
import traceback

TIMEOUT = 20  # seconds, for connect and every response


def norm(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("latin-1")
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return [[norm(k), norm(x)] for k, x in v.items()]
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def arg(v):
    if isinstance(v, dict) and "b" in v:
        return v["b"].encode("latin-1")
    return v


def connect(req):
    if "command" in req:
        c = imaplib.IMAP4_stream(req["command"])
        return c, {"welcome": norm(c.welcome), "capabilities": list(c.capabilities)}
    port = req["port"]
    tls = req.get("tls", "none")
    context = None
    if tls != "none":
        context = ssl.create_default_context(cafile=req["cafile"])
    if req.get("lib", "imaplib") == "imapclient":
        import imapclient

        if tls == "ssl":
            c = imapclient.IMAPClient("127.0.0.1", port=port, ssl=True, ssl_context=context,
                                      timeout=TIMEOUT)
        else:
            c = imapclient.IMAPClient("127.0.0.1", port=port, ssl=False, timeout=TIMEOUT)
            if tls == "starttls":
                c.starttls(context)
        return c, {"welcome": norm(c.welcome)}
    if tls == "ssl":
        c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=TIMEOUT)
    else:
        c = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    out = {"welcome": norm(c.welcome), "capabilities": list(c.capabilities)}
    if tls == "starttls":
        typ, data = c.starttls(ssl_context=context)
        out["starttls"] = [typ, norm(data)]
        out["capabilities_after"] = list(c.capabilities)
    return c, out


def main():
    sessions = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "connect":
                c, out = connect(req)
                sessions[req["s"]] = c
            elif op == "drop":
                c = sessions.pop(req["s"])
                sock = c.socket() if hasattr(c, "socket") and callable(c.socket) else c._imap.sock
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                out = {"dropped": True}
            elif op == "auth_plain":
                c = sessions[req["s"]]
                secret = "\0%s\0%s" % (req["user"], req["password"])
                typ, data = c.authenticate("PLAIN", lambda _: secret.encode())
                out = {"typ": typ, "data": norm(data), "capabilities": list(c.capabilities)}
            elif op == "call":
                c = sessions[req["s"]]
                args = [arg(a) for a in req.get("args", [])]
                result = getattr(c, req["method"])(*args)
                if isinstance(c, imaplib.IMAP4):
                    typ, data = result
                    out = {"typ": typ, "data": norm(data), "untagged": norm(c.untagged_responses)}
                    c.untagged_responses = {}
                else:
                    out = {"value": norm(result)}
            else:
                out = {"error": "BadRequest", "msg": op}
        except Exception as e:  # the test asserts on it
            out = {"error": type(e).__name__, "msg": str(e), "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
