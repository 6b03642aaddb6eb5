#!/usr/bin/env python3
"""Interop check of relay against Python's stdlib smtplib (an independent SMTP client).

Called by tests/smtp_server.rs (`smtplib_interop_*`) with two relays on 127.0.0.1:
  --port         a relay that relays for 127.0.0.0/8
  --denied-port  a relay whose relay.allowed_networks excludes 127.0.0.1

It performs the transactions and prints ONE JSON document on stdout; the Rust test makes
every assertion (so a failure shows both what smtplib saw and the relay's log). On an
exception it prints {"error": traceback} and exits 1.
"""

import argparse
import json
import smtplib
import sys
import traceback

TIMEOUT = 20  # seconds, for connect and every reply


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def several_recipients_message():
    # CRLF line ends and a final CRLF: smtplib then sends the bytes as they are (plus the
    # terminator), so the relay must store exactly these bytes.
    return (
        b"From: Interop Sender <sender@example.test>\r\n"
        b"To: one@example.test, two@example.test\r\n"
        b"Cc: three@localhost\r\n"
        b"Subject: smtplib several recipients\r\n"
        b"Message-ID: <smtplib-several@client.test>\r\n"
        b"\r\n"
        b"marker smtplib-several\r\n"
        b"second line\r\n"
    )


def dot_lines_message():
    # Lines starting with "." must be dot-stuffed by smtplib and unstuffed by the relay; a
    # line holding only "." is the case that would end DATA early if either side got it wrong.
    return (
        b"From: <dots@example.test>\r\n"
        b"To: <one@example.test>\r\n"
        b"Subject: smtplib dot-stuffing\r\n"
        b"Message-ID: <smtplib-dots@client.test>\r\n"
        b"\r\n"
        b"marker smtplib-dots\r\n"
        b".leading dot\r\n"
        b"..two leading dots\r\n"
        b".\r\n"
        b"line after a lone dot\r\n"
        b". dot space\r\n"
        b"last line\r\n"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--denied-port", type=int, required=True)
    args = parser.parse_args()

    out = {}
    with smtplib.SMTP(args.host, args.port, local_hostname="client.test", timeout=TIMEOUT) as s:
        code, banner = s.ehlo()
        out["ehlo"] = {
            "code": code,
            "banner": text(banner),
            "features": sorted(s.esmtp_features.keys()),
            "size": s.esmtp_features.get("size", ""),
        }

        msg = several_recipients_message()
        rcpts = ["one@example.test", "two@example.test", "three@localhost"]
        refused = s.sendmail("sender@example.test", rcpts, msg)
        out["sendmail"] = {
            "recipients": rcpts,
            "refused": {k: [v[0], text(v[1])] for k, v in refused.items()},
            "message": text(msg),
        }

        msg = dot_lines_message()
        mail = s.mail("dots@example.test")
        rcpt = s.rcpt("one@example.test")
        data = s.data(msg)
        out["dots"] = {
            "mail": [mail[0], text(mail[1])],
            "rcpt": [rcpt[0], text(rcpt[1])],
            "data": [data[0], text(data[1])],
            "message": text(msg),
        }
        quit_code, _ = s.quit()
        out["quit"] = quit_code

    with smtplib.SMTP(args.host, args.denied_port, local_hostname="client.test", timeout=TIMEOUT) as s:
        s.ehlo()
        mail = s.mail("sender@example.test")
        remote = s.rcpt("someone@remote.invalid")
        local = s.rcpt("one@example.test")
        rset = s.rset()
        noop = s.noop()
        out["denied"] = {
            "mail": [mail[0], text(mail[1])],
            "remote": [remote[0], text(remote[1])],
            "local": [local[0], text(local[1])],
            "rset": [rset[0], text(rset[1])],
            "noop": [noop[0], text(noop[1])],
        }

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        print(json.dumps({"error": traceback.format_exc()}))
        sys.exit(1)
